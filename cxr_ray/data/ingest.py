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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cxr_ray import storage
from cxr_ray.config import IngestConfig
from cxr_ray.data import layout, schema
from cxr_ray.data.decode import DecodeError, decode_to_gray
from cxr_ray.runtime import init_ray
from cxr_ray.storage import S3Settings, StorageError

# Which copy of a duplicated image to keep: one that sits in test must stay
# there (the published test set is fixed), so train copies are the ones dropped.
_SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}


class IngestError(RuntimeError):
    """Ingest cannot start; the message names the path or setting at fault. Nothing was written."""


def _uri(src_uri: str, fs_path: str) -> str:
    return f"s3://{fs_path}" if storage.is_s3(src_uri) else fs_path


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


def _check_destination(cfg: IngestConfig) -> None:
    try:
        present = storage.exists(cfg.dest, cfg.s3)
    except StorageError as exc:
        raise IngestError(str(exc)) from None
    if present and not cfg.overwrite:
        raise IngestError(f"{cfg.dest}: already exists; pass --overwrite to replace it")
    if storage.is_s3(cfg.dest):
        bucket = cfg.dest[len("s3://") :].split("/")[0]
        try:
            if not storage.exists(f"s3://{bucket}", cfg.s3):
                raise IngestError(f"s3://{bucket}: destination bucket does not exist ({cfg.s3.redacted()})")
        except StorageError as exc:
            raise IngestError(str(exc)) from None


def decode_batch(batch: pa.Table, resolution: int, s3: dict[str, Any], src_uri: str) -> pa.Table:
    """Ray Data UDF: read, hash and decode one batch of planned files.

    Failures become rows with ok=False and a reason instead of exceptions, so
    one bad file never fails the job.
    """
    settings = S3Settings(**s3)
    is_s3 = storage.is_s3(src_uri)
    fs = storage.make_s3_filesystem(settings) if is_s3 else None
    paths = batch.column("path").to_pylist()

    def read(path: str) -> bytes | Exception:
        try:
            if fs is None:
                with open(path, "rb") as f:
                    return f.read()
            with fs.open_input_stream(path) as f:
                return f.read()
        except OSError as exc:
            return exc

    # S3 reads are latency-bound: overlap them; local reads are cheap enough serially.
    if is_s3:
        with ThreadPoolExecutor(max_workers=16) as pool:
            blobs = list(pool.map(read, paths))
    else:
        blobs = [read(p) for p in paths]

    images: list[bytes] = []
    shas: list[str] = []
    ok: list[bool] = []
    reasons: list[str] = []
    for blob in blobs:
        if isinstance(blob, Exception):
            images.append(b"")
            shas.append("")
            ok.append(False)
            reasons.append(f"unreadable: {str(blob).splitlines()[0] if str(blob) else type(blob).__name__}")
            continue
        shas.append(hashlib.sha256(blob).hexdigest())
        try:
            images.append(decode_to_gray(blob, resolution).tobytes())
            ok.append(True)
            reasons.append("")
        except DecodeError as exc:
            images.append(b"")
            ok.append(False)
            reasons.append(str(exc))
    n = len(paths)
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
            "path": pa.array([_uri(src_uri, p) for p in paths], pa.string()),
            "generator_run": pa.nulls(n, pa.string()),
            "seed": pa.nulls(n, pa.int64()),
            "ok": pa.array(ok, pa.bool_()),
            "reason": pa.array(reasons, pa.string()),
            "size": batch.column("size").cast(pa.int64()),
        }
    )


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
    batch: pa.Table, resolution: int, s3: dict[str, Any], src_uri: str, images_dir: str, run_token: str
) -> pa.Table:
    """Ray Data UDF: decode a block, drop duplicates within it, write its image rows; return its metadata.

    Rows are written to `images_dir` (the staging folder's images/) as one
    Parquet file per block, named by this run's token and the block's first
    path; only the small metadata columns travel back.
    """
    decoded = decode_batch(batch, resolution, s3, src_uri)
    duplicate_of = {
        d["path"]: d["duplicate_of"] for d in find_duplicates(decoded.select(["path", "sha256", "ok", "split"]).to_pylist())
    }
    decoded = decoded.append_column(
        "duplicate_of", pa.array([duplicate_of.get(p) for p in decoded.column("path").to_pylist()], pa.string())
    )
    rows = decoded.filter(_written(decoded)).select(schema.IMAGE_SCHEMA.names).cast(schema.IMAGE_SCHEMA)
    if rows.num_rows:
        settings = S3Settings(**s3)
        name = hashlib.sha1(batch.column("path")[0].as_py().encode()).hexdigest()[:16]
        _write_table(rows, storage.join(images_dir, f"part-{run_token}-{name}.parquet"), settings)
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


