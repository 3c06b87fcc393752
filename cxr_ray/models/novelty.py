"""One-class modelling of real images in a detector's own feature space: how far an image lies from every real one.

A two-class detector learns what separates reals from the fakes it was shown.
A fake from a generator it never saw can land on the real side of that
boundary and still lie where no real image does. `RealNovelty` wraps a
detector: while training it is the detector; once fitted (rank 0, each epoch,
on the real images of rank 0's train shard: with N workers about 1/N of the
train split's reals) it scores an image by the larger of two
standardised scores, the detector's logit gap and the Mahalanobis distance of
its penultimate features from the real train images (Lee et al. 2018). Both
are standardised on the validation reals, so neither dominates by its units;
thresholds are then fixed on validation like any detector's.

It holds plain tensors only (buffers), so checkpoints stay plain data; the
wrapped model's keys gain a `net.` prefix.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

SHRINKAGE = 0.01  # of the mean feature variance, added to the covariance's diagonal: ~2,000 reals (rank 0's) for up to 2,048 features


def last_linear(net: nn.Module) -> nn.Linear:
    """The classification head: the last nn.Linear a model defines (its input is the penultimate feature vector)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no nn.Linear head to take features from")
    return linears[-1]


class RealNovelty(nn.Module):
    """A detector plus a Gaussian model of the real train images' penultimate features (see the module docstring)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        head = last_linear(net)
        dim = head.in_features
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("precision", torch.zeros(dim, dim))
        # Over the validation reals: the logit gap's mean and sd, the distance's mean and sd.
        self.register_buffer("scales", torch.tensor([0.0, 1.0, 0.0, 1.0]))
        self.register_buffer("fitted", torch.zeros(()))  # 1 once fitted (float: DDP broadcasts buffers, gloo takes no bool)
        self._features: torch.Tensor | None = None
        head.register_forward_pre_hook(self._keep_features)

    def _keep_features(self, _module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._features = args[0]

    def gap_and_distance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The detector's logit gap (fake minus real) and the Mahalanobis distance from the real train images."""
        logits = self.net(x).float()
        # fp32 even under a caller's bf16 autocast (GPU scoring): the fit ran in fp32, and a bf16 quadratic form
        # would move the distance it was standardised on.
        with torch.autocast(device_type=x.device.type, enabled=False):
            features = self._features.flatten(1).float() - self.mean
            distance = ((features @ self.precision) * features).sum(1).clamp_min(0).sqrt()
        return logits[:, 1] - logits[:, 0], distance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not bool(self.fitted):
            return self.net(x)
        gap, distance = self.gap_and_distance(x)
        s = self.scales
        score = torch.maximum((gap - s[0]) / s[1], (distance - s[2]) / s[3])
        return torch.stack([torch.zeros_like(score), score], dim=1)  # two-class logits whose gap is the score

    @torch.no_grad()
    def fit(self, real_train: Iterable[torch.Tensor], real_val: Iterable[torch.Tensor]) -> None:
        """Fit the real-feature Gaussian on batches of real train inputs, then the scales on real val inputs."""
        was_training = self.training
        self.eval()
        features = []
        for x in real_train:
            self.net(x)
            features.append(self._features.flatten(1).double())
        f = torch.cat(features)
        if len(f) < 2:
            raise ValueError("fitting the real-image model needs at least two real train images")
        mean = f.mean(0)
        centred = f - mean
        cov = centred.T @ centred / (len(f) - 1)
        cov += torch.eye(len(mean), dtype=cov.dtype, device=cov.device) * (SHRINKAGE * cov.diagonal().mean().clamp_min(1e-12))
        self.mean.copy_(mean.float())
        self.precision.copy_(torch.linalg.inv(cov).float())
        parts = [self.gap_and_distance(x) for x in real_val]
        gap = torch.cat([g for g, _ in parts]).double()
        distance = torch.cat([d for _, d in parts]).double()
        if len(gap) < 2:
            raise ValueError("fitting the real-image model needs at least two real validation images")
        spread = lambda t: t.std().clamp_min(1e-6)  # noqa: E731
        self.scales.copy_(torch.stack([gap.mean(), spread(gap), distance.mean(), spread(distance)]).float())
        self.fitted.fill_(1.0)
        self.train(was_training)
