"""Benign re-processing of real images: what a hospital's own software does to an X-ray, as an image table.

A detector that flags a real image because it was re-saved, resized or
windowed raises false alarms all day. Each condition here starts from the
original source file's bytes (the real row's `path`), changes the file the
way archive software, a viewer export or a PACS migration would, and ends in
the study's pixels through ingest's own decode path wherever a file is
written, so the only difference from the ingested reals is the condition
itself. "ingest" is the reference: exactly the ingested pixels.

`run_benign` applies every condition to the val and test splits of an
ingested real table on Ray Data and writes an image table (the image schema
plus `condition`) that the scoring pipeline scores like any other: the test
rows give the false-positive rate of each detector per condition at its
operating points, the val rows fix its benign-robust operating point.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image, JpegImagePlugin

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.data import schema
from cxr_ray.data.decode import DEFAULT_MAX_PIXELS, DecodeError, check_pixels, decode_to_gray, to_uint8_gray
from cxr_ray.perturb import apply_gamma, contrast_stretch
from cxr_ray.storage import S3Settings

BENIGN_CONDITIONS = (
    "ingest", "jpeg95", "jpeg85", "jpeg60", "png", "resize_nearest", "resize_bicubic", "resize_lanczos",
    "no_draft", "resave", "gamma0.8", "gamma1.2", "contrast_stretch", "png16",
)  # fmt: skip

JPEG_QUALITIES = {"jpeg95": 95, "jpeg85": 85, "jpeg60": 60}
RESIZE_FILTERS = {
    "resize_nearest": Image.Resampling.NEAREST,
    "resize_bicubic": Image.Resampling.BICUBIC,
    "resize_lanczos": Image.Resampling.LANCZOS,
    "no_draft": Image.Resampling.BILINEAR,  # ingest's own filter, on the fully decoded image
}
GAMMAS = {"gamma0.8": 0.8, "gamma1.2": 1.2}
STRETCH_PERCENTILES = (1.0, 99.0)
# Modes PIL decodes 16-bit / integer / float PNGs into: min-max scaled to 8 bits, as ingest does.
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

BENIGN_SCHEMA = schema.IMAGE_SCHEMA.append(pa.field("condition", pa.string(), nullable=False))


def check_conditions(conditions: tuple[str, ...] | list[str]) -> None:
    """ValueError naming an unknown condition and the known ones (a ConfigError is a ValueError)."""
    for condition in conditions:
        if condition not in BENIGN_CONDITIONS:
            raise ConfigError(f"unknown benign condition {condition!r}; known: {', '.join(BENIGN_CONDITIONS)}")


# ---------------------------------------------------------------- one file, one condition


def reprocess(blob: bytes, condition: str, resolution: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The original file's bytes after `condition`, as (resolution, resolution) uint8 study pixels.

    DecodeError (with the reason) when the file is not an image ingest would
    accept; ValueError for an unknown condition.
    """
    check_conditions([condition])
    # The same acceptance rules as ingest for every condition: a file ingest refuses is refused here too.
    reference = decode_to_gray(blob, resolution, max_pixels)
    if condition == "ingest":
        return reference
    src = _decode_full(blob, max_pixels)
    if condition in JPEG_QUALITIES:
        return decode_to_gray(_reencode_jpeg(src, JPEG_QUALITIES[condition]), resolution, max_pixels)
    if condition == "png":
        return decode_to_gray(_encode(_png_mode(src), "PNG"), resolution, max_pixels)
    gray = to_uint8_gray(src)
    if condition in RESIZE_FILTERS:
        if gray.size != (resolution, resolution):
            gray = gray.resize((resolution, resolution), RESIZE_FILTERS[condition])
        return np.asarray(gray, dtype=np.uint8)
    pixels = np.asarray(gray, dtype=np.uint8)
    if condition == "png16":
        # A 16-bit export (x257 spreads 0-255 over 0-65535); ingest min-max scales deep images per image.
        deep = Image.fromarray(pixels.astype(np.uint16) * np.uint16(257))
        return decode_to_gray(_encode(deep, "PNG"), resolution, max_pixels)
    # Window/level changes are re-saved in the archive's format; "resave" is that re-save alone, their control.
    if condition == "resave":
        windowed = pixels
    else:
        windowed = apply_gamma(pixels, GAMMAS[condition]) if condition in GAMMAS else contrast_stretch(pixels, STRETCH_PERCENTILES)
    return decode_to_gray(_save_as_archive(windowed, blob), resolution, max_pixels)


