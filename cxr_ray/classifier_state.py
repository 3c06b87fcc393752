"""The classifier / detector checkpoint format: one writer, one reader.

The trainer (`cxr_ray.train.classifier`) writes every epoch's state with
`build_classifier_state`; everything that rebuilds a model from a run
(scoring, scan, the final test evaluation) reads it through
`load_classifier_state` / `check_classifier_state`, so the keys are spelled
in one place. States written before the format tag existed carry only
`kind == "classifier"`; they are still accepted, so a study root trained by
an older version is reused as it is.
"""

from __future__ import annotations

from typing import Any

from cxr_ray.checkpoint import CheckpointError, load_state
from cxr_ray.storage import S3Settings

CLASSIFIER_FORMAT = "cxr-ray/classifier/v1"
CLASSIFIER_KIND = "classifier"  # the only marker of states written before CLASSIFIER_FORMAT
# What a reader needs to rebuild the model and score with it at its val-chosen threshold.
REQUIRED_KEYS = ("task", "model_name", "model_kwargs", "model_state", "epoch", "threshold", "config")


def build_classifier_state(
    *,
    config: dict[str, Any],
    task: str,
    model_name: str,
    model_kwargs: dict[str, Any],
    model_state: dict[str, Any],
    optimizer_state: dict[str, Any] | None,
    scheduler_state: dict[str, Any] | None,
    epoch: int,
    val_metrics: dict[str, Any],
    threshold: float,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """A plain-data checkpoint (see `cxr_ray.checkpoint.save_state`) that `check_classifier_state` accepts."""
    return {
        "format": CLASSIFIER_FORMAT,
        "kind": CLASSIFIER_KIND,  # kept for readers of the untagged states
        "task": task,
        "model_name": model_name,
        "model_kwargs": dict(model_kwargs),
        "model_state": model_state,
        "optimizer_state": optimizer_state,
        "scheduler_state": scheduler_state,
        "epoch": int(epoch),
        "config": config,
        "val_metrics": dict(val_metrics),
        "threshold": float(threshold),
        "history": [dict(entry) for entry in history],
    }


def check_classifier_state(state: dict[str, Any], where: str) -> dict[str, Any]:
    """`state` itself if it is a classifier checkpoint; else CheckpointError naming `where` (the file)."""
    fmt = state.get("format")
    legacy = fmt is None and state.get("kind") == CLASSIFIER_KIND
    if fmt != CLASSIFIER_FORMAT and not legacy:
        found = f"format {fmt!r}" if fmt is not None else f"kind {state.get('kind')!r}"
        raise CheckpointError(f"{where}: not a classifier checkpoint ({found}; expected format {CLASSIFIER_FORMAT!r})")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{where}: classifier checkpoint lacks {', '.join(missing)}")
    return state


def load_classifier_state(uri: str, s3: S3Settings | None = None) -> dict[str, Any]:
    """Read a classifier checkpoint file (path or s3://), weights_only, and check its format."""
    return check_classifier_state(load_state(uri, s3), uri)
