"""Frozen configuration dataclasses, built from dicts/YAML with unknown keys refused.

A config travels CLI/job -> stage function -> Ray workers as a plain dict
(`to_dict`), and is rebuilt on the other side (`from_dict`), so nothing
unpicklable or code-bearing ever lands in a checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the field."""


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _expected(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _scalar_error(hint: Any, value: Any) -> str | None:
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    elif hint is str:
        ok = isinstance(value, str)
    elif hint is dict:
        ok = isinstance(value, Mapping)
    else:
        return None  # a type this check does not know: left to the class
    if ok:
        return None
    message = f"expected {_expected(hint)}, got {value!r}"
    if hint is float and isinstance(value, str) and re.fullmatch(r"[+-]?\d+[eE][+-]?\d+", value):
        # PyYAML reads 1e-3 (no dot) as text; saying so saves a puzzled user a search.
        message += " (YAML reads 1e-3 as text: write 1.0e-3)"
    return message


def type_error(hint: Any, value: Any) -> str | None:
    """Why `value` does not fit the type hint `hint` ("expected an integer, got 2.5"), or None when it does.

    Checked before a config's own checks run, so `epochs: "ten"` is named as such
    instead of failing a comparison (or a worker, minutes later).
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        errors = [type_error(option, value) for option in options]
        return None if any(e is None for e in errors) else errors[0]
    if origin is tuple:
        return _tuple_error(typing.get_args(hint), value)
    if origin is dict:
        return _scalar_error(dict, value)
    return _scalar_error(hint, value)


def _tuple_error(args: tuple[Any, ...], value: Any) -> str | None:
    if not isinstance(value, (tuple, list)):
        return f"expected a list, got {value!r}"
    if len(args) == 2 and args[1] is Ellipsis:
        pairs = [(args[0], v) for v in value]
    elif len(args) != len(value):
        return f"expected a list of {len(args)} values, got {list(value)!r}"
    else:
        pairs = list(zip(args, value))
    for hint, item in pairs:
        error = type_error(hint, item)
        if error:
            return f"{error} in {list(value)!r}"
    return None


def check_types(cls: type, values: Mapping[str, Any], *, where: str = "") -> None:
    """Every value against the dataclass's type hints; ConfigError naming the first field that does not fit."""
    hints = _hints(cls)
    for name, value in values.items():
        hint = hints.get(name)
        if hint is None or dataclasses.is_dataclass(hint):
            continue
        error = type_error(hint, value)
        if error:
            raise ConfigError(f"{where + '.' if where else ''}{name}: {error}")


def check_fields(obj: Any) -> None:
    """`check_types` on a built config: the first line of each config's __post_init__ (direct construction too)."""
    check_types(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})


def at_least(obj: Any, minimum: float, *names: str) -> None:
    """ConfigError naming the first of `names` whose value (None skipped) is below `minimum`."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")


def positive_bounds(obj: Any, *names: str) -> None:
    """ConfigError naming the first of `names` that is not a (low, high) pair with 0 < low < high."""
    for name in names:
        low, high = getattr(obj, name)
        if not 0 < low < high:
            raise ConfigError(f"{name} must be increasing positive bounds, got {getattr(obj, name)}")


def positive_choices(obj: Any, *names: str) -> None:
    """ConfigError naming the first of `names` that is not a non-empty list of integers >= 1."""
    for name in names:
        values = getattr(obj, name)
        if not values or min(values) < 1:
            raise ConfigError(f"{name} must be positive, got {values}")


def check_name(field_name: str, value: str | None) -> None:
    """A run or search name is one plain folder name: it is joined under a storage root, never climbs out of it."""
    if value is None:
        return
    if value in ("", ".", "..") or any(c in value for c in "/\\\0") or value != value.strip():
        raise ConfigError(f"{field_name} must be a plain folder name (no '/', not '.' or '..'), got {value!r}")


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
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = from_dict(hint, value, where=f"{where}.{name}" if where else name)  # type: ignore[arg-type]
        elif isinstance(value, list) and _takes_tuple(hint):
            value = tuple(value)
        kwargs[name] = value
    # Types first: a wrong type would otherwise surface as a failed comparison in the
    # class's own checks, or in a Ray worker minutes later.
    check_types(cls, kwargs, where=where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def _takes_tuple(hint: Any) -> bool:
    """A tuple hint, alone or in an Optional (YAML gives lists)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(typing.get_origin(a) is tuple for a in typing.get_args(hint))
    return typing.get_origin(hint) is tuple


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
    # Larger images are quarantined unread (= data.decode.DEFAULT_MAX_PIXELS; detectors make <= ~18 MP).
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        from cxr_ray.data.decode import SUPPORTED_RESOLUTIONS

        check_fields(self)
        at_least(self, 0, "seed")
        if self.resolution not in SUPPORTED_RESOLUTIONS:
            raise ConfigError(f"resolution must be one of {SUPPORTED_RESOLUTIONS}, got {self.resolution}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")
        at_least(self, 64, "max_pixels")  # 8x8, the smallest image decoded
