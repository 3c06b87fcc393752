"""The GAN checkpoint format: its writer, its reader and its format tag.

A generator run's `state.pt` (any family: dcgan, sngan, vae) is plain data
(see cxr_ray.checkpoint), loadable with `weights_only=True` and enough on its
own to rebuild the generator:

    {"format": GAN_FORMAT, "family": "dcgan" | "sngan" | "vae", "epoch": int,
     "config": GanConfig as a dict, "class_names": [...],
     "generator" / "discriminator": {"model_kwargs": {...}, "model_state": {...}},
         (the VAE's decoder / encoder; the encoder's kwargs add nz)
     "optimizer_g" / "optimizer_d": Adam state dicts (None in hand-made states),
     "history": per-epoch entries, "fixed_noise", "fixed_labels": the sample grid's inputs}

`build_gan_state` writes it (the trainer), `load_gan_state` finds, loads and
checks it (generation, quality metrics, the search), `generator_from_state`
turns it back into a network. A state without "family" (written before
families existed) is a DCGAN's. Readers accept a run folder, a Ray Train
checkpoint folder or the state file itself (`resolve_gan_state_uri`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from cxr_ray import storage
from cxr_ray.checkpoint import CheckpointError, load_state, model_state
from cxr_ray.config import to_dict
from cxr_ray.data.layout import CLASS_NAMES
from cxr_ray.filenames import GAN_SUMMARY_FILE, STATE_FILE
from cxr_ray.models.generators import DEFAULT_FAMILY, GENERATOR_FAMILIES, generator_class
from cxr_ray.storage import S3Settings, StorageError

# Written into every GAN checkpoint. Unchanged since the first runs: changing it would orphan them. The
# families added later write the same tag (the layout is the same) and record their "family" beside it.
GAN_FORMAT = "cxr_ray.dcgan/1"
GRID_SIDE = 8  # the fixed-noise sample grid: 8 x 8 images

# `cfg` below is a cxr_ray.train.gan.GanConfig; this module sits below the trainer and does not import it.


def generator_kwargs(cfg: Any) -> dict[str, Any]:
    return {"nz": cfg.nz, "ngf": cfg.ngf, "nc": 1, "image_size": cfg.image_size, "num_classes": cfg.num_classes}


def discriminator_kwargs(cfg: Any) -> dict[str, Any]:
    """The critic's kwargs: the GANs' discriminator, or the VAE's encoder (which also needs nz)."""
    kwargs = {"ndf": cfg.ndf, "nc": 1, "image_size": cfg.image_size, "num_classes": cfg.num_classes}
    if getattr(cfg, "family", DEFAULT_FAMILY) == "vae":
        kwargs["nz"] = cfg.nz
    return kwargs


def state_family(state: dict[str, Any]) -> str:
    """The generator family a checkpoint records; DCGAN for checkpoints from before families."""
    return str(state.get("family", DEFAULT_FAMILY))


