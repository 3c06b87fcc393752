"""Convolutional VAE (Kingma & Welling, 2014) for 1-channel chest X-rays at 64 or 128 px: the likelihood family.

Differs from the GANs in how it upsamples and in its objective:

* Generator = the decoder: linear projection of z to 4x4 maps, then per 2x
  step a bilinear upsample (align_corners=False) + 3x3 conv + BatchNorm +
  ReLU, a last 3x3 conv + tanh (`gan_blocks.UpsampleGenerator`). Samples are
  decoder(z), z ~ N(0, I) of nz dims: the GANs' generator(noise, labels).
* Critic slot = the encoder: strided 4x4 convs (BatchNorm, LeakyReLU(0.2)) to
  4x4 maps, then one linear layer to mu and logvar (nz each).
* Objective: the negative ELBO per image, reconstruction + ``BETA`` * KL
  (cxr_ray.train.gan_steps). Reconstruction is the squared error summed over
  the image's [-1, 1] pixels (a Gaussian likelihood of fixed variance 1/2, up
  to a constant); KL is KL(q(z|x) || N(0, I)) summed over the nz dimensions.

Class conditioning as in the DCGAN: label embedding concatenated to z in the
decoder, label map as an extra encoder input channel (a conditional VAE).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cxr_ray.models.dcgan import downsampling_layers
from cxr_ray.models.gan_blocks import UpsampleGenerator, generator_init, images_with_labels, label_map, resolution_steps

BETA = 1.0  # weight of the KL term: 1 is the plain ELBO (beta-VAE would raise it)


class Decoder(UpsampleGenerator):
    """Bilinear upsampling decoder; see `UpsampleGenerator` for shapes."""

    upsample_mode = "bilinear"
    family = "VAE"


class Encoder(nn.Module):
    """Images (N, nc, S, S) [+ labels (N,)] -> (mu, logvar), each (N, nz).

    Shapes at 64 px (ndf=64): 64x64 -> 32x32x64 -> 16x16x128 -> 8x8x256 -> 4x4x512 -> linear -> 2 * nz.
    """

    def __init__(self, ndf: int = 64, nc: int = 1, image_size: int = 64, num_classes: int = 0, nz: int = 100) -> None:
        super().__init__()
        steps = resolution_steps(image_size, "VAE")
        self.nc, self.image_size, self.num_classes, self.nz = nc, image_size, num_classes, nz
        self.label_map = label_map(num_classes, image_size)
        layers, channels = downsampling_layers(nc + (1 if num_classes > 0 else 0), ndf, steps)
        self.main = nn.Sequential(*layers)
        self.head = nn.Linear(channels * 4 * 4, 2 * nz)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        stats = self.head(self.main(images_with_labels(self.label_map, images, labels)).flatten(1))
        mu, logvar = stats.chunk(2, dim=1)
        return mu, logvar


LOGVAR_RANGE = (-30.0, 20.0)  # exp() of a diverging encoder's logvar stays finite


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a sample of q(z|x) that gradients flow through."""
    return mu + torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE)) * torch.randn_like(mu)


def elbo_terms(recon: torch.Tensor, real: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction, KL), each averaged over the batch of per-image sums, in float32."""
    recon, real, mu, logvar = recon.float(), real.float(), mu.float(), logvar.float().clamp(*LOGVAR_RANGE)
    reconstruction = (recon - real).pow(2).flatten(1).sum(1).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
    return reconstruction, kl


def build_vae(
    image_size: int, nz: int = 100, ngf: int = 64, ndf: int = 64, num_classes: int = 0
) -> tuple[Decoder, Encoder]:
    """A freshly initialised (decoder, encoder) pair for 1-channel images."""
    decoder = Decoder(nz=nz, ngf=ngf, nc=1, image_size=image_size, num_classes=num_classes)
    decoder.apply(generator_init)
    encoder = Encoder(ndf=ndf, nc=1, image_size=image_size, num_classes=num_classes, nz=nz)
    return decoder, encoder
