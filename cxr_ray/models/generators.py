"""The generator families the study can train, by name: one place that maps a family to its networks.

Every family's generator has the DCGAN's interface: ``forward(noise (N, nz) or
(N, nz, 1, 1), labels=None) -> (N, 1, S, S)`` in [-1, 1], attributes nz, nc,
image_size, num_classes, the same constructor kwargs (nz, ngf, nc, image_size,
num_classes), 64 or 128 px, optional class conditioning. So checkpoints,
generation and quality metrics need to know a family only to pick the class.

* ``dcgan``: transposed-conv upsampling; BCE (non-saturating) GAN loss.
* ``sngan``: nearest-neighbour upsample + 3x3 conv; spectrally normalised critic, hinge loss.
* ``vae``: bilinear upsample + 3x3 conv decoder, conv encoder; negative ELBO (MSE reconstruction + KL).
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from cxr_ray.models import dcgan, gan_blocks, sngan, vae

GENERATOR_FAMILIES = ("dcgan", "sngan", "vae")
DEFAULT_FAMILY = "dcgan"  # the family of a run or checkpoint from before families existed (they record none)

_GENERATORS: dict[str, type[nn.Module]] = {"dcgan": dcgan.Generator, "sngan": sngan.Generator, "vae": vae.Decoder}
_INITS: dict[str, Callable[[nn.Module], None]] = {
    "dcgan": dcgan.weights_init, "sngan": gan_blocks.generator_init, "vae": gan_blocks.generator_init,
}
_BUILDERS = {"dcgan": dcgan.build_dcgan, "sngan": sngan.build_sngan, "vae": vae.build_vae}
# One line per family for reports: how it upsamples and what it is trained to do.
DESCRIPTIONS = {
    "dcgan": "transposed-convolution upsampling, non-saturating GAN loss",
    "sngan": "nearest-neighbour upsampling + convolution, spectrally normalised critic, hinge loss",
    "vae": "bilinear upsampling + convolution decoder, variational autoencoder (negative ELBO)",
}
# The interpolation each family's generator upsamples with (the DCGAN learns its own: transposed convolutions).
UPSAMPLING = {"dcgan": "transposed", "sngan": "nearest", "vae": "bilinear"}
# Adam (lr, beta1) each family is usually trained with: DCGAN's paper values; SNGAN with beta1 0 (Miyato et al.
# 2018); a VAE is a likelihood model and takes Adam's defaults with a larger step.
OPTIMISER: dict[str, tuple[float, float]] = {"dcgan": (2e-4, 0.5), "sngan": (2e-4, sngan.RECOMMENDED_BETA1), "vae": (1e-3, 0.9)}


def check_family(family: str) -> str:
    if family not in GENERATOR_FAMILIES:
        raise ValueError(f"unknown generator family {family!r}: one of {', '.join(GENERATOR_FAMILIES)}")
    return family


def generator_class(family: str) -> type[nn.Module]:
    """The generator (the VAE's decoder) class of a family."""
    return _GENERATORS[check_family(family)]


def build_family(family: str, image_size: int, nz: int, ngf: int, ndf: int, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """A freshly initialised (generator, critic) pair: the GANs' discriminator, or the VAE's (decoder, encoder)."""
    return _BUILDERS[check_family(family)](image_size, nz=nz, ngf=ngf, ndf=ndf, num_classes=num_classes)


def fresh_generator(family: str, model_kwargs: dict[str, Any]) -> nn.Module:
    """A freshly initialised generator from its checkpoint kwargs, no critic built (the untrained baseline)."""
    generator = generator_class(family)(**model_kwargs)
    generator.apply(_INITS[family])
    return generator