def fixed_noise(cfg: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The grid's noise (and labels: top half NORMAL, bottom half PNEUMONIA), the same on every rank and attempt."""
    gen = torch.Generator().manual_seed(cfg.seed + 12345)
    noise = torch.randn(GRID_SIDE * GRID_SIDE, cfg.nz, generator=gen)
    if not cfg.conditional:
        return noise, None
    labels = torch.arange(GRID_SIDE * GRID_SIDE) * cfg.num_classes // (GRID_SIDE * GRID_SIDE)
    return noise, labels


def build_gan_state(
    cfg: Any,
    epoch: int,
    generator: nn.Module,
    discriminator: nn.Module,
    optimizer_g: torch.optim.Optimizer | None,
    optimizer_d: torch.optim.Optimizer | None,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """The writer: a plain-data checkpoint of both networks (unwrapped, on CPU), both optimizers and the history."""
    noise, labels = fixed_noise(cfg)
    return {
        "format": GAN_FORMAT,
        "family": getattr(cfg, "family", DEFAULT_FAMILY),
        "epoch": epoch,
        "config": to_dict(cfg),
        "class_names": list(CLASS_NAMES),
        "generator": {"model_kwargs": generator_kwargs(cfg), "model_state": model_state(generator)},
        "discriminator": {"model_kwargs": discriminator_kwargs(cfg), "model_state": model_state(discriminator)},
        "optimizer_g": optimizer_g.state_dict() if optimizer_g is not None else None,
        "optimizer_d": optimizer_d.state_dict() if optimizer_d is not None else None,
        "history": [dict(entry) for entry in history],
        "fixed_noise": noise,
        "fixed_labels": labels,
    }


def check_gan_state(state: dict[str, Any], where: str) -> dict[str, Any]:
    """The reader's check: `state` is a GAN checkpoint with what readers use; CheckpointError naming `where` if not."""
    if state.get("format") != GAN_FORMAT:
        raise CheckpointError(f"{where}: not a DCGAN checkpoint (format {state.get('format')!r}, expected {GAN_FORMAT!r})")
    generator = state.get("generator")
    missing = [key for key in ("epoch", "config") if key not in state]
    missing += [f"generator.{key}" for key in ("model_kwargs", "model_state") if not isinstance(generator, dict) or key not in generator]
    if missing:
        raise CheckpointError(f"{where}: GAN checkpoint lacks {', '.join(missing)}")
    if state_family(state) not in GENERATOR_FAMILIES:
        raise CheckpointError(
            f"{where}: GAN checkpoint of unknown family {state_family(state)!r} (known: {', '.join(GENERATOR_FAMILIES)})"
        )
    return state


def newest_checkpoint_state(run_uri: str, s3: S3Settings | None) -> str | None:
    """`{run}/checkpoint_*/state.pt` of the newest Ray Train checkpoint (names sort by time), if any."""
    import pyarrow.fs as pafs

    fs, path = storage.resolve(run_uri, s3)
    try:
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except OSError as exc:
        raise StorageError(storage.describe_error(run_uri, exc, s3)) from None
    names = sorted(e.base_name for e in entries if e.type == pafs.FileType.Directory and e.base_name.startswith("checkpoint_"))
    for name in reversed(names):
        state_uri = storage.join(run_uri, name, STATE_FILE)
        if storage.exists(state_uri, s3):
            return state_uri
    return None


def _summary_checkpoint_state(run_uri: str, s3: S3Settings | None) -> str | None:
    """The state file of the checkpoint a finished run's summary names, if there is one."""
    summary_uri = storage.join(run_uri, GAN_SUMMARY_FILE)
    if not storage.exists(summary_uri, s3):
        return None
    checkpoint = str(storage.read_json(summary_uri, s3).get("checkpoint") or "")
    state_uri = storage.join(checkpoint, STATE_FILE) if checkpoint else ""
    return state_uri if state_uri and storage.exists(state_uri, s3) else None


def resolve_gan_state_uri(uri: str, s3: S3Settings | None) -> str:
    """The state file meant by `uri`: a state file; a checkpoint folder holding one; or a GAN run folder
    (the checkpoint its gan_summary.json names, else its newest checkpoint_*)."""
    if not storage.is_dir(uri, s3):
        if not storage.exists(uri, s3):
            raise CheckpointError(f"{uri}: no such GAN run, checkpoint folder or state file")
        return uri
    direct = storage.join(uri, STATE_FILE)
    if storage.exists(direct, s3):
        return direct
    found = _summary_checkpoint_state(uri, s3) or newest_checkpoint_state(uri, s3)
    if found is None:
        raise CheckpointError(
            f"{uri}: no GAN checkpoint found (expected {STATE_FILE}, {GAN_SUMMARY_FILE} or checkpoint_*/{STATE_FILE})"
        )
    return found


def load_gan_state(uri: str, s3: S3Settings | None = None) -> dict[str, Any]:
    """Find (see `resolve_gan_state_uri`), load (weights_only) and check a GAN checkpoint."""
    state_uri = resolve_gan_state_uri(uri, s3)
    return check_gan_state(load_state(state_uri, s3), state_uri)


def generator_from_state(state: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """The generator (the VAE's decoder) of a GAN checkpoint of any family, in eval mode."""
    check_gan_state(state, "GAN state")
    generator = generator_class(state_family(state))(**state["generator"]["model_kwargs"])
    generator.load_state_dict(state["generator"]["model_state"])
    return generator.to(device).eval()
