"""Parquet image tables -> Ray Datasets (and numpy arrays) for each task.

A task decides the target: `pneumonia` learns NORMAL (0) vs PNEUMONIA (1)
from real and/or fake images; `deepfake` learns real (0) vs fake (1). Only the
pixels and the target reach a model; `source`, `path` and the rest stay here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from cxr_ray import storage
from cxr_ray.data import schema
from cxr_ray.storage import S3Settings, StorageError

TASKS = ("pneumonia", "deepfake")
SOURCES = ("real", "fake", "both")


class DatasetError(ValueError):
    """An image table is missing, incomplete or unfit for the task; the message names it."""


def images_uri(table_uri: str) -> str:
    """The images folder of a table being built, or of `storage.published(table)` (`require_complete` returns it)."""
    return storage.join(table_uri, schema.IMAGES_DIR)


def require_complete(table_uri: str, s3: S3Settings | None) -> str:
    """The folder to read the table from (`storage.published`), once it is known to be complete."""
    try:
        folder = storage.published(table_uri, s3)
        complete = storage.exists(storage.join(folder, storage.SUCCESS_MARKER), s3)
    except StorageError as exc:
        raise DatasetError(str(exc)) from None
    if not complete:
        raise DatasetError(
            f"{table_uri}: not a complete image table (no {storage.SUCCESS_MARKER}); run `cxr-ray ingest` "
            "or `cxr-ray generate` to create it"
        )
    return folder


@dataclass(frozen=True)
class TaskData:
    """Where a task's images come from."""

    task: str
    real: str | None  # ingested reals
    fake: str | tuple[str, ...] | None = None  # generated fakes: one table, or one per generator family
    source: str = "real"  # for `pneumonia`: train on real, fake or both

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DatasetError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.source not in SOURCES:
            raise DatasetError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.task == "deepfake" and not (self.real and self.fake):
            raise DatasetError("task 'deepfake' needs both a real table and a fake table")
        if self.task == "pneumonia" and self.source in ("real", "both") and not self.real:
            raise DatasetError(f"source {self.source!r} needs a real table")
        if self.task == "pneumonia" and self.source in ("fake", "both") and not self.fake:
            raise DatasetError(f"source {self.source!r} needs a fake table (--fakes)")

    def tables(self) -> list[str]:
        if self.task == "deepfake" or self.source == "both":
            return [self.real, *fake_tables(self.fake)]  # type: ignore[list-item]
        return [self.real] if self.source == "real" else fake_tables(self.fake)  # type: ignore[list-item]


def fake_tables(fake: str | tuple[str, ...] | list[str] | None) -> list[str]:
    """The fake table(s) of a `fake`/`fakes` setting as a list: one table, several (one per family), or none."""
    if not fake:
        return []
    return [fake] if isinstance(fake, str) else list(fake)


def one_or_many(tables: list[str] | tuple[str, ...]) -> str | tuple[str, ...] | None:
    """How a config stores fake tables: one table as a plain string (the name runs had before several
    were possible, so their run names stay), several as a tuple, none as None."""
    tables = list(tables)
    if not tables:
        return None
    return tables[0] if len(tables) == 1 else tuple(tables)


def to_task_batch(batch: pa.Table, task: str, splits: list[str] | None = None) -> pa.Table:
    """Keep the split(s) asked for, and of those only pixels and target; the target depends on the task."""
    if splits is not None:
        batch = batch.filter(pc.is_in(batch.column("split"), value_set=pa.array(splits, pa.string())))
    return pa.table({"image": batch.column("image"), "target": task_target(batch, task)})


def task_target(batch: pa.Table, task: str) -> Any:
    """What a model of `task` learns per row: fake-ness (deepfake) or the class label (pneumonia)."""
    if task == "deepfake":
        return pc.cast(pc.equal(batch.column("source"), "fake"), pa.int64())
    return batch.column("label")


def _split_filter(splits: Iterable[str]) -> pc.Expression:
    return pc.field("split").isin(list(splits))


def keep_train_paths(batch: pa.Table, paths: list[str]) -> pa.Table:
    """Ray Data UDF: every non-train row, and of the train rows those whose path was chosen."""
    chosen = pc.is_in(batch.column("path"), value_set=pa.array(paths, pa.string()))
    return batch.filter(pc.or_(pc.not_equal(batch.column("split"), "train"), chosen))


