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

from cxr_ray.models.inpainter import UNetTrunk

TOP_SHARE = 0.01  # the share of pixels whose logits make the image score


class Localiser(UNetTrunk):
    """(N, 1, S, S) images -> (N, 1, S, S) per-pixel logits of "edited"."""

    def __init__(self, width: int = 16, image_size: int = 64) -> None:
        if width % 8 or image_size % 8:
            raise ValueError(f"width must be a multiple of 8 and image_size of 8, got {width} and {image_size}")
        super().__init__(1, width)
        self.width, self.image_size = width, image_size
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[-1] % 8:
            raise ValueError(f"expected (N, 1, S, S) images with S divisible by 8, got {tuple(x.shape)}")
        return self.out(self.features(x))


def image_logit(pixel_logits: torch.Tensor) -> torch.Tensor:
    """(N, 1, S, S) -> (N,): the mean of each map's top TOP_SHARE pixel logits."""
    flat = pixel_logits.flatten(1)
    k = max(1, int(round(TOP_SHARE * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(dim=1)
