"""The one pixel mapping between stored images and model inputs, the precision models run at, and the
one mapping from a model's logits to the score every threshold, AUC and verdict uses.

Reals are stored as uint8 at ingest; fakes are the generator's tanh output
stored through `to_uint8`; every model (training, validation, inference,
the GAN-quality encoder) sees `to_input` of those bytes. Keeping both
directions here is what makes reals and fakes reach a model the same way.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def to_input(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]: the same range as the GAN's tanh output."""
    out = x.float().div_(127.5).sub_(1.0)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8, the inverse of `to_input`: fakes are stored and scored like reals."""
    return ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs (no loss scaling needed); full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def positive_probability(logits: torch.Tensor) -> np.ndarray:
    """P(class 1) of two-class logits, as float64 computed from the logit difference.

    A float32 softmax rounds every P above 1 - 6e-8 (a logit gap over ~17) to the same
    few values, so confident detectors tie at thresholds near 1 and their operating
    points, AUC and calibration degrade; in float64 gaps up to ~36 stay distinct.
    """
    gap = (logits[:, 1].double() - logits[:, 0].double()).cpu().numpy()
    return 1.0 / (1.0 + np.exp(-gap))