def train_subset(
    data: TaskData, per_class: int, seed: int, s3: S3Settings | None = None
) -> tuple[list[str], dict[int, int]]:
    """The paths of `per_class` train images per target class, and how many each class got.

    Read on the driver (path, label, source of the train rows only). Candidates
    are ordered by path and drawn with `np.random.default_rng(seed)`, class 0
    first, so the same seed on the same table(s) always picks the same images;
    a class with fewer images keeps all of them.
    """
    tables = []
    for uri in data.tables():
        fs, path = storage.resolve(images_uri(require_complete(uri, s3)), s3)
        dataset = pads.dataset(path, filesystem=fs, format="parquet", schema=schema.IMAGE_SCHEMA)
        tables.append(dataset.to_table(columns=["path", "label", "source", "split"], filter=_split_filter(["train"])))
    table = pa.concat_tables(tables)
    paths = np.asarray(table.column("path").to_pylist(), dtype=object)
    target = np.asarray(task_target(table, data.task).to_numpy(zero_copy_only=False))
    order = np.argsort(paths.astype(str), kind="stable")
    paths, target = paths[order], target[order]
    rng = np.random.default_rng(seed)
    chosen, counts = [], {}
    for cls in (0, 1):
        members = np.flatnonzero(target == cls)
        picked = members[np.sort(rng.choice(members.size, size=min(per_class, members.size), replace=False))]
        chosen.extend(paths[picked].tolist())
        counts[cls] = int(picked.size)
    return sorted(chosen), counts


def read_split(
    data: TaskData,
    splits: Iterable[str],
    s3: S3Settings | None = None,
    per_class: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Any:
    """A Ray Dataset of (image, target) rows for the task and split(s).

    `per_class`: the train rows are cut to that many images per class
    (`train_subset`, drawn with `seed`); val and test rows are untouched.
    """
    import ray

    splits = list(splits)
    parts = []
    for uri in data.tables():
        fs, path = storage.resolve(images_uri(require_complete(uri, s3)), s3)
        parts.append(ray.data.read_parquet(path, filesystem=fs).select_columns(["image", "label", "split", "source", "path"]))
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    if per_class is not None and "train" in splits:
        paths, counts = train_subset(data, per_class, seed, s3)
        short = {cls: n for cls, n in counts.items() if n < per_class}
        if short:
            log(f"[data] train_per_class={per_class}: class(es) with fewer train images keep all of them: {short}")
        ds = ds.map_batches(keep_train_paths, batch_format="pyarrow", fn_kwargs={"paths": paths}, batch_size=None)
    return ds.map_batches(
        to_task_batch, batch_format="pyarrow", fn_kwargs={"task": data.task, "splits": splits}, batch_size=None
    )


def load_arrays(
    data: TaskData, splits: Iterable[str], s3: S3Settings | None = None, columns: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """The same rows as `read_split`, read in this process: images (N, H, W) uint8, target (N,).

    For evaluation on the driver and for plain-PyTorch baselines.
    """
    tables = []
    for uri in data.tables():
        fs, path = storage.resolve(images_uri(require_complete(uri, s3)), s3)
        dataset = pads.dataset(path, filesystem=fs, format="parquet", schema=schema.IMAGE_SCHEMA)
        tables.append(dataset.to_table(filter=_split_filter(splits)))
    table = pa.concat_tables(tables)
    task_table = to_task_batch(table, data.task)
    out = {"image": images_from_column(table), "target": task_table.column("target").to_numpy()}
    for name in columns:
        out[name] = np.asarray(table.column(name).to_pylist())
    return out


def read_columns(table_uri: str, columns: list[str], s3: S3Settings | None = None,
                 splits: Iterable[str] | None = None) -> pa.Table:  # fmt: skip
    """Some columns of a complete table's rows (of `splits` only, when given), read in this process (no Ray)."""
    fs, path = storage.resolve(images_uri(require_complete(table_uri, s3)), s3)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    return dataset.to_table(columns=columns, filter=None if splits is None else _split_filter(splits))


def images_from_column(table: pa.Table) -> np.ndarray:
    """Binary pixel column -> (N, H, W) uint8, checking every row has the same size."""
    if table.num_rows == 0:
        return np.zeros((0, 0, 0), np.uint8)
    heights = pc.unique(table.column("height")).to_pylist() if "height" in table.column_names else None
    widths = pc.unique(table.column("width")).to_pylist() if "width" in table.column_names else None
    flat = np.frombuffer(b"".join(table.column("image").to_pylist()), dtype=np.uint8)
    n = table.num_rows
    if heights and widths:
        if len(heights) != 1 or len(widths) != 1:
            raise DatasetError(f"images of mixed sizes in one table: heights {heights}, widths {widths}")
        h, w = heights[0], widths[0]
    else:
        side = int(round((flat.size / n) ** 0.5))
        h = w = side
    if flat.size != n * h * w:
        raise DatasetError(f"image column holds {flat.size} bytes, expected {n}x{h}x{w}")
    return flat.reshape(n, h, w)


def batch_to_arrays(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A numpy batch from Ray Data (object array of bytes) -> (N, H, W) uint8 and targets."""
    images = batch["image"]
    n = len(images)
    if n == 0:
        return np.zeros((0, 0, 0), np.uint8), np.zeros((0,), np.int64)
    side = int(round(len(images[0]) ** 0.5))
    flat = np.frombuffer(b"".join(images), dtype=np.uint8)
    return flat.reshape(n, side, side), np.asarray(batch["target"], dtype=np.int64)


def resolution_of(table_uri: str, s3: S3Settings | None = None) -> int:
    """The square size of a table's images, from its summary."""
    summary = storage.read_json(storage.join(require_complete(table_uri, s3), schema.SUMMARY_FILE), s3)
    return int(summary["resolution"])
