"""Checkpoints as plain data, saved atomically and loaded with ``weights_only=True``.

A checkpoint may come from a shared S3 bucket, so loading must never execute
code: we only ever read with ``torch.load(weights_only=True)``, and refuse at
save time anything that such a load could not read back (custom classes,
numpy values, namedtuples ...), so a bad checkpoint fails when it is written,
not hours later when a job tries to resume from it.
"""

from __future__ import annotations

import collections
import io
from typing import Any

import torch
import torch.nn as nn

from cxr_ray.storage import S3Settings, read_bytes, write_bytes_atomic

# Exact types, not isinstance: subclasses (numpy.float64 is a float, a namedtuple
# is a tuple) are pickled by class and would not load with weights_only=True.
_SCALAR_TYPES = (str, int, float, bool, type(None))
_SEQUENCE_TYPES = (list, tuple, torch.Size)
_MAPPING_TYPES = (dict, collections.OrderedDict)  # state_dict() returns an OrderedDict
_TENSOR_TYPES = (torch.Tensor, nn.Parameter)


class CheckpointError(ValueError):
    """A file is not a readable plain-data checkpoint; the message names it."""


def _check_plain(value: Any, path: str) -> None:
    kind = type(value)
    if kind in _SCALAR_TYPES or kind in _TENSOR_TYPES:
        return
    if kind in _SEQUENCE_TYPES:
        for index, item in enumerate(value):
            _check_plain(item, f"{path}[{index}]")
        return
    if kind in _MAPPING_TYPES:
        for key, item in value.items():
            # int keys are needed: optimizer state_dicts key their per-parameter state by index.
            if type(key) not in (str, int):
                raise TypeError(
                    f"checkpoint state {path or '<root>'!s} has a key of type {type(key).__name__} ({key!r}); "
                    "only str and int keys are allowed"
                )
            _check_plain(item, f"{path}.{key}" if path else str(key))
        return
    raise TypeError(
        f"checkpoint state {path or '<root>'} is a {kind.__module__}.{kind.__qualname__}; only tensors, "
        "dicts, lists, tuples, str, int, float, bool and None can be saved (convert it, e.g. to a dict or float)"
    )


def save_state(state: dict, uri: str, s3: S3Settings | None = None) -> None:
    """Write ``state`` (plain data only) to ``uri`` (path or s3://) atomically.

    Raises TypeError naming the key path (e.g. ``config.optimizer``) of the
    first value that ``torch.load(weights_only=True)`` could not read back.
    """
    if type(state) not in _MAPPING_TYPES:
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    _check_plain(state, "")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(uri, buffer.getvalue(), s3)


def load_state(uri: str, s3: S3Settings | None = None, map_location: Any = "cpu") -> dict:
    """Read a checkpoint written by ``save_state``; never executes code from the file.

    Raises ``storage.StorageError`` if ``uri`` cannot be read and ``CheckpointError``
    if it is not a plain-data checkpoint.
    """
    data = read_bytes(uri, s3)
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError, zip errors, EOFError ...: all mean "not a checkpoint we accept"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{uri}: not a valid plain-data checkpoint (it may be corrupt, truncated, or hold pickled objects "
            f"that a weights_only load refuses): {first_line}"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{uri}: checkpoint holds a {type(state).__name__}, expected a dict")
    return state


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel / DataParallel (``.module``)
    and torch.compile (``._orig_mod``), in any nesting."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unwrapped model's state_dict as CPU copies: loadable without DDP/compile key prefixes,
    and a snapshot that later training steps do not change."""
    return {key: value.detach().to("cpu", copy=True) for key, value in unwrap_model(model).state_dict().items()}
