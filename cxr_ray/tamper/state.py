"""The tamper model's checkpoint format: its writer, its reader and its format tag.

A tamper-model run's `state.pt` is plain data (cxr_ray.checkpoint), loadable
with `weights_only=True` and enough on its own to rebuild the in-painter:

    {"format": TAMPER_FORMAT, "epoch": int, "config": TamperModelConfig as a dict,
     "class_names": [...],
     "inpainter" / "critic": {"model_kwargs": {...}, "model_state": {...}},
     "optimizer_g" / "optimizer_d": Adam state dicts, "history": per-epoch entries}

Readers accept a run folder (the checkpoint its tamper_summary.json names,
else its newest checkpoint_*), a checkpoint folder or the state file itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from cxr_ray import storage
from cxr_ray.checkpoint import CheckpointError, load_state, model_state
from cxr_ray.data.layout import CLASS_NAMES
from cxr_ray.filenames import STATE_FILE, TAMPER_SUMMARY_FILE
from cxr_ray.models.inpainter import Inpainter
from cxr_ray.storage import S3Settings

TAMPER_FORMAT = "cxr_ray.tamper_model/1"


def build_tamper_state(
    config: dict[str, Any],
    epoch: int,
    inpainter: nn.Module,
    critic: nn.Module,
    optimizer_g: torch.optim.Optimizer,
    optimizer_d: torch.optim.Optimizer,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """The writer: both networks (unwrapped, on CPU), both optimizers and the history, as plain data."""
    return {
        "format": TAMPER_FORMAT,
        "epoch": epoch,
        "config": dict(config),
        "class_names": list(CLASS_NAMES),
        "inpainter": {"model_kwargs": {"ngf": inpainter.ngf, "image_size": inpainter.image_size}, "model_state": model_state(inpainter)},
        "critic": {"model_kwargs": {"ndf": critic.ndf, "image_size": critic.image_size}, "model_state": model_state(critic)},
        "optimizer_g": optimizer_g.state_dict(),
        "optimizer_d": optimizer_d.state_dict(),
        "history": [dict(entry) for entry in history],
    }


def check_tamper_state(state: dict[str, Any], where: str) -> dict[str, Any]:
    """The reader's check; CheckpointError naming `where` when `state` is not a tamper-model checkpoint."""
    if state.get("format") != TAMPER_FORMAT:
        raise CheckpointError(f"{where}: not a tamper-model checkpoint (format {state.get('format')!r}, expected {TAMPER_FORMAT!r})")
    inpainter = state.get("inpainter")
    if not isinstance(inpainter, dict) or not {"model_kwargs", "model_state"} <= set(inpainter):
        raise CheckpointError(f"{where}: tamper-model checkpoint lacks inpainter.model_kwargs / model_state")
    return state


def resolve_tamper_state_uri(uri: str, s3: S3Settings | None) -> str:
    """The state file meant by `uri`: a state file, a checkpoint folder, or a run folder."""
    from cxr_ray.gan_state import newest_checkpoint_state

    if not storage.is_dir(uri, s3):
        if not storage.exists(uri, s3):
            raise CheckpointError(f"{uri}: no such tamper-model run, checkpoint folder or state file")
        return uri
    direct = storage.join(uri, STATE_FILE)
    if storage.exists(direct, s3):
        return direct
    summary = storage.join(uri, TAMPER_SUMMARY_FILE)
    if storage.exists(summary, s3):
        checkpoint = storage.read_json(summary, s3).get("checkpoint")
        named = storage.join(str(checkpoint), STATE_FILE) if checkpoint else ""
        if named and storage.exists(named, s3):
            return named
    found = newest_checkpoint_state(uri, s3)
    if found is None:
        raise CheckpointError(f"{uri}: no tamper-model checkpoint found ({TAMPER_SUMMARY_FILE} or checkpoint_*/{STATE_FILE})")
    return found


def load_tamper_state(uri: str, s3: S3Settings | None = None) -> dict[str, Any]:
    """Find, load (weights_only) and check a tamper-model checkpoint."""
    state_uri = resolve_tamper_state_uri(uri, s3)
    return check_tamper_state(load_state(state_uri, s3), state_uri)


def inpainter_from_state(state: dict[str, Any], device: torch.device | str = "cpu") -> Inpainter:
    """The in-painter of a tamper-model checkpoint, in eval mode."""
    check_tamper_state(state, "tamper-model state")
    model = Inpainter(**state["inpainter"]["model_kwargs"])
    model.load_state_dict(state["inpainter"]["model_state"])
    return model.to(device).eval()
