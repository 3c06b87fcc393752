"""Ray Data ingest: a Kaggle-layout folder (local or s3://) -> one Parquet image table.

Every file found is accounted for exactly once: as an image row, as a
byte-identical duplicate of a kept row, or in quarantine with a reason. The
output is built in a staging folder and published only when complete, so a
failed or repeated run never leaves a mix of old and new files.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import math
import time
import uuid
from collections import Counter, defaultdict
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cxr_ray import storage
from cxr_ray.config import IngestConfig
from cxr_ray.data import layout, schema
from cxr_ray.data.archive import ARCHIVE_FORMAT_KEY, ArchiveFormat, archive_format_of
from cxr_ray.data.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_to_gray
from cxr_ray.runtime import init_ray
from cxr_ray.storage import S3Settings, StorageError

# Which copy of a duplicated image to keep: one that sits in test must stay
# there (the published test set is fixed), so train copies are the ones dropped.
_SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}


class IngestError(RuntimeError):
    """Ingest cannot start; the message names the path or setting at fault. Nothing was written."""


def scan_source(src_uri: str, s3: S3Settings) -> list[layout.SourceFile]:
    """List every file under SRC and classify it by its place in the tree."""
    info = storage.file_info(src_uri, s3)
    if info.type == pafs.FileType.NotFound:
        raise IngestError(f"{src_uri}: source folder does not exist")
    if info.type != pafs.FileType.Directory:
        raise IngestError(f"{src_uri}: source is a file, not a folder")
    _, root = storage.resolve(src_uri, s3)
    files = []
    for fi in storage.list_files(src_uri, s3):
        rel = layout.relative(root, fi.path)
        # Unknown extensions still get a decode attempt: the quarantine reason
        # then says what the bytes really are, which beats guessing from a name.
        split, cls, problem = layout.classify_path(rel)
        files.append(layout.SourceFile(fi.path, rel, int(fi.size or 0), split, cls, problem))
    return files


def _checked_source_files(cfg: IngestConfig, s3: S3Settings) -> list[layout.SourceFile]:
    """SRC's files, once SRC's layout and DEST are known to be usable; IngestError naming the fault otherwise.

    A DEST that is, holds or lies inside SRC is refused first: `--overwrite`
    would delete the source, and a later run would read its own output back.
    """
    try:
        storage.check_separate(cfg.dest, [cfg.src], "source")
        files = scan_source(cfg.src, s3)
        layout.check_layout(cfg.src, files)
        storage.check_destination(cfg.dest, s3, cfg.overwrite)
    except (StorageError, layout.LayoutError) as exc:
        raise IngestError(str(exc)) from None
    return files


def decode_batch(
    batch: pa.Table, resolution: int, s3: dict[str, Any], src_uri: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> pa.Table:
    """Ray Data UDF: read, hash and decode one batch of planned files.

    Failures (an image over `max_pixels` too) become rows with ok=False and a
    reason instead of exceptions, so one bad file never fails the job.
    """
    uris = [storage.uri_for(src_uri, path) for path in batch.column("path").to_pylist()]
    decoded = [_decode_one(blob, resolution, max_pixels) for blob in storage.read_many(uris, S3Settings.from_dict(s3))]
    images, shas, ok, reasons = map(list, zip(*decoded)) if decoded else ([], [], [], [])
    n = len(uris)
    return pa.table(
        {
            "image": pa.array(images, pa.binary()),
            "height": pa.array([resolution] * n, pa.int32()),
            "width": pa.array([resolution] * n, pa.int32()),
            "label": batch.column("label").cast(pa.int64()),
            "class_name": batch.column("class_name"),
            "patient_id": batch.column("patient_id"),
            "split": batch.column("split"),
            "source": pa.array(["real"] * n, pa.string()),
            "sha256": pa.array(shas, pa.string()),
            "path": pa.array(uris, pa.string()),
            "generator_run": pa.nulls(n, pa.string()),
            "seed": pa.nulls(n, pa.int64()),
            "ok": pa.array(ok, pa.bool_()),
            "reason": pa.array(reasons, pa.string()),
            "size": batch.column("size").cast(pa.int64()),
        }
    )


def _decode_one(blob: bytes | OSError, resolution: int, max_pixels: int) -> tuple[bytes, str, bool, str]:
    """(pixels, sha256, ok, reason) of one file: an unreadable or undecodable file gets a reason, not an exception."""
    if isinstance(blob, Exception):
        return b"", "", False, f"unreadable: {str(blob).splitlines()[0] if str(blob) else type(blob).__name__}"
    sha = hashlib.sha256(blob).hexdigest()
    try:
        return decode_to_gray(blob, resolution, max_pixels).tobytes(), sha, True, ""
    except DecodeError as exc:
        return b"", sha, False, str(exc)


def find_duplicates(meta: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Byte-identical decoded files: keep one per hash (test first, then by path), report the rest."""
    by_hash: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in meta:
        if row["ok"]:
            by_hash[row["sha256"]].append(row)
    dups = []
    for sha, rows in by_hash.items():
        if len(rows) < 2:
            continue
        rows.sort(key=lambda r: (_SPLIT_PRIORITY[r["split"]], r["path"]))
        keep = rows[0]["path"]
        dups.extend({"path": r["path"], "duplicate_of": keep, "sha256": sha} for r in rows[1:])
    return sorted(dups, key=lambda d: d["path"])


