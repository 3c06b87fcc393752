"""Pieces the SNGAN and VAE families share: resolution steps, class conditioning, an upsampling generator.

Conditioning follows cxr_ray.models.dcgan exactly (a learnt label embedding
concatenated to the noise; a learnt image-sized label map as an extra input
channel of the critic or encoder), so every family takes the same inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from cxr_ray.models.dcgan import LABEL_EMBED_DIM, SUPPORTED_IMAGE_SIZES


def resolution_steps(image_size: int, family: str) -> int:
    """Number of 2x steps between 4x4 and ``image_size`` (4 for 64 px, 5 for 128 px)."""
    if image_size not in SUPPORTED_IMAGE_SIZES:
        raise ValueError(f"{family} supports image_size {' or '.join(map(str, SUPPORTED_IMAGE_SIZES))}, got {image_size}")
    return int(math.log2(image_size)) - 2


def label_embedding(num_classes: int) -> nn.Embedding | None:
    return nn.Embedding(num_classes, LABEL_EMBED_DIM) if num_classes > 0 else None


def label_map(num_classes: int, image_size: int) -> nn.Embedding | None:
    return nn.Embedding(num_classes, image_size * image_size) if num_classes > 0 else None


def noise_with_labels(embedding: nn.Embedding | None, noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """(N, nz) or (N, nz, 1, 1) noise -> (N, nz [+ LABEL_EMBED_DIM]): the label embedding appended when conditional."""
    noise = noise.flatten(1)
    if embedding is not None:
        if labels is None:
            raise ValueError("this generator is class-conditional: pass labels")
        return torch.cat([noise, embedding(labels).to(noise.dtype)], dim=1)
    if labels is not None:
        raise ValueError("this generator is unconditional (num_classes=0): labels must be None")
    return noise


def images_with_labels(label_maps: nn.Embedding | None, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """(N, nc, S, S) -> (N, nc [+1], S, S): the class's learnt map appended as a channel when conditional."""
    if label_maps is not None:
        if labels is None:
            raise ValueError("this network is class-conditional: pass labels")
        size = images.shape[-1]
        return torch.cat([images, label_maps(labels).view(-1, 1, size, size).to(images.dtype)], dim=1)
    if labels is not None:
        raise ValueError("this network is unconditional (num_classes=0): labels must be None")
    return images


class UpsampleGenerator(nn.Module):
    """Noise (N, nz) or (N, nz, 1, 1) [+ labels (N,)] -> (N, nc, S, S) in [-1, 1], by interpolation + 3x3 conv.

    A linear layer projects the noise to 4x4 maps; every 2x step interpolates
    (``upsample_mode``), then a 3x3 conv + BatchNorm + ReLU; a last 3x3 conv +
    tanh. Interpolation instead of transposed convs avoids their checkerboard
    pattern (Odena et al., 2016), which is itself a fake-detection cue.
    Widths at 64 px (ngf=64): 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64 -> 64x64x64 -> 64x64x1.
    """

    upsample_mode = "nearest"  # subclasses choose
    family = "upsample"

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 1, image_size: int = 64, num_classes: int = 0) -> None:
        super().__init__()
        steps = resolution_steps(image_size, self.family)
        self.nz, self.nc, self.image_size, self.num_classes = nz, nc, image_size, num_classes
        self.label_embedding = label_embedding(num_classes)
        in_dim = nz + (LABEL_EMBED_DIM if num_classes > 0 else 0)
        channels = ngf * 2 ** (steps - 1)  # as the DCGAN's 4x4 width
        self.start_channels = channels
        self.project = nn.Linear(in_dim, channels * 4 * 4, bias=False)
        layers: list[nn.Module] = [nn.BatchNorm2d(channels), nn.ReLU(True)]
        for _ in range(steps):
            out = max(channels // 2, ngf)
            layers += [self._upsample(), nn.Conv2d(channels, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(True)]
            channels = out
        layers += [nn.Conv2d(channels, nc, 3, 1, 1), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def _upsample(self) -> nn.Module:
        if self.upsample_mode == "nearest":
            return nn.Upsample(scale_factor=2, mode="nearest")
        return nn.Upsample(scale_factor=2, mode=self.upsample_mode, align_corners=False)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.project(noise_with_labels(self.label_embedding, noise, labels))
        return self.main(x.view(-1, self.start_channels, 4, 4))


def generator_init(m: nn.Module) -> None:
    """For ``model.apply`` on an UpsampleGenerator: Xavier-uniform conv/linear weights, zero biases, BN (1, 0)."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
