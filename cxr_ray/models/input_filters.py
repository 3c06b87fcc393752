"""Fixed filters a detector applies to its input before its first layer, by name.

A filter is part of the model: it is named in the checkpoint's model_kwargs
(`input_filter`), and `create_model` attaches it, so training, evaluation and
scan all see the same filtered pixels without any of them knowing about it.
It holds no weights, so a filtered model's state_dict is the plain model's.

* ``none``: the pixels as they are.
* ``npr``: neighbouring-pixel relationships (Tan et al. 2024, NPR): each pixel
  minus the top-left pixel of its 2x2 cell. Every generator that upsamples by
  two (transposed convolutions, nearest or bilinear interpolation, the
  decoders of diffusion models) makes the pixels of a cell depend on each
  other in its own way; the residual removes the image's content and keeps
  that dependence, which is what generators share, not one family's look.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

NO_FILTER = "none"


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """x - nearest-upsampled x[..., ::2, ::2]: zero at each cell's anchor, the cell's differences elsewhere.

    An odd size's last row/column is an anchor row/column of its own (its cells are 1 pixel high/wide).
    """
    anchors = F.interpolate(x[..., ::2, ::2], scale_factor=2.0, mode="nearest")
    return x - anchors[..., : x.shape[-2], : x.shape[-1]]


INPUT_FILTERS: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {NO_FILTER: None, "npr": npr_residual}


def check_input_filter(name: str) -> str:
    if name not in INPUT_FILTERS:
        raise ValueError(f"unknown input_filter {name!r}; known: {', '.join(INPUT_FILTERS)}")
    return name


def attach_input_filter(model: nn.Module, name: str) -> nn.Module:
    """`model` with filter `name` applied to its first positional input (a forward pre-hook: no new weights,
    no renamed state_dict keys, and DDP's wrapper calls through it)."""
    fn = INPUT_FILTERS[check_input_filter(name)]
    if fn is not None:
        model.register_forward_pre_hook(lambda _module, args: (fn(args[0]), *args[1:]))
    return model
