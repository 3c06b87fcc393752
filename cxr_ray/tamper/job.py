"""`cxr-ray tamper`: edit held-out real X-rays with the tamper model, on Ray Data (issue 16).

Every real row of the chosen splits is edited once, in the direction its
class allows: a NORMAL image gets a pneumonia-like opacity ("inject"), a
PNEUMONIA image gets normal-looking lung over part of it ("remove"). The
region is a mask inside the image's lung fields (cxr_ray.tamper.lungs /
masks), drawn from the job's seed and the image's path, so a re-run makes the
same edits. The edited image is stored as the archive stores its files and
decoded by ingest's path (cxr_ray.data.archive), as an attacker who re-saves
an archive image would leave it, unless `storage_format` is "raw".

The output is an image table (the image schema, so every scorer reads it,
with `source` "fake": an edit is not the patient's image) plus the mask, the
direction, the class painted in and the original's path and sha256. The
patient id and split are the original's: a detector trained on train-split
edits never sees a test patient. The real table is only read: the output goes
to a separate destination, staged and published whole.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.data import schema
from cxr_ray.data.layout import CLASS_NAMES
from cxr_ray.storage import S3Settings

DIRECTIONS = {0: "inject", 1: "remove"}  # by the original's class: NORMAL gets a finding, PNEUMONIA loses one
STORAGE_FORMATS = ("archive", "raw")
SPLITS = ("train", "val", "test")
TAMPER_SCHEMA = (
    schema.IMAGE_SCHEMA.append(pa.field("mask", pa.binary(), nullable=False))  # 0/1 per pixel, row by row
    .append(pa.field("direction", pa.string(), nullable=False))
    .append(pa.field("wanted", pa.int64(), nullable=False))  # the class painted into the mask
    .append(pa.field("original_path", pa.string(), nullable=False))
    .append(pa.field("original_sha256", pa.string(), nullable=False))
    .append(pa.field("lung_method", pa.string(), nullable=False))
)
_READ_COLUMNS = ["image", "label", "class_name", "patient_id", "split", "path", "sha256"]
TAMPERED_PREFIX = "tampered://"  # an edit's path: tampered://{tamper run}/{original path}


def tampered_path(run: str, original: str) -> str:
    return f"{TAMPERED_PREFIX}{run}/{original}"


def original_of(path: str) -> str:
    """The original's path from an edit's (`tampered_path`); ValueError for any other path."""
    if not path.startswith(TAMPERED_PREFIX) or "/" not in path[len(TAMPERED_PREFIX) :]:
        raise ValueError(f"not a tampered image's path: {path!r}")
    return path[len(TAMPERED_PREFIX) :].split("/", 1)[1]


@dataclass(frozen=True)
class TamperConfig:
    """Which real rows to edit, with which tamper model, and where the edits go."""

    real: str  # ingested real table (path or s3://); only read
    model: str  # tamper-model run folder, checkpoint folder or state.pt
    dest: str
    splits: tuple[str, ...] = SPLITS
    storage_format: str = "archive"  # "archive": stored and decoded as the archive's reals; "raw": the model's pixels
    seed: int = 0
    batch_size: int = 64  # rows per actor call
    max_actors: int | None = None  # None: one per GPU, else CPUs - 1
    resources: dict | None = None  # what each actor asks of a node, and the pool's bounds (cxr_ray.resources)
    overwrite: bool = False

    def __post_init__(self) -> None:
        from cxr_ray.config import at_least, check_fields

        check_fields(self)
        object.__setattr__(self, "splits", tuple(self.splits))
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown or not self.splits:
            raise ConfigError(f"splits: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(SPLITS)}")
        if self.storage_format not in STORAGE_FORMATS:
            raise ConfigError(f"storage_format must be one of {', '.join(STORAGE_FORMATS)}, got {self.storage_format!r}")
        at_least(self, 0, "seed")
        at_least(self, 1, "batch_size", "max_actors")
        for key in ("real", "model", "dest"):
            if not getattr(self, key):
                raise ConfigError(f"{key} is required")


def keep_splits(batch: pa.Table, splits: list[str]) -> pa.Table:
    """Ray Data UDF: the rows of `splits`."""
    import pyarrow.compute as pc

    return batch.filter(pc.is_in(batch.column("split"), value_set=pa.array(splits, pa.string())))


def edit_rows(batch: dict[str, list[Any]], edited: np.ndarray, masks: np.ndarray, methods: list[str],
              files: list[bytes] | None, run: str) -> dict[str, list[Any]]:  # fmt: skip
    """TAMPER_SCHEMA columns for one batch of edits (`files`: the archive files the pixels were decoded from)."""
    out: dict[str, list[Any]] = {name: [] for name in TAMPER_SCHEMA.names}
    for i, image in enumerate(edited):
        label = int(batch["label"][i])
        pixels = image.tobytes()
        out["image"].append(pixels)
        out["height"].append(image.shape[0])
        out["width"].append(image.shape[1])
        out["label"].append(label)
        out["class_name"].append(batch["class_name"][i])
        out["patient_id"].append(batch["patient_id"][i])
        out["split"].append(batch["split"][i])
        out["source"].append("fake")
        out["sha256"].append(hashlib.sha256(pixels if files is None else files[i]).hexdigest())
        out["path"].append(tampered_path(run, batch["path"][i]))
        out["generator_run"].append(run)
        out["seed"].append(None)
        out["mask"].append(masks[i].astype(np.uint8).tobytes())
        out["direction"].append(DIRECTIONS[label])
        out["wanted"].append(1 - label)
        out["original_path"].append(batch["path"][i])
        out["original_sha256"].append(batch["sha256"][i])
        out["lung_method"].append(methods[i])
    return out


class Tamperer:
    """Ray Data actor: loads the tamper model once, then edits batches of real rows."""

    def __init__(self, model: str, s3: dict[str, Any] | None, seed: int, archive_format: dict[str, Any] | None) -> None:
        import torch

        from cxr_ray.data.archive import ArchiveFormat
        from cxr_ray.inference import pick_device
        from cxr_ray.tamper.state import inpainter_from_state, load_tamper_state

        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True  # the same edit wherever it runs
        self.device = pick_device()
        state = load_tamper_state(model, S3Settings.from_dict(s3))
        self.run = str(state["config"].get("name") or "tamper")
        self.inpainter = inpainter_from_state(state, self.device)
        self.seed = seed
        self.archive_format = None if archive_format is None else ArchiveFormat.from_dict(archive_format)

    def __call__(self, table: pa.Table) -> pa.Table:
        import torch

        from cxr_ray.pixels import to_input, to_uint8
        from cxr_ray.tamper.lungs import lung_fields
        from cxr_ray.tamper.masks import mask_seed, sample_mask

        batch = table.to_pydict()
        n = len(batch["image"])
        if n == 0:
            return pa.table({name: [] for name in TAMPER_SCHEMA.names}, schema=TAMPER_SCHEMA)
        side = int(round(len(batch["image"][0]) ** 0.5))
        originals = np.stack([np.frombuffer(b, np.uint8).reshape(side, side) for b in batch["image"]])
        fields = [lung_fields(image) for image in originals]
        masks = np.stack([sample_mask(lungs, mask_seed(self.seed, path)) for (lungs, _), path in zip(fields, batch["path"])])
        x = to_input(torch.from_numpy(originals).unsqueeze(1)).to(self.device)
        m = torch.from_numpy(masks.astype(np.float32)).unsqueeze(1).to(self.device)
        wanted = 1 - torch.as_tensor(batch["label"], dtype=torch.int64, device=self.device)
        with torch.no_grad():
            edited = to_uint8(self.inpainter(x, m, wanted))[:, 0].cpu().numpy()
        files = None
        if self.archive_format is not None:
            from cxr_ray.data.archive import store_as_archive

            edited, files = store_as_archive(edited, self.archive_format, side)
        columns = edit_rows(batch, edited, masks, [method for _, method in fields], files, self.run)
        return pa.table(columns, schema=TAMPER_SCHEMA)


def count_edits(images_uri: str, s3: S3Settings | None) -> dict[str, Any]:
    """Counts read back from what was written: per split and direction, lung-field methods, mask areas."""
    import pyarrow.parquet as pq

    fs, path = storage.resolve(images_uri, s3)
    table = pq.read_table(path, filesystem=fs, columns=["split", "direction", "lung_method", "mask"])
    by = Counter(zip(table.column("split").to_pylist(), table.column("direction").to_pylist()))
    areas = [np.frombuffer(m, np.uint8).mean() for m in table.column("mask").to_pylist()]
    nested: dict[str, dict[str, int]] = {}
    for (split, direction), count in sorted(by.items()):
        nested.setdefault(split, {})[direction] = count
    return {
        "total": table.num_rows,
        "by_split_direction": nested,
        "lung_methods": dict(Counter(table.column("lung_method").to_pylist())),
        "mask_area": {q: float(np.percentile(areas, p)) for q, p in (("p5", 5), ("p50", 50), ("p95", 95))} if areas else {},
    }


def run_tamper(
    cfg: TamperConfig, *, s3: S3Settings | None = None, log: Callable[[str], None] = print, address: str | None = None
) -> dict[str, Any]:
    """Edit every real row of cfg.splits into cfg.dest; returns the summary (also summary.json)."""
    from cxr_ray.data.archive import read_archive_format
    from cxr_ray.data.datasets import images_uri, require_complete, resolution_of
    from cxr_ray.resources import actor_pool_options, pool_size
    from cxr_ray.runtime import init_ray
    from cxr_ray.tamper.state import load_tamper_state, resolve_tamper_state_uri

    t0 = time.perf_counter()
    s3 = s3 or S3Settings.from_env()
    real = require_complete(cfg.real, s3)
    storage.check_separate(cfg.dest, (cfg.real, cfg.model), "input")  # never write over the originals or the model
    storage.check_destination(cfg.dest, s3, cfg.overwrite)
    state_uri = resolve_tamper_state_uri(cfg.model, s3)
    model_size = int(load_tamper_state(state_uri, s3)["inpainter"]["model_kwargs"]["image_size"])
    size = resolution_of(cfg.real, s3)
    if model_size != size:
        raise ConfigError(f"{cfg.model}: the tamper model edits {model_size} px images; {cfg.real} is {size} px")
    archive = read_archive_format(cfg.real, s3).to_dict() if cfg.storage_format == "archive" else None
    ray = init_ray(address)
    fs, path = storage.resolve(images_uri(real), s3)
    ds = ray.data.read_parquet(path, filesystem=fs).select_columns(_READ_COLUMNS)
    ds = ds.map_batches(keep_splits, batch_format="pyarrow", batch_size=None, fn_kwargs={"splits": list(cfg.splits)})
    pool = actor_pool_options(cfg.max_actors, cfg.resources)
    log(f"tamper: {', '.join(cfg.splits)} rows of {cfg.real} edited by {state_uri} on {pool_size(pool)} actor(s), "
        f"{'stored as the archive' if archive else 'raw'} -> {cfg.dest}")  # fmt: skip
    ds = ds.map_batches(
        Tamperer,
        fn_constructor_kwargs={"model": state_uri, "s3": s3.to_dict(), "seed": cfg.seed, "archive_format": archive},
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        **pool,
    )
    with storage.staged_output(cfg.dest, s3, cfg.overwrite) as staging:
        t_edit = time.perf_counter()
        out_fs, out_path = storage.resolve(storage.join(staging, schema.IMAGES_DIR), s3)
        ds.write_parquet(out_path, filesystem=out_fs)
        seconds = time.perf_counter() - t_edit
        counts = count_edits(storage.join(staging, schema.IMAGES_DIR), s3)
        summary = {
            "dest": cfg.dest, "source": "fake", "kind": "tampered", "real": cfg.real, "model": state_uri,
            "resolution": size, "splits": list(cfg.splits), "seed": cfg.seed, "storage_format": cfg.storage_format,
            "archive_format": archive, "rows": counts["total"], **{k: v for k, v in counts.items() if k != "total"},
            "actors": pool_size(pool), "seconds": round(time.perf_counter() - t0, 3), "edit_seconds": round(seconds, 3),
            "images_per_second": round(counts["total"] / seconds, 1) if seconds > 0 else None,
            "classes": list(CLASS_NAMES),
        }  # fmt: skip
        storage.write_json_atomic(storage.join(staging, schema.SUMMARY_FILE), summary, s3)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"tamper summary for {summary['dest']} ({summary['resolution']}px, seed {summary['seed']})"]
    for split, by_direction in summary["by_split_direction"].items():
        lines.append(f"  {split:<5} " + ", ".join(f"{d} {n}" for d, n in sorted(by_direction.items())))
    area = summary.get("mask_area") or {}
    if area:
        lines.append(f"  mask area (share of the image): median {area['p50']:.1%} (5-95%: {area['p5']:.1%}-{area['p95']:.1%})")
    lines.append(f"  lung fields: {', '.join(f'{m} {n}' for m, n in sorted(summary['lung_methods'].items()))}")
    lines.append(f"  storage: {summary['storage_format']}; {summary['images_per_second']} images/s on {summary['actors']} actor(s)")
    return "\n".join(lines)
