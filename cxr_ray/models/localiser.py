"""The tamper detector that localises (issue 16): a per-pixel map of where an image was edited.

A small U-Net (the in-painter's blocks, cxr_ray.models.inpainter) maps a gray
image in [-1, 1] to one logit per pixel: "this pixel was painted in". The
image's score is a smooth maximum of the map (the top `TOP_SHARE` of its
pixel logits, averaged): an edit is local, so one confident region is enough,
and a single noisy pixel is not.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cxr_ray.models.inpainter import _block, _Residual

TOP_SHARE = 0.01  # the share of pixels whose logits make the image score


class Localiser(nn.Module):
    """(N, 1, S, S) images -> (N, 1, S, S) per-pixel logits of "edited"."""

    def __init__(self, width: int = 16, image_size: int = 64) -> None:
        super().__init__()
        if width % 8 or image_size % 8:
            raise ValueError(f"width must be a multiple of 8 and image_size of 8, got {width} and {image_size}")
        self.width, self.image_size = width, image_size
        c1, c2, c3 = width, 2 * width, 4 * width
        self.enc1 = _block(1, c1)
        self.enc2 = _block(c1, c2, stride=2)
        self.enc3 = _block(c2, c3, stride=2)
        self.enc4 = _block(c3, c3, stride=2)
        self.middle = nn.Sequential(_Residual(c3, 2), _Residual(c3, 4))
        self.dec3 = _block(c3 + c3, c3)
        self.dec2 = _block(c3 + c2, c2)
        self.dec1 = _block(c2 + c1, c1)
        self.out = nn.Conv2d(c1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[-1] % 8:
            raise ValueError(f"expected (N, 1, S, S) images with S divisible by 8, got {tuple(x.shape)}")
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        h = self.middle(self.enc4(e3))
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        h = self.dec3(torch.cat([up(h), e3], dim=1))
        h = self.dec2(torch.cat([up(h), e2], dim=1))
        h = self.dec1(torch.cat([up(h), e1], dim=1))
        return self.out(h)


def image_logit(pixel_logits: torch.Tensor) -> torch.Tensor:
    """(N, 1, S, S) -> (N,): the mean of each map's top TOP_SHARE pixel logits."""
    flat = pixel_logits.flatten(1)
    k = max(1, int(round(TOP_SHARE * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(dim=1)