def _decode_full(blob: bytes, max_pixels: int) -> Image.Image:
    """The whole file decoded at full resolution, in its own mode (no draft): what a viewer or converter sees."""
    try:
        img = Image.open(io.BytesIO(blob))
        check_pixels(img.width, img.height, max_pixels)  # before any pixel is decoded
        img.load()
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image too large: {exc} (max_pixels={max_pixels})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"corrupt or truncated image: {exc}") from None
    return img


def _encode(img: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def _reencode_jpeg(src: Image.Image, quality: int) -> bytes:
    """The decoded original saved as JPEG at `quality`, in its colour mode and with its chroma subsampling."""
    if src.mode in ("L", "RGB", "CMYK"):
        img = src
    elif src.mode in _DEEP_MODES or src.mode in ("LA", "1"):
        img = to_uint8_gray(src)
    else:
        img = src.convert("RGB")  # RGBA, P: JPEG has no alpha or palette
    options: dict[str, Any] = {"quality": quality}
    code = JpegImagePlugin.get_sampling(src) if src.format == "JPEG" else -1
    if code >= 0 and img.mode != "L":
        options["subsampling"] = code
    return _encode(img, "JPEG", **options)


def _png_mode(src: Image.Image) -> Image.Image:
    """The decoded original in a mode PNG stores: its own, except CMYK (a JPEG-only mode) as RGB."""
    return src.convert("RGB") if src.mode == "CMYK" else src


def _save_as_archive(gray: np.ndarray, original: bytes) -> bytes:
    """`gray` (the original's size) re-saved as the archive stores the original: its format, mode, quality, subsampling."""
    from cxr_ray.data.archive import WRITABLE_MODES, encode_as_archive, file_format

    fmt = file_format(original)
    writable = WRITABLE_MODES[fmt.format]
    if fmt.mode not in writable:
        # A mode the archive writer does not take (RGBA, P, CMYK, 32-bit...): the nearest one it does.
        deep = fmt.mode in _DEEP_MODES
        fmt = replace(fmt, mode="I;16" if deep and "I;16" in writable else "L" if deep or fmt.mode in ("LA", "1") else "RGB")
    if fmt.format == "JPEG" and fmt.mode == "RGB" and fmt.subsampling is None:
        fmt = replace(fmt, subsampling="4:2:0")  # libjpeg's default for colour
    return encode_as_archive(gray, fmt)


def reprocess_file(blob: bytes, conditions: tuple[str, ...], resolution: int, max_pixels: int) -> list[np.ndarray]:
    """Every condition's pixels for one file; DecodeError when any fails, so each condition holds the same images."""
    return [reprocess(blob, condition, resolution, max_pixels) for condition in conditions]


# ---------------------------------------------------------------- the Ray Data job


@dataclass(frozen=True)
class BenignConfig:
    """Which real table and splits to re-process, under which conditions, and where to write the result.

    Validation reals are re-processed too by default: a detector's benign-robust
    operating point (cxr_ray.operating.benign_robust_threshold) is chosen on
    them, and only the test rows are scored as the benign evaluation set.
    """

    real: str  # ingested real image table (path or s3://); its rows' `path` are the source files
    dest: str
    conditions: tuple[str, ...] = BENIGN_CONDITIONS
    splits: tuple[str, ...] = ("val", "test")
    batch_size: int = 32  # source files per actor call
    max_actors: int | None = None  # None: one per CPU less one
    resources: dict | None = None  # what each actor asks of a node, and the pool's bounds (cxr_ray.resources)
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        from cxr_ray.config import at_least, check_fields

        check_fields(self)
        if not self.conditions:
            raise ConfigError(f"conditions: give at least one of {', '.join(BENIGN_CONDITIONS)}")
        check_conditions(self.conditions)
        doubled = sorted(c for c, n in Counter(self.conditions).items() if n > 1)
        if doubled:
            raise ConfigError(f"conditions: {', '.join(doubled)} given more than once")
        unknown = sorted(set(self.splits) - {"train", "val", "test"})
        if unknown or not self.splits:
            raise ConfigError(f"splits must be some of train, val, test, got {', '.join(self.splits) or '(none)'}")
        if len(set(self.splits)) != len(self.splits):
            raise ConfigError(f"splits: {', '.join(self.splits)} names a split more than once")
        at_least(self, 1, "batch_size", "max_actors")
        at_least(self, 64, "max_pixels")  # 8x8, the smallest image decoded


_ROW_COLUMNS = ["path", "label", "class_name", "patient_id", "split"]


def real_rows(real: str, splits: Sequence[str], s3: S3Settings | None) -> list[dict[str, Any]]:
    """The real rows of `splits` (source file URI, label, class, patient), sorted by path; DatasetError when a split
    has none."""
    import pyarrow.dataset as pads

    from cxr_ray.data.datasets import DatasetError, images_uri, require_complete

    fs, path = storage.resolve(images_uri(require_complete(real, s3)), s3)
    dataset = pads.dataset(path, filesystem=fs, format="parquet", schema=schema.IMAGE_SCHEMA)
    wanted = pads.field("split").isin(list(splits)) & (pads.field("source") == "real")
    rows = dataset.to_table(columns=_ROW_COLUMNS, filter=wanted).to_pylist()
    empty = [split for split in splits if not any(r["split"] == split for r in rows)]
    if empty:
        raise DatasetError(f"{real}: no real images in split {empty[0]!r} to re-process")
    return sorted(rows, key=lambda r: r["path"])


def benign_table(items: list[dict[str, Any]], images: list[list[np.ndarray]], conditions: tuple[str, ...]) -> pa.Table:
    """Image-schema rows (+ condition) for re-processed files: one per (file, condition), the real row's metadata kept."""
    columns: dict[str, list[Any]] = {name: [] for name in BENIGN_SCHEMA.names}
    for item, per_condition in zip(items, images):
        for condition, image in zip(conditions, per_condition):
            pixels = image.tobytes()
            columns["image"].append(pixels)
            columns["height"].append(image.shape[0])
            columns["width"].append(image.shape[1])
            columns["sha256"].append(hashlib.sha256(pixels).hexdigest())
            columns["source"].append("real")
            columns["generator_run"].append(None)
            columns["seed"].append(None)
            columns["condition"].append(condition)
            for name in _ROW_COLUMNS:
                columns[name].append(item[name])
    return pa.table(columns, schema=BENIGN_SCHEMA)


class BenignWriter:
    """Ray Data actor: reads a batch's source files, applies every condition, writes one Parquet part file.

    Returns one metadata row per source file (ok, reason): a file that cannot
    be read or decoded is reported, never fatal.
    """

    def __init__(
        self, conditions: list[str], resolution: int, max_pixels: int, s3: dict[str, Any] | None, images_dir: str, run_token: str
    ) -> None:
        self.conditions = tuple(conditions)
        self.resolution, self.max_pixels = resolution, max_pixels
        self.s3 = S3Settings.from_dict(s3)
        self.images_dir, self.run_token = images_dir, run_token

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = batch.to_pylist()
        kept, images, reasons = [], [], []
        for item, blob in zip(items, storage.read_many([i["path"] for i in items], self.s3)):
            reason = ""
            if isinstance(blob, Exception):
                reason = f"unreadable: {str(blob).splitlines()[0] if str(blob) else type(blob).__name__}"
            else:
                try:
                    images.append(reprocess_file(blob, self.conditions, self.resolution, self.max_pixels))
                    kept.append(item)
                except DecodeError as exc:
                    reason = str(exc)
            reasons.append(reason)
        if kept:
            import pyarrow.parquet as pq

            # Named by this run and the batch's first file: unique per batch, and no two runs collide.
            name = hashlib.sha1(items[0]["path"].encode()).hexdigest()[:16]
            fs, path = storage.resolve(storage.join(self.images_dir, f"part-{self.run_token}-{name}.parquet"), self.s3)
            pq.write_table(benign_table(kept, images, self.conditions), path, filesystem=fs)
        return pa.table({"path": [i["path"] for i in items], "reason": pa.array(reasons, pa.string())})


def run_benign(
    cfg: BenignConfig,
    *,
    s3: S3Settings | None = None,
    log: Callable[[str], None] = print,
    address: str | None = None,
) -> dict[str, Any]:
    """Re-process the real table's `cfg.splits` under every condition into cfg.dest; returns the summary (also summary.json).

    The table, its rows and the destination are checked before Ray starts.
    """
    from cxr_ray.data.datasets import require_complete, resolution_of
    from cxr_ray.resources import actor_pool_options, pool_size
    from cxr_ray.runtime import init_ray

    t0 = time.perf_counter()
    s3 = s3 or S3Settings.from_env()
    # DEST must not hold or sit inside the real table or its source folder: --overwrite would delete them.
    storage.check_separate(cfg.dest, [cfg.real], "real table")
    ingest_summary = storage.read_json(storage.join(require_complete(cfg.real, s3), schema.SUMMARY_FILE), s3)
    if ingest_summary.get("src"):
        storage.check_separate(cfg.dest, [ingest_summary["src"]], "source folder of the real table")
    storage.check_destination(cfg.dest, s3, cfg.overwrite)
    resolution = resolution_of(cfg.real, s3)
    items = real_rows(cfg.real, cfg.splits, s3)
    ray = init_ray(address)
    pool = actor_pool_options(cfg.max_actors, cfg.resources)
    log(
        f"benign: {len(items)} {'+'.join(cfg.splits)} reals x {len(cfg.conditions)} condition(s) at {resolution}px "
        f"on {pool_size(pool)} actor(s) -> {cfg.dest}"
    )
    with storage.staged_output(cfg.dest, s3, cfg.overwrite) as staging:
        images_uri = storage.join(staging, schema.IMAGES_DIR)
        fs, images_path = storage.resolve(images_uri, s3)
        fs.create_dir(images_path, recursive=True)
        t_run = time.perf_counter()
        reasons = _reprocess_all(ray, items, cfg, resolution, s3, storage.absolute(images_uri), pool)
        run_seconds = time.perf_counter() - t_run
        rows = _count_written(images_uri, s3, cfg.conditions)
        summary = _summary(cfg, resolution, len(items), rows, reasons, pool_size(pool), time.perf_counter() - t0, run_seconds)
        storage.write_json_atomic(storage.join(staging, schema.SUMMARY_FILE), summary, s3)
    return summary


def _reprocess_all(
    ray: Any, items: list[dict[str, Any]], cfg: BenignConfig, resolution: int, s3: S3Settings, images_dir: str, pool: dict[str, Any]
) -> list[dict[str, str]]:
    """Run `BenignWriter` over every source file; the files that failed, with their reasons."""
    from cxr_ray.resources import pool_size

    blocks = max(2 * pool_size(pool), math.ceil(len(items) / cfg.batch_size))
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), blocks)).map_batches(
        BenignWriter,
        fn_constructor_kwargs={
            "conditions": list(cfg.conditions), "resolution": resolution, "max_pixels": cfg.max_pixels,
            "s3": s3.to_dict(), "images_dir": images_dir, "run_token": uuid.uuid4().hex[:12],
        },
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        **pool,
    )
    meta = [row for table in ray.get(ds.to_arrow_refs()) for row in table.to_pylist()]
    return sorted(({"path": r["path"], "reason": r["reason"]} for r in meta if r["reason"]), key=lambda r: r["path"])


