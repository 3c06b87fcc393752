"""Sample grids: a batch of images in [-1, 1] tiled into one grayscale PNG, the layout of torchvision's `make_grid`
(2 px black gaps, the batch mapped from [-1, 1] to [0, 255]), which `cxr_ray.gan_curve.grid_tiles` reads back.

Written here rather than through torchvision, so that importing the GAN and tamper-model code does not import
torchvision (which imports torch._dynamo, about 3 s of CPU): a Ray Data actor that loads a generator to write fakes
no longer pays it. A training worker still imports torch._dynamo through torch.optim's first call.
"""

from __future__ import annotations

import io

import numpy as np
import torch

GRID_PADDING = 2


def tile(images: torch.Tensor, nrow: int, padding: int = GRID_PADDING) -> np.ndarray:
    """(N, 1, H, W) images in [-1, 1] -> one uint8 (rows, cols) array, `nrow` images per row, zero gaps."""
    n, _, h, w = images.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    pixels = ((images[:, 0].float().cpu().clamp(-1, 1) + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding), dtype=np.uint8)
    for k in range(n):
        top, left = (k // cols) * (h + padding) + padding, (k % cols) * (w + padding) + padding
        grid[top:top + h, left:left + w] = pixels[k]
    return grid


def png(images: torch.Tensor, nrow: int) -> bytes:
    """`tile` as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(tile(images, nrow), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