def _write_table(table: pa.Table, uri: str, s3: S3Settings) -> None:
    fs, path = storage.resolve(uri, s3)
    pq.write_table(table, path, filesystem=fs)


def _num_blocks(n_files: int, batch_size: int) -> int:
    """One decode task per CPU, more only when a block would exceed `batch_size` x 8 files.

    Each task costs scheduling and a Parquet file; with this dataset's ~6k
    files the whole decode is about a second of CPU, so fewer, larger blocks
    are what keeps Ray's fixed costs small. A multiple of the CPU count keeps
    every CPU busy to the end.
    """
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    rounds = max(1, math.ceil(n_files / (cpus * batch_size * 8)))
    return max(1, min(n_files, cpus * rounds))


# Decoding a file costs about as much as decoding 14 kB more of JPEG (2-core
# VM: ~110 us per file + ~7.8 us per kB): blocks are balanced on this cost,
# so the block of large files does not finish last while the other CPU idles.
_PER_FILE_COST_BYTES = 14_000


def size_grouped_blocks(items: list[dict[str, Any]], n_blocks: int) -> list[list[dict[str, Any]]]:
    """Items in about `n_blocks` blocks of contiguous file sizes and equal decode cost; one size never spans two blocks.

    Byte-identical files have the same size, so every group of duplicates
    meets inside one block: each decode task can keep one copy of each and
    write its rows straight away, with no second pass over the pixels.
    """
    ordered = sorted(items, key=lambda item: (item["size"], item["path"]))
    total = sum(item["size"] + _PER_FILE_COST_BYTES for item in ordered)
    target = total / max(1, n_blocks)
    blocks: list[list[dict[str, Any]]] = [[]]
    cost = 0
    for item in ordered:
        current = blocks[-1]
        if cost >= target and item["size"] != current[-1]["size"]:
            blocks.append([])
            cost = 0
        blocks[-1].append(item)
        cost += item["size"] + _PER_FILE_COST_BYTES
    return [block for block in blocks if block]


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while ingest runs in the driver.

    A full collection walks the whole driver heap, which Ray's modules make
    large: ~100 ms on the 2-core VM, a sixth of the whole job, and it struck
    in one run in three. Ingest's own objects (file records, dicts, Arrow
    tables) hold no cycles; reference counting frees them either way.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def decode_dedupe_write(
    batch: pa.Table,
    resolution: int,
    s3: dict[str, Any],
    src_uri: str,
    images_dir: str,
    run_token: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> pa.Table:
    """Ray Data UDF: decode a block, drop duplicates within it, write its image rows; return its metadata.

    Rows are written to `images_dir` (the staging folder's images/) as one
    Parquet file per block, named by this run's token and the block's first
    path; only the small metadata columns travel back.
    """
    decoded = decode_batch(batch, resolution, s3, src_uri, max_pixels)
    duplicate_of = {
        d["path"]: d["duplicate_of"] for d in find_duplicates(decoded.select(["path", "sha256", "ok", "split"]).to_pylist())
    }
    decoded = decoded.append_column(
        "duplicate_of", pa.array([duplicate_of.get(p) for p in decoded.column("path").to_pylist()], pa.string())
    )
    rows = decoded.filter(_written(decoded)).select(schema.IMAGE_SCHEMA.names).cast(schema.IMAGE_SCHEMA)
    if rows.num_rows:
        name = hashlib.sha1(batch.column("path")[0].as_py().encode()).hexdigest()[:16]
        _write_table(rows, storage.join(images_dir, f"part-{run_token}-{name}.parquet"), S3Settings.from_dict(s3))
    return decoded.select(_META_COLUMNS)


# What the driver needs back per file: quarantine reasons, duplicates and the counts of written rows.
_META_COLUMNS = ["path", "sha256", "ok", "reason", "split", "size", "class_name", "patient_id", "duplicate_of"]


def _written(table: pa.Table) -> pa.Array:
    """Which rows become image rows: decoded, and not a duplicate of a kept one.

    The one rule for both the task that writes them and the driver that counts them.
    """
    return pc.and_(table.column("ok"), pc.is_null(table.column("duplicate_of")))


@contextlib.contextmanager
def _all_cpus_for_one_operator() -> Iterator[None]:
    """Let a one-operator Ray Data pipeline run a task on every CPU.

    Ray Data reserves part of the cluster per operator so that multi-stage
    pipelines cannot starve each other; on a small node that reservation
    leaves a lone map operator one task at a time (seen here: 2 decode tasks
    on 2 CPUs ran one after the other). Ingest's one pass (decode, dedupe,
    write) is a single operator over in-memory blocks, so nothing can starve.
    """
    import ray

    ctx = ray.data.DataContext.get_current()
    before = ctx.op_resource_reservation_enabled
    ctx.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        ctx.op_resource_reservation_enabled = before


def run_ingest(
    cfg: IngestConfig,
    *,
    s3: S3Settings | None = None,
    log: Callable[[str], None] = print,
    address: str | None = None,
) -> dict[str, Any]:
    """Ingest SRC into DEST; returns the summary that is also written as summary.json.

    Every check on SRC and DEST runs before Ray is started or joined, so a
    wrong path is reported in a moment and nothing is written.
    """
    with _cyclic_gc_paused():
        return _ingest(cfg, s3 or S3Settings.from_env(), log, address)


def _ingest(cfg: IngestConfig, s3: S3Settings, log: Callable[[str], None], address: str | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    files = _checked_source_files(cfg, s3)
    ray = init_ray(address)
    planned = layout.plan_splits(files, cfg.val_fraction, cfg.seed)
    log(f"ingest: {len(files)} files found under {cfg.src}; decoding {len(planned)} at {cfg.resolution}px")
    # Built in a private staging folder, published whole: nothing half-made is ever visible.
    with storage.staged_output(cfg.dest, s3, cfg.overwrite) as staging:
        images_uri = storage.join(staging, schema.IMAGES_DIR)
        images_fs, images_path = storage.resolve(images_uri, s3)
        images_fs.create_dir(images_path, recursive=True)
        t_decode = time.perf_counter()
        meta = _decode_dedupe_write_all(ray, _work_items(files, planned), cfg, s3, images_uri)
        decode_seconds = time.perf_counter() - t_decode
        quarantine, dups, rows = _accounting(meta, _misplaced(cfg.src, files))
        _write_table(pa.Table.from_pylist(quarantine, schema.QUARANTINE_SCHEMA), storage.join(staging, schema.QUARANTINE_FILE), s3)
        _write_table(pa.Table.from_pylist(dups, schema.DUPLICATE_SCHEMA), storage.join(staging, schema.DUPLICATES_FILE), s3)
        archive = _archive_format(meta, s3)
        summary = _summary(cfg, files, planned, rows, quarantine, dups, time.perf_counter() - t0, decode_seconds)
        summary[ARCHIVE_FORMAT_KEY] = archive.to_dict() if archive else None
        storage.write_json_atomic(storage.join(staging, schema.SUMMARY_FILE), summary, s3)
    return summary


# Files whose headers are read to learn the archive's format: enough to see a mixed archive, cheap on S3.
ARCHIVE_SAMPLE_FILES = 256


def _archive_format(meta: pa.Table | None, s3: S3Settings) -> ArchiveFormat | None:
    """How the source stores its images, from up to ARCHIVE_SAMPLE_FILES decoded files (None when none decoded).

    The pick is deterministic: the decoded files sorted by path, evenly spaced.
    Only headers and quantisation tables are parsed, on the driver.
    """
    if meta is None:
        return None
    paths = sorted(meta.filter(meta.column("ok")).column("path").to_pylist())
    if not paths:
        return None
    k = min(ARCHIVE_SAMPLE_FILES, len(paths))
    picks = [paths[i * len(paths) // k] for i in range(k)]
    try:
        return archive_format_of(storage.read_many(picks, s3))
    except ValueError:  # every sampled file failed its second read: record no format rather than fail the ingest
        return None


def _misplaced(src_uri: str, files: list[layout.SourceFile]) -> list[dict[str, Any]]:
    """Quarantine rows of the files whose place in the tree is wrong (they are never decoded)."""
    return [{"path": storage.uri_for(src_uri, f.path), "reason": f.problem, "size": f.size} for f in files if f.problem is not None]


def _work_items(files: list[layout.SourceFile], planned: list[layout.PlannedImage]) -> list[dict[str, Any]]:
    """One row per file to decode: its path and size, and the label, patient and split it was planned into."""
    size_by_path = {f.path: f.size for f in files}
    return [
        {
            "path": p.path,
            "size": size_by_path[p.path],
            "label": p.label,
            "class_name": p.class_name,
            "patient_id": p.patient_id,
            "split": p.split,
        }
        for p in planned
    ]


def _decode_dedupe_write_all(
    ray: Any, items: list[dict[str, Any]], cfg: IngestConfig, s3: S3Settings, images_uri: str
) -> pa.Table | None:
    """Run `decode_dedupe_write` over every block; the metadata of all files, or None when there was nothing to decode."""
    if not items:
        return None
    blocks = size_grouped_blocks(items, _num_blocks(len(items), cfg.batch_size))
    # One pass: read, hash, decode, dedupe and write in the same task per block.
    # Datasets keep the DataContext they were created under: create them inside.
    with _all_cpus_for_one_operator():
        ds = ray.data.from_arrow([pa.Table.from_pylist(block) for block in blocks]).map_batches(
            decode_dedupe_write,
            batch_size=None,  # one block = one batch = one Parquet file
            batch_format="pyarrow",
            fn_kwargs={
                "resolution": cfg.resolution, "s3": s3.to_dict(), "src_uri": cfg.src,
                "images_dir": storage.absolute(images_uri), "run_token": uuid.uuid4().hex[:12],
                "max_pixels": cfg.max_pixels,
            },
        )
        tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables) if tables else None


def _accounting(
    meta: pa.Table | None, misplaced: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, str]], dict[str, Any]]:
    """(quarantine, duplicates, row counts) from the tasks' metadata; misplaced files head the quarantine."""
    if meta is None:
        return misplaced, [], _empty_counts()
    quarantine = misplaced + meta.filter(pc.invert(meta.column("ok"))).select(["path", "reason", "size"]).to_pylist()
    # Duplicates always share a block, so each task found its groups whole.
    dups = sorted(
        meta.filter(pc.is_valid(meta.column("duplicate_of"))).select(["path", "duplicate_of", "sha256"]).to_pylist(),
        key=lambda d: d["path"],
    )
    return quarantine, dups, _count_rows(meta.filter(_written(meta)))


def _empty_counts() -> dict[str, Any]:
    return {"total": 0, "by_split_class": {}, "patients_by_split": {}}


def _count_rows(written: pa.Table) -> dict[str, Any]:
    """Counts per split and class, and patients per split, of the rows the tasks wrote."""
    by_class = written.group_by(["split", "class_name"]).aggregate([([], "count_all")])
    nested: dict[str, dict[str, int]] = defaultdict(dict)
    for row in sorted(by_class.to_pylist(), key=lambda r: (r["split"], r["class_name"])):
        nested[row["split"]][row["class_name"]] = row["count_all"]
    patients = written.group_by("split").aggregate([("patient_id", "count_distinct")]).to_pylist()
    return {
        "total": written.num_rows,
        "by_split_class": dict(nested),
        "patients_by_split": {r["split"]: r["patient_id_count_distinct"] for r in sorted(patients, key=lambda r: r["split"])},
    }


def _summary(
    cfg: IngestConfig,
    files: list[layout.SourceFile],
    planned: list[layout.PlannedImage],
    rows: dict[str, Any],
    quarantine: list[dict[str, Any]],
    dups: list[dict[str, str]],
    elapsed: float,
    decode_seconds: float,
) -> dict[str, Any]:
    reasons = Counter(q["reason"].split(":")[0] for q in quarantine)
    return {
        "src": cfg.src,
        "dest": cfg.dest,
        "resolution": cfg.resolution,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "max_pixels": cfg.max_pixels,
        "files_found": len(files),
        "rows": rows["total"],
        "quarantined": len(quarantine),
        "duplicates": len(dups),
        "duplicate_groups": len({d["sha256"] for d in dups}),
        "accounted": rows["total"] + len(quarantine) + len(dups) == len(files),
        "by_split_class": rows["by_split_class"],
        "patients_by_split": rows["patients_by_split"],
        "unparsed_patient_ids": sum(1 for p in planned if not p.patient_parsed),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "seconds": round(elapsed, 3),
        "decode_seconds": round(decode_seconds, 3),
        "images_per_second": round(len(planned) / decode_seconds, 1) if decode_seconds > 0 else None,
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"ingest summary for {summary['dest']} ({summary['resolution']}px)"]
    for split in ("train", "val", "test"):
        counts = summary["by_split_class"].get(split, {})
        if counts:
            parts = ", ".join(f"{cls} {n}" for cls, n in sorted(counts.items()))
            lines.append(
                f"  {split:<5} {sum(counts.values()):>6} images ({parts}); "
                f"{summary['patients_by_split'].get(split, 0)} patients"
            )
    lines.append(
        f"  files found {summary['files_found']} = rows {summary['rows']} + quarantined "
        f"{summary['quarantined']} + duplicates {summary['duplicates']}"
        + ("" if summary["accounted"] else "  (MISMATCH)")
    )
    for reason, n in summary["quarantine_reasons"].items():
        lines.append(f"  quarantined: {n} x {reason}")
    archive = summary.get(ARCHIVE_FORMAT_KEY)
    if archive:
        fmt = ArchiveFormat(**archive)  # as recorded: describing it needs no check that generate could write it
        lines.append(f"  archive format: {fmt.describe()} ({fmt.files_sampled} files, {fmt.agreement:.0%} agree)")
    if summary["images_per_second"]:
        lines.append(
            f"  throughput {summary['images_per_second']} images/s decode; {summary['seconds']} s in all"
        )
    return "\n".join(lines)
