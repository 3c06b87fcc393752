"""The tamper model: an in-painting generator that fills a masked region of a real X-ray with the class wanted
there (issue 16), and the patch critic it is trained against.

* `Inpainter`: a U-Net. Its input is the image with the region blanked, the
  mask, and the wanted class painted into the mask (+1 PNEUMONIA, -1 NORMAL);
  three 2x downsamplings, two dilated residual blocks, three nearest + 3x3
  conv upsamplings with skip connections, tanh. GroupNorm, not BatchNorm: a
  batch of edits should not depend on which other images share it, and DDP
  then has no buffers to keep in step. Its output replaces the masked pixels
  only (`composite`): outside the mask an edit is the original, bit for bit.
* `PatchCritic`: spectrally normalised convolutions to one logit per 8x8
  patch, conditioned on the class by projection (Miyato and Koyama 2018): a
  patch is judged as a patch of a real image *of that class*. It sees the
  image alone, never the mask: an attacker's edit comes without one.

Images are in [-1, 1] (cxr_ray.pixels.to_input), masks are 0/1 floats, any
square size divisible by 8.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

NUM_CLASSES = 2  # NORMAL, PNEUMONIA (cxr_ray.data.layout.CLASS_NAMES)
GROUPS = 8


def _check(x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    if x.dim() != 4 or x.shape[1] != 1 or x.shape[-1] != x.shape[-2] or x.shape[-1] % 8:
        raise ValueError(f"expected (N, 1, S, S) images with S divisible by 8, got {tuple(x.shape)}")
    if mask is not None and mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from the images' {tuple(x.shape)}")


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation), nn.GroupNorm(GROUPS, cout), nn.SiLU()
    )


class _Residual(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_block(channels, channels, dilation=dilation), _block(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UNetTrunk(nn.Module):
    """Three 2x downsamplings, two dilated residual blocks, three nearest + 3x3 conv upsamplings with skips: the
    body the in-painter and the localiser (cxr_ray.models.localiser) share. `features` returns width channels at
    the input's size; each network adds its own head."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.enc1 = _block(in_channels, c1)
        self.enc2 = _block(c1, c2, stride=2)
        self.enc3 = _block(c2, c3, stride=2)
        self.enc4 = _block(c3, c3, stride=2)
        self.middle = nn.Sequential(_Residual(c3, 2), _Residual(c3, 4))
        self.dec3 = _block(c3 + c3, c3)
        self.dec2 = _block(c3 + c2, c2)
        self.dec1 = _block(c2 + c1, c1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        h = self.middle(self.enc4(e3))
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        h = self.dec3(torch.cat([up(h), e3], dim=1))
        h = self.dec2(torch.cat([up(h), e2], dim=1))
        return self.dec1(torch.cat([up(h), e1], dim=1))


class Inpainter(UNetTrunk):
    """(image, mask, wanted class) -> the image with the masked region filled as that class."""

    def __init__(self, ngf: int = 32, image_size: int = 64) -> None:
        if ngf % GROUPS or image_size % 8:
            raise ValueError(f"ngf must be a multiple of {GROUPS} and image_size of 8, got {ngf} and {image_size}")
        super().__init__(3, ngf)
        self.ngf, self.image_size = ngf, image_size
        self.out = nn.Conv2d(ngf, 1, 3, padding=1)

    def fill(self, x: torch.Tensor, mask: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
        """The generator's image (every pixel); `composite` keeps only its masked ones."""
        _check(x, mask)
        sign = (2 * wanted.to(x.dtype) - 1).view(-1, 1, 1, 1)
        h = self.features(torch.cat([x * (1 - mask), mask, mask * sign], dim=1))
        return torch.tanh(self.out(h))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
        return composite(x, self.fill(x, mask, wanted), mask)


def composite(original: torch.Tensor, filled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`filled` inside the mask, `original` outside it."""
    return original * (1 - mask) + filled * mask


class PatchCritic(nn.Module):
    """(image, class) -> (N, S/8, S/8) logits: is each patch from a real image of that class?"""

    def __init__(self, ndf: int = 32, image_size: int = 64) -> None:
        super().__init__()
        self.ndf, self.image_size = ndf, image_size
        layers: list[nn.Module] = []
        cin = 1
        for cout in (ndf, 2 * ndf, 4 * ndf):
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, 2, 1)), nn.LeakyReLU(0.1)]
            cin = cout
        layers += [spectral_norm(nn.Conv2d(cin, cin, 3, 1, 1)), nn.LeakyReLU(0.1)]
        self.features = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Conv2d(cin, 1, 1))
        self.embed = spectral_norm(nn.Embedding(NUM_CLASSES, cin))

    def forward(self, x: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
        _check(x)
        h = self.features(x)
        projection = (h * self.embed(wanted).to(h.dtype)[:, :, None, None]).sum(1)
        return self.head(h)[:, 0] + projection


def build_tamper_models(image_size: int, ngf: int, ndf: int) -> tuple[Inpainter, PatchCritic]:
    """A freshly initialised (in-painter, critic) pair."""
    return Inpainter(ngf, image_size), PatchCritic(ndf, image_size)