def run_ingest(cfg: IngestConfig, *, log=print, address: str | None = None) -> dict[str, Any]:
    """Ingest SRC into DEST; returns the summary that is also written as summary.json.

    Every check on SRC and DEST runs before Ray is started or joined, so a
    wrong path is reported in a moment and nothing is written.
    """
    with _cyclic_gc_paused():
        return _ingest(cfg, log, address)


def _ingest(cfg: IngestConfig, log, address: str | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        files = scan_source(cfg.src, cfg.s3)
    except StorageError as exc:
        raise IngestError(str(exc)) from None
    try:
        layout.check_layout(cfg.src, files)
    except layout.LayoutError as exc:
        raise IngestError(str(exc)) from None
    _check_destination(cfg)
    ray = init_ray(address)

    misplaced = [
        {"path": _uri(cfg.src, f.path), "reason": f.problem, "size": f.size} for f in files if f.problem is not None
    ]
    planned = layout.plan_splits(files, cfg.val_fraction, cfg.seed)
    log(f"ingest: {len(files)} files found under {cfg.src}; decoding {len(planned)} at {cfg.resolution}px")

    quarantine = list(misplaced)
    dups: list[dict[str, str]] = []
    written = None
    # Built in a private staging folder, published whole: nothing half-made is ever visible.
    with storage.staged_output(cfg.dest, cfg.s3, cfg.overwrite) as staging:
        images_uri = storage.join(staging, schema.IMAGES_DIR)
        images_fs, images_path = storage.resolve(images_uri, cfg.s3)
        images_fs.create_dir(images_path, recursive=True)
        t_decode = time.perf_counter()
        if planned:
            size_by_path = {f.path: f.size for f in files}
            items = [
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
            blocks = size_grouped_blocks(items, _num_blocks(len(items), cfg.batch_size))
            # One pass: read, hash, decode, dedupe and write in the same task per block.
            # Datasets keep the DataContext they were created under: create them inside.
            with _all_cpus_for_one_operator():
                ds = ray.data.from_arrow([pa.Table.from_pylist(block) for block in blocks]).map_batches(
                    decode_dedupe_write,
                    batch_size=None,  # one block = one batch = one Parquet file
                    batch_format="pyarrow",
                    fn_kwargs={
                        "resolution": cfg.resolution, "s3": cfg.s3.to_dict(), "src_uri": cfg.src,
                        "images_dir": storage.absolute(images_uri), "run_token": uuid.uuid4().hex[:12],
                    },
                )
                tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
            if tables:
                meta = pa.concat_tables(tables)
                quarantine.extend(
                    meta.filter(pc.invert(meta.column("ok"))).select(["path", "reason", "size"]).to_pylist()
                )
                # Duplicates always share a block, so each task found its groups whole.
                dups = sorted(
                    meta.filter(pc.is_valid(meta.column("duplicate_of")))
                    .select(["path", "duplicate_of", "sha256"])
                    .to_pylist(),
                    key=lambda d: d["path"],
                )
                written = meta.filter(_written(meta))
        decode_seconds = time.perf_counter() - t_decode
        rows = _count_rows(written) if written is not None else _empty_counts()
        _write_table(pa.Table.from_pylist(quarantine, schema.QUARANTINE_SCHEMA), storage.join(staging, schema.QUARANTINE_FILE), cfg.s3)
        _write_table(pa.Table.from_pylist(dups, schema.DUPLICATE_SCHEMA), storage.join(staging, schema.DUPLICATES_FILE), cfg.s3)
        elapsed = time.perf_counter() - t0
        summary = _summary(cfg, files, planned, rows, quarantine, dups, elapsed, decode_seconds)
        storage.write_json_atomic(storage.join(staging, schema.SUMMARY_FILE), summary, cfg.s3)
    return summary


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
    if summary["images_per_second"]:
        lines.append(
            f"  throughput {summary['images_per_second']} images/s decode; {summary['seconds']} s in all"
        )
    return "\n".join(lines)
