"""DCGAN (Radford, Metz & Chintala, 2015) for 1-channel chest X-rays at 64 or 128 px.

Follows pytorch/examples/dcgan: transposed-conv generator ending in tanh
(images in [-1, 1]), strided-conv discriminator with LeakyReLU(0.2), BatchNorm
everywhere except the generator output and the discriminator input layer, and
N(0, 0.02) weight init. Differences from the example:

* The discriminator returns one raw logit per image (no sigmoid); train it with
  ``BCEWithLogitsLoss``, which stays numerically safe under bf16 autocast.
* 128 px adds one up/down-sampling block on each side.
* Optional class conditioning (``num_classes > 0``, e.g. NORMAL / PNEUMONIA):
  the generator concatenates a learnt label embedding to the noise vector; the
  discriminator embeds the label into a learnt image_size x image_size map that
  is concatenated to the image as an extra input channel (cGAN-style input
  conditioning, not a projection discriminator).

Kept apart from the classifier registry: GANs have their own training loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

SUPPORTED_IMAGE_SIZES = (64, 128)
LABEL_EMBED_DIM = 50  # generator label embedding size, as in common cGAN set-ups


def _check_image_size(image_size: int) -> int:
    """Number of 2x resolution steps between 4x4 and ``image_size`` (4 for 64 px, 5 for 128 px)."""
    if image_size not in SUPPORTED_IMAGE_SIZES:
        raise ValueError(f"DCGAN supports image_size {' or '.join(map(str, SUPPORTED_IMAGE_SIZES))}, got {image_size}")
    return int(math.log2(image_size)) - 2


class Generator(nn.Module):
    """Noise (N, nz, 1, 1) or (N, nz) [+ labels (N,)] -> images (N, nc, image_size, image_size) in [-1, 1].

    Shapes at 64 px (ngf=64): 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64 -> 64x64x1.
    At 128 px: 4x4x1024 -> 8x8x512 -> 16x16x256 -> 32x32x128 -> 64x64x64 -> 128x128x1.
    """

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 1, image_size: int = 64, num_classes: int = 0) -> None:
        super().__init__()
        steps = _check_image_size(image_size)
        self.nz, self.nc, self.image_size, self.num_classes = nz, nc, image_size, num_classes
        self.label_embedding = nn.Embedding(num_classes, LABEL_EMBED_DIM) if num_classes > 0 else None
        in_dim = nz + (LABEL_EMBED_DIM if num_classes > 0 else 0)
        channels = ngf * 2 ** (steps - 1)  # ngf*8 at 64 px, ngf*16 at 128 px
        layers: list[nn.Module] = [
            # input: (N, in_dim, 1, 1) -> state: (N, ngf*8 or ngf*16, 4, 4)
            nn.ConvTranspose2d(in_dim, channels, 4, 1, 0, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(True),
        ]
        for _ in range(steps - 1):
            # state: (N, channels, s, s) -> (N, channels/2, 2s, 2s); ends at (N, ngf, image_size/2, image_size/2)
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(True),
            ]
            channels //= 2
        # state: (N, ngf, image_size/2, image_size/2) -> output: (N, nc, image_size, image_size)
        layers += [nn.ConvTranspose2d(channels, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if noise.dim() == 2:
            noise = noise[:, :, None, None]
        if self.label_embedding is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels")
            noise = torch.cat([noise, self.label_embedding(labels)[:, :, None, None].to(noise.dtype)], dim=1)
        elif labels is not None:
            raise ValueError("this generator is unconditional (num_classes=0): labels must be None")
        return self.main(noise)


def downsampling_layers(in_channels: int, ndf: int, steps: int) -> tuple[list[nn.Module], int]:
    """DCGAN's strided-conv stack from (N, in_channels, S, S) down to (N, channels, 4, 4); returns (layers, channels).

    Shared by the discriminator and the VAE's encoder (cxr_ray.models.vae).
    """
    layers: list[nn.Module] = [
        # input: (N, in_channels, S, S) -> state: (N, ndf, S/2, S/2); no BatchNorm on the input layer (as in the paper)
        nn.Conv2d(in_channels, ndf, 4, 2, 1, bias=False),
        nn.LeakyReLU(0.2, inplace=True),
    ]
    channels = ndf
    for _ in range(steps - 1):
        # state: (N, channels, s, s) -> (N, 2*channels, s/2, s/2); ends at (N, ndf*8 or ndf*16, 4, 4)
        layers += [
            nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(channels * 2),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels *= 2
    return layers, channels


class Discriminator(nn.Module):
    """Images (N, nc, image_size, image_size) [+ labels (N,)] -> one real-vs-fake logit per image, shape (N,).

    Shapes at 64 px (ndf=64): 64x64xnc -> 32x32x64 -> 16x16x128 -> 8x8x256 -> 4x4x512 -> 1 logit.
    At 128 px one more block: ... -> 4x4x1024 -> 1 logit.
    """

    def __init__(self, ndf: int = 64, nc: int = 1, image_size: int = 64, num_classes: int = 0) -> None:
        super().__init__()
        steps = _check_image_size(image_size)
        self.nc, self.image_size, self.num_classes = nc, image_size, num_classes
        # One learnt image-sized map per class, fed as an extra input channel.
        self.label_map = nn.Embedding(num_classes, image_size * image_size) if num_classes > 0 else None
        layers, channels = downsampling_layers(nc + (1 if num_classes > 0 else 0), ndf, steps)
        # state: (N, channels, 4, 4) -> (N, 1, 1, 1): the logit
        layers.append(nn.Conv2d(channels, 1, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_map is not None:
            if labels is None:
                raise ValueError("this discriminator is class-conditional: pass labels")
            size = self.image_size
            label_channel = self.label_map(labels).view(-1, 1, size, size).to(images.dtype)
            images = torch.cat([images, label_channel], dim=1)
        elif labels is not None:
            raise ValueError("this discriminator is unconditional (num_classes=0): labels must be None")
        return self.main(images).flatten()


def weights_init(m: nn.Module) -> None:
    """DCGAN init, for ``model.apply``: conv weights ~ N(0, 0.02); BatchNorm weight ~ N(1, 0.02), bias 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def build_dcgan(
    image_size: int, nz: int = 100, ngf: int = 64, ndf: int = 64, num_classes: int = 0
) -> tuple[Generator, Discriminator]:
    """A freshly initialised (generator, discriminator) pair for 1-channel images."""
    generator = Generator(nz=nz, ngf=ngf, nc=1, image_size=image_size, num_classes=num_classes)
    discriminator = Discriminator(ndf=ndf, nc=1, image_size=image_size, num_classes=num_classes)
    generator.apply(weights_init)
    discriminator.apply(weights_init)
    return generator, discriminator
