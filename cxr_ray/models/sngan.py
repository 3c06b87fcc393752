"""SNGAN (Miyato et al., 2018) for 1-channel chest X-rays at 64 or 128 px: the hinge-loss GAN family.

Differs from the DCGAN in how it upsamples and in its objective:

* Generator: linear projection of the noise to 4x4 maps, then per 2x step a
  nearest-neighbour upsample + 3x3 conv + BatchNorm + ReLU, a last 3x3 conv
  + tanh (`gan_blocks.UpsampleGenerator`); no transposed convolutions.
* Discriminator: every conv and the final linear layer spectrally normalised
  (``torch.nn.utils.parametrizations.spectral_norm``: each layer's Lipschitz
  constant ~1), LeakyReLU(0.1), no BatchNorm, one raw logit per image.
* Objective: hinge loss (D: relu(1 - D(x)) + relu(1 + D(G(z))); G: -D(G(z))),
  see cxr_ray.train.gan_steps. The common SNGAN Adam setting is lr 2e-4,
  betas (0.0 or 0.5, 0.999): the trainer takes beta1 from the config, as for
  the DCGAN; ``RECOMMENDED_BETA1`` is the value Miyato et al. used.

Class conditioning as in the DCGAN: label embedding concatenated to the noise,
label map as an extra discriminator input channel.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm

from cxr_ray.models.gan_blocks import UpsampleGenerator, generator_init, images_with_labels, label_map, resolution_steps

RECOMMENDED_BETA1 = 0.0  # Miyato et al. 2018 (the DCGAN default 0.5 also trains)
LEAKY_SLOPE = 0.1


class Generator(UpsampleGenerator):
    """Nearest-neighbour upsampling generator; see `UpsampleGenerator` for shapes."""

    upsample_mode = "nearest"
    family = "SNGAN"


def _sn_conv(in_channels: int, out_channels: int, kernel: int, stride: int, padding: int) -> nn.Module:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding)
    nn.init.xavier_uniform_(conv.weight)  # before the parametrization: it normalises whatever it is given
    nn.init.zeros_(conv.bias)
    return spectral_norm(conv)


class Discriminator(nn.Module):
    """Images (N, nc, S, S) [+ labels (N,)] -> one raw logit per image, shape (N,).

    Shapes at 64 px (ndf=64): 64x64 -> 3x3 conv 64 -> 32x32x64 -> 16x16x128 -> 8x8x256 -> 4x4x512 -> linear -> 1.
    At 128 px one more 4x4 stride-2 conv (4x4x1024).
    """

    def __init__(self, ndf: int = 64, nc: int = 1, image_size: int = 64, num_classes: int = 0) -> None:
        super().__init__()
        steps = resolution_steps(image_size, "SNGAN")
        self.nc, self.image_size, self.num_classes = nc, image_size, num_classes
        self.label_map = label_map(num_classes, image_size)
        in_channels = nc + (1 if num_classes > 0 else 0)
        layers: list[nn.Module] = [_sn_conv(in_channels, ndf, 3, 1, 1), nn.LeakyReLU(LEAKY_SLOPE)]
        channels = ndf
        for step in range(steps):
            out = channels if step == 0 else channels * 2  # ends at the DCGAN's 4x4 width
            layers += [_sn_conv(channels, out, 4, 2, 1), nn.LeakyReLU(LEAKY_SLOPE)]
            channels = out
        self.main = nn.Sequential(*layers)
        linear = nn.Linear(channels * 4 * 4, 1)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        self.head = spectral_norm(linear)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.main(images_with_labels(self.label_map, images, labels))
        return self.head(x.flatten(1)).flatten()


def build_sngan(
    image_size: int, nz: int = 100, ngf: int = 64, ndf: int = 64, num_classes: int = 0
) -> tuple[Generator, Discriminator]:
    """A freshly initialised (generator, discriminator) pair for 1-channel images."""
    generator = Generator(nz=nz, ngf=ngf, nc=1, image_size=image_size, num_classes=num_classes)
    generator.apply(generator_init)
    discriminator = Discriminator(ndf=ndf, nc=1, image_size=image_size, num_classes=num_classes)
    return generator, discriminator
