"""Rebuilding a classifier from its plain-data checkpoint and scoring uint8 images.

Used by the final test evaluation, the cross-evaluation job and `cxr-ray
scan`: the same input mapping as training (`to_input`), so a model sees
pixels exactly as it did when it learnt.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cxr_ray.models import create_model
from cxr_ray.pixels import autocast, positive_probability, to_input


def build_model(state: dict[str, Any]) -> torch.nn.Module:
    """A model in eval mode with the checkpoint's weights; needs only the checkpoint."""
    model = create_model(state["model_name"], **state["model_kwargs"])
    model.load_state_dict(state["model_state"])
    return model.eval()


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def predict_proba(
    model: torch.nn.Module, images: np.ndarray, device: torch.device | None = None, batch_size: int = 256
) -> np.ndarray:
    """Probability of class 1 for (N, H, W) uint8 images."""
    device = device or pick_device()
    model = model.to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.array(images[start : start + batch_size], dtype=np.uint8)).unsqueeze(1).to(device)
        with autocast(device):
            logits = model(to_input(x, channels_last))
        out.append(positive_probability(logits.float()))
    return np.concatenate(out) if out else np.zeros(0, np.float64)
