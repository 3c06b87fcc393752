"""One training step per generator family, on one worker's networks (DDP-wrapped or not).

GAN steps (dcgan, sngan) share one shape and differ only in their losses:
D on a real and a fake batch in one DDP forward (`RealFakeDiscriminator`),
then G against the *unwrapped*, frozen D (see cxr_ray.train.gan for why).
The VAE step is one loss over encoder and decoder, both DDP-wrapped, one
forward each per backward; both optimizers step.

Every step returns the same four detached scalars, so the history, summaries
and loss tables read every family alike:

=========  ===========================  ===============================  ==========================
key        dcgan                        sngan                            vae
=========  ===========================  ===============================  ==========================
loss_d     BCE of D on real + fake      hinge D loss                     KL(q(z|x) || N(0, I))
loss_g     non-saturating BCE of G      hinge G loss, -mean D(G(z))      reconstruction (sum MSE)
d_real     mean sigmoid(D(x))           mean raw D(x) (target >= +1)     0.0 (no critic)
d_fake     mean sigmoid(D(G(z)))        mean raw D(G(z)) (target <= -1)  0.0
=========  ===========================  ===============================  ==========================
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn

from cxr_ray.checkpoint import unwrap_model
from cxr_ray.models.vae import BETA, elbo_terms, reparameterize

AmpFactory = Callable[[], contextlib.AbstractContextManager]
Losses = dict[str, torch.Tensor]


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No parameter gradients for `module` inside the block (the generator step does not train D)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class RealFakeDiscriminator(nn.Module):
    """D applied to a real and a fake batch in one forward call, as two separate BatchNorm batches.

    Wrapping this (not D) in DDP gives one DDP forward per discriminator
    backward; see cxr_ray.train.gan.
    """

    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        self.discriminator = discriminator

    def forward(
        self, real: torch.Tensor, fake: torch.Tensor, real_labels: torch.Tensor | None, fake_labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.discriminator(real, real_labels), self.discriminator(fake, fake_labels)


@dataclass
class StepModels:
    """The networks and optimizers of one worker; `*_ddp` are the (possibly) DDP-wrapped ones.

    For the VAE, the generator is the decoder, `real_fake_ddp` the (wrapped)
    encoder itself and `discriminator` the unwrapped encoder.
    """

    generator_ddp: nn.Module
    real_fake_ddp: nn.Module  # GANs: RealFakeDiscriminator; VAE: the encoder; possibly DDP-wrapped
    discriminator: nn.Module  # unwrapped critic (GANs: used for the generator step) or encoder
    optimizer_g: torch.optim.Optimizer
    optimizer_d: torch.optim.Optimizer

    @property
    def generator(self) -> nn.Module:
        """The unwrapped generator: what samples, checkpoints and BN averaging use."""
        return unwrap_model(self.generator_ddp)


# ---------------------------------------------------------------- losses: (real logits, fake logits) -> D loss, etc.


def bce_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    bce = nn.functional.binary_cross_entropy_with_logits
    return bce(real_logits.float(), torch.ones_like(real_logits, dtype=torch.float32)) + bce(
        fake_logits.float(), torch.zeros_like(fake_logits, dtype=torch.float32)
    )


def bce_g_loss(gen_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating: G maximises log D(G(z))."""
    bce = nn.functional.binary_cross_entropy_with_logits
    return bce(gen_logits.float(), torch.ones_like(gen_logits, dtype=torch.float32))


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean relu(1 - D(x)) + mean relu(1 + D(G(z))): D stops pushing once a logit clears its margin."""
    return torch.relu(1.0 - real_logits.float()).mean() + torch.relu(1.0 + fake_logits.float()).mean()


def hinge_g_loss(gen_logits: torch.Tensor) -> torch.Tensor:
    return -gen_logits.float().mean()


def mean_probability(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits.detach().float()).mean()


def mean_logit(logits: torch.Tensor) -> torch.Tensor:
    return logits.detach().float().mean()


@dataclass(frozen=True)
class GanObjective:
    d_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    g_loss: Callable[[torch.Tensor], torch.Tensor]
    score: Callable[[torch.Tensor], torch.Tensor]  # what d_real / d_fake report


BCE = GanObjective(bce_d_loss, bce_g_loss, mean_probability)
HINGE = GanObjective(hinge_d_loss, hinge_g_loss, mean_logit)


# ---------------------------------------------------------------- steps


def gan_step(
    models: StepModels, real: torch.Tensor, labels: torch.Tensor | None, nz: int, amp: AmpFactory, objective: GanObjective
) -> Losses:
    """One GAN step (D then G); returns detached losses and D's mean outputs."""
    noise = torch.randn(real.shape[0], nz, device=real.device)
    fake_labels = labels  # conditional: fakes follow the real batch's class mix
    with amp():
        fake = models.generator_ddp(noise, fake_labels)

    models.optimizer_d.zero_grad(set_to_none=True)
    with amp():
        real_logits, fake_logits = models.real_fake_ddp(real, fake.detach(), labels, fake_labels)
        loss_d = objective.d_loss(real_logits, fake_logits)
    loss_d.backward()
    models.optimizer_d.step()

    models.optimizer_g.zero_grad(set_to_none=True)
    with frozen(models.discriminator), amp():
        loss_g = objective.g_loss(models.discriminator(fake, fake_labels))
    loss_g.backward()
    models.optimizer_g.step()
    return {
        "loss_d": loss_d.detach(),
        "loss_g": loss_g.detach(),
        "d_real": objective.score(real_logits),
        "d_fake": objective.score(fake_logits),
    }


def dcgan_step(models: StepModels, real: torch.Tensor, labels: torch.Tensor | None, nz: int, amp: AmpFactory) -> Losses:
    """The DCGAN step: BCE for D, non-saturating BCE for G."""
    return gan_step(models, real, labels, nz, amp, BCE)


def sngan_step(models: StepModels, real: torch.Tensor, labels: torch.Tensor | None, nz: int, amp: AmpFactory) -> Losses:
    """The SNGAN step: hinge loss for D and G."""
    return gan_step(models, real, labels, nz, amp, HINGE)


def vae_step(models: StepModels, real: torch.Tensor, labels: torch.Tensor | None, nz: int, amp: AmpFactory) -> Losses:
    """One VAE step: encode, reparameterise, decode, minimise reconstruction + BETA * KL; both optimizers step."""
    models.optimizer_g.zero_grad(set_to_none=True)
    models.optimizer_d.zero_grad(set_to_none=True)
    with amp():
        mu, logvar = models.real_fake_ddp(real, labels)
        recon = models.generator_ddp(reparameterize(mu.float(), logvar.float()), labels)
    reconstruction, kl = elbo_terms(recon, real, mu, logvar)
    (reconstruction + BETA * kl).backward()
    models.optimizer_g.step()
    models.optimizer_d.step()
    zero = torch.zeros((), device=real.device)
    return {"loss_d": kl.detach(), "loss_g": reconstruction.detach(), "d_real": zero, "d_fake": zero}


STEPS: dict[str, Callable[[StepModels, torch.Tensor, torch.Tensor | None, int, AmpFactory], Losses]] = {
    "dcgan": dcgan_step, "sngan": sngan_step, "vae": vae_step,
}
