"""Frozen configuration dataclasses, built from dicts/YAML with unknown keys refused.

A config travels CLI/job -> stage function -> Ray workers as a plain dict
(`to_dict`), and is rebuilt on the other side (`from_dict`), so nothing
unpicklable or code-bearing ever lands in a checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the field."""


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and nested dataclasses handled."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)} for {cls.__name__}; "
            f"known: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = from_dict(hint, value, where=f"{where}.{name}" if where else name)  # type: ignore[arg-type]
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def config_hash(obj: Any) -> str:
    """Stable short hash of a config, for run names and the study manifest."""
    blob = json.dumps(to_dict(obj) if dataclasses.is_dataclass(obj) else obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class IngestConfig:
    """Kaggle-layout folder -> Parquet image table at the study resolution."""

    src: str
    dest: str
    resolution: int = 64
    val_fraction: float = 0.1
    seed: int = 0
    overwrite: bool = False
    # Files per decode batch: large enough to amortise Ray task overhead.
    batch_size: int = 512

    def __post_init__(self) -> None:
        from cxr_ray.data.decode import SUPPORTED_RESOLUTIONS

        if self.resolution not in SUPPORTED_RESOLUTIONS:
            raise ConfigError(f"resolution must be one of {SUPPORTED_RESOLUTIONS}, got {self.resolution}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")