def _count_written(images_uri: str, s3: S3Settings, conditions: tuple[str, ...]) -> dict[str, int]:
    """Rows per condition, read back from what was written; an empty table still gets a (schema-only) part file."""
    import pyarrow.parquet as pq

    fs, path = storage.resolve(images_uri, s3)
    if not any(f.path.endswith(".parquet") for f in storage.list_files(images_uri, s3)):
        # Every file failed: a table with no rows, still readable with its schema.
        empty_fs, empty_path = storage.resolve(storage.join(images_uri, "part-empty.parquet"), s3)
        pq.write_table(BENIGN_SCHEMA.empty_table(), empty_path, filesystem=empty_fs)
    written = Counter(pq.read_table(path, filesystem=fs, columns=["condition"]).column("condition").to_pylist())
    return {condition: written.get(condition, 0) for condition in conditions}


def _summary(
    cfg: BenignConfig,
    resolution: int,
    n_files: int,
    rows: dict[str, int],
    unreadable: list[dict[str, str]],
    actors: int,
    seconds: float,
    run_seconds: float,
) -> dict[str, Any]:
    total = sum(rows.values())
    return {
        "real": cfg.real,
        "dest": cfg.dest,
        "source": "real",
        "splits": list(cfg.splits),
        "resolution": resolution,
        "conditions": list(cfg.conditions),
        "source_files": n_files,
        "images": n_files - len(unreadable),  # re-processed under every condition
        "rows": total,
        "rows_by_condition": rows,
        "unreadable": unreadable,
        "actors": actors,
        "seconds": round(seconds, 3),
        "reprocess_seconds": round(run_seconds, 3),
        "images_per_second": round(total / run_seconds, 1) if run_seconds > 0 else None,
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"benign summary for {summary['dest']} ({summary['resolution']}px): {summary['images']} of "
        f"{summary['source_files']} {'+'.join(summary['splits'])} reals under {len(summary['conditions'])} condition(s)"
    ]
    for condition, n in summary["rows_by_condition"].items():
        lines.append(f"  {condition:<17} {n:>6} images")
    for item in summary["unreadable"]:
        lines.append(f"  not re-processed {item['path']}: {item['reason']}")
    if summary["images_per_second"]:
        lines.append(
            f"  throughput {summary['images_per_second']} images/s on {summary['actors']} actor(s); {summary['seconds']} s in all"
        )
    return "\n".join(lines)
