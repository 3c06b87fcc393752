"""Ray Data fake generation: DCGAN checkpoints -> a Parquet image table with the reals' schema.

Each generator checkpoint is loaded once per actor; the actors turn planned
(generator, class, seed, split) rows into images. An image's noise comes from
a `torch.Generator` seeded with that image's own seed and the generator runs
in eval mode on fixed-size micro-batches, so a seed gives the same bytes
whatever the batch size or the number of actors (on the same device type).

Two disjoint seed ranges per class keep the detector honest: the training
range is split into train and val (val = its last `val_fraction` seeds); the
test range gives held-out fakes (split `test`) that no detector ever trains
on. Pixels go through `pixels.to_uint8`, the inverse of `pixels.to_input`,
so reals and fakes share one pixel pipeline. The table is built in a staging
folder and published with `_SUCCESS` and `summary.json`, like ingest.

Storage format: "raw" keeps the generator's output as it is; "archive" stores
each fake as the archive stores its reals (`cxr_ray.data.archive`: resampled
to the archive's size, encoded in its format, decoded by ingest's decode path),
so reals and fakes reach a detector with the same processing history.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.data import schema
from cxr_ray.data.layout import CLASS_NAMES
from cxr_ray.resources import pool_size
from cxr_ray.storage import S3Settings, StorageError

TEST_SEED_START = 1_000_000
MIN_AGREEMENT = 0.9  # below this share of sampled files in one format, archive-format fakes get a warning
# Every generator forward sees exactly this many noise vectors (padded): the
# batch size a kernel sees can change its floating-point results, the seed alone must not.
MICRO_BATCH = 32
STORAGE_FORMATS = ("raw", "archive")


@dataclass(frozen=True)
class GenerateConfig:
    """Which generators, how many fakes per class from which seeds, and where to write them."""

    generators: tuple[str, ...]  # GAN run dirs, checkpoint dirs or state.pt files (path or s3://)
    dest: str
    train_seeds: tuple[int, int] = (0, 500)  # [start, end): the detector's train + val fakes per class
    test_seeds: tuple[int, int] = (TEST_SEED_START, TEST_SEED_START + 500)  # held-out test fakes per class
    val_fraction: float = 0.1  # share of the train seed range that becomes val
    batch_size: int = 64  # rows per actor call
    max_actors: int | None = None  # None: one per GPU, else CPUs - 1
    resources: dict | None = None  # what each actor asks of a node, and the pool's bounds (cxr_ray.resources)
    overwrite: bool = False
    storage_format: str = "raw"  # "raw": the generator's pixels; "archive": stored and decoded as the archive's reals
    archive_format: dict | None = None  # ArchiveFormat.to_dict() (e.g. read_archive_format(real table)); for "archive" only

    def __post_init__(self) -> None:
        from cxr_ray.config import check_fields

        check_fields(self)
        if not self.generators:
            raise ConfigError("generators: give at least one GAN run or checkpoint")
        for name in ("train_seeds", "test_seeds"):
            _check_seed_range(name, getattr(self, name))
        (a, b), (c, d) = self.train_seeds, self.test_seeds
        if a < d and c < b:
            raise ConfigError(
                f"train_seeds {list(self.train_seeds)} and test_seeds {list(self.test_seeds)} overlap: "
                "held-out test fakes must come from seeds the detector never trains on"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_actors is not None and self.max_actors < 1:
            raise ConfigError(f"max_actors must be at least 1, got {self.max_actors}")
        _check_storage(self.storage_format, self.archive_format)

    def split_ranges(self) -> dict[str, tuple[int, int]]:
        """[start, end) seed range of each split; val is the tail of the train range."""
        start, end = self.train_seeds
        n = end - start
        n_val = 0 if self.val_fraction == 0 else min(n - 1, max(1, round(n * self.val_fraction)))
        return {"train": (start, end - n_val), "val": (end - n_val, end), "test": tuple(self.test_seeds)}


def _check_seed_range(name: str, value: Any) -> None:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise ConfigError(f"{name} must be two integers [start, end), got {value!r}")
    start, end = value
    if not 0 <= start < end:
        raise ConfigError(f"{name} must satisfy 0 <= start < end, got {list(value)}")
    if name == "train_seeds" and end - start < 2:
        raise ConfigError(f"{name} needs at least 2 seeds (train and val), got {list(value)}")


def _check_storage(storage_format: str, archive_format: dict | None) -> None:
    from cxr_ray.data.archive import ArchiveFormat

    if storage_format not in STORAGE_FORMATS:
        raise ConfigError(f"storage_format must be one of {STORAGE_FORMATS}, got {storage_format!r}")
    if storage_format == "archive" and archive_format is None:
        raise ConfigError("storage_format 'archive' needs archive_format (read it from the real table: --archive-like)")
    if storage_format == "raw" and archive_format is not None:
        raise ConfigError("archive_format is given but storage_format is 'raw': set storage_format 'archive' or drop it")
    if archive_format is not None:
        ArchiveFormat.from_dict(archive_format)


# ---------------------------------------------------------------- generator checkpoints


@dataclass(frozen=True)
class GeneratorSpec:
    """What the driver learnt from one generator checkpoint."""

    source: str  # what the user gave
    state_uri: str  # the state.pt that is loaded
    run: str
    classes: tuple[str, ...]  # the classes it generates: one, or both for a conditional GAN
    conditional: bool
    image_size: int
    nz: int
    epoch: int


def _run_name(state: dict[str, Any], state_uri: str) -> str:
    """The GAN run's name from its config, else the folder above the checkpoint folder."""
    name = (state.get("config") or {}).get("name")
    if name:
        return str(name)
    parts = state_uri.rstrip("/").split("/")
    return parts[-3] if len(parts) >= 3 else parts[0]


def describe_generator(state: dict[str, Any], source: str, state_uri: str) -> GeneratorSpec:
    """Read what generation needs from a GAN state that `gan_state.load_gan_state` has checked.

    Format (cxr_ray.gan_state.build_gan_state):
    "generator": {"model_kwargs": {nz, ngf, nc, image_size, num_classes}, "model_state": ...},
    "config": GanConfig as a dict (class_name, conditional, name, ...), "class_names", "epoch", ...
    """
    try:
        kwargs = state["generator"]["model_kwargs"]
        config = state["config"]
        image_size, nz, num_classes = int(kwargs["image_size"]), int(kwargs["nz"]), int(kwargs.get("num_classes", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{state_uri}: DCGAN checkpoint lacks {exc}") from None
    class_names = tuple(state.get("class_names") or CLASS_NAMES)
    if tuple(class_names) != CLASS_NAMES:
        raise ConfigError(f"{state_uri}: generator classes {list(class_names)} differ from the study's {list(CLASS_NAMES)}")
    conditional = num_classes > 0
    if conditional:
        classes = CLASS_NAMES
    else:
        class_name = config.get("class_name")
        if class_name not in CLASS_NAMES:
            raise ConfigError(f"{state_uri}: generator class {class_name!r} is not one of {', '.join(CLASS_NAMES)}")
        classes = (class_name,)
    return GeneratorSpec(
        source=source,
        state_uri=state_uri,
        run=_run_name(state, state_uri),
        classes=classes,
        conditional=conditional,
        image_size=image_size,
        nz=nz,
        epoch=int(state.get("epoch", -1)),
    )


def load_generator(uri: str, s3: S3Settings | None = None, device: Any = "cpu") -> tuple[Any, GeneratorSpec]:
    """(Generator in eval mode, its GeneratorSpec) from a GAN run dir, checkpoint dir or state.pt."""
    from cxr_ray.gan_state import generator_from_state, load_gan_state, resolve_gan_state_uri

    state_uri = resolve_gan_state_uri(uri, s3)
    state = load_gan_state(state_uri, s3)
    spec = describe_generator(state, uri, state_uri)
    return generator_from_state(state, device), spec


def inspect_generators(uris: tuple[str, ...], s3: S3Settings | None) -> list[GeneratorSpec]:
    """Load each checkpoint once on the driver to check it; refuse mixed sizes and doubled classes."""
    from cxr_ray.checkpoint import CheckpointError

    specs = []
    for uri in uris:
        try:
            _, spec = load_generator(uri, s3)
        except (CheckpointError, StorageError) as exc:
            raise ConfigError(str(exc)) from None
        specs.append(spec)
    sizes = {s.image_size for s in specs}
    if len(sizes) > 1:
        raise ConfigError(f"generators make images of different sizes {sorted(sizes)}: {[s.source for s in specs]}")
    seen: dict[str, str] = {}
    for spec in specs:
        for class_name in spec.classes:
            if class_name in seen:
                raise ConfigError(f"two generators for class {class_name}: {seen[class_name]} and {spec.source}")
            seen[class_name] = spec.source
    return specs


# ---------------------------------------------------------------- images from seeds


def noise_for_seeds(seeds: list[int], nz: int) -> Any:
    """(N, nz) noise, row i drawn from a torch.Generator seeded with seeds[i] alone."""
    import torch

    rows = [torch.randn(nz, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
    return torch.stack(rows) if rows else torch.zeros((0, nz))


def images_from_seeds(generator: Any, seeds: list[int], labels: list[int] | None, device: Any = "cpu") -> Any:
    """uint8 (N, S, S) numpy images for the seeds (and class labels for a conditional generator).

    Forwards exactly MICRO_BATCH noise vectors at a time (zero-padded), in eval
    mode, so each image depends on its seed only.
    """
    import numpy as np
    import torch

    from cxr_ray.pixels import to_uint8

    size = int(generator.image_size)
    out = np.zeros((len(seeds), size, size), np.uint8)
    with torch.no_grad():
        for start in range(0, len(seeds), MICRO_BATCH):
            chunk = seeds[start : start + MICRO_BATCH]
            noise = torch.zeros((MICRO_BATCH, generator.nz))
            noise[: len(chunk)] = noise_for_seeds(chunk, generator.nz)
            label_tensor = None
            if labels is not None:
                label_tensor = torch.zeros(MICRO_BATCH, dtype=torch.int64)
                label_tensor[: len(chunk)] = torch.as_tensor(labels[start : start + len(chunk)], dtype=torch.int64)
                label_tensor = label_tensor.to(device)
            images = generator(noise.to(device), label_tensor).float()
            out[start : start + len(chunk)] = to_uint8(images[: len(chunk), 0]).cpu().numpy()
    return out


def fake_rows(
    spec: dict[str, Any], items: list[dict[str, Any]], images: Any, files: list[bytes] | None = None
) -> dict[str, list[Any]]:
    """Image-schema columns for generated images of one generator.

    `sha256` is the hash of the stored file, as ingest's is of a real's file:
    for raw fakes the pixels themselves, for archive fakes (`files` given) the
    encoded archive file the pixels were decoded from.
    """
    columns: dict[str, list[Any]] = defaultdict(list)
    for index, (item, image) in enumerate(zip(items, images)):
        pixels = image.tobytes()
        # A conditional GAN makes both classes under one run name: the class keeps ids unique.
        tag = f"{spec['run']}/{item['class_name']}" if spec["conditional"] else spec["run"]
        columns["image"].append(pixels)
        columns["height"].append(image.shape[0])
        columns["width"].append(image.shape[1])
        columns["label"].append(int(item["label"]))
        columns["class_name"].append(item["class_name"])
        columns["patient_id"].append(f"fake/{tag}/{item['seed']}")
        columns["split"].append(item["split"])
        columns["source"].append("fake")
        columns["sha256"].append(hashlib.sha256(pixels if files is None else files[index]).hexdigest())
        columns["path"].append(f"generated://{tag}/{item['seed']}")
        columns["generator_run"].append(spec["run"])
        columns["seed"].append(int(item["seed"]))
    return columns


class FakeImageMaker:
    """Ray Data actor: loads every generator once, then turns planned rows into image rows."""

    def __init__(
        self, generators: list[dict[str, Any]], s3: dict[str, Any] | None, archive_format: dict[str, Any] | None = None
    ) -> None:
        import torch

        from cxr_ray.data.archive import ArchiveFormat
        from cxr_ray.gan_state import generator_from_state, load_gan_state
        from cxr_ray.inference import pick_device

        # Same algorithms on every call: reproducible bytes on GPUs too.
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        settings = S3Settings.from_dict(s3)
        self.device = pick_device()
        self.specs = generators
        self.archive_format = None if archive_format is None else ArchiveFormat.from_dict(archive_format)  # None: raw
        self.generators = [generator_from_state(load_gan_state(g["state_uri"], settings), self.device) for g in generators]

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = batch.to_pylist()
        by_generator: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for item in items:
            by_generator[int(item["generator"])].append(item)
        columns: dict[str, list[Any]] = defaultdict(list)
        for index, group in sorted(by_generator.items()):
            spec, generator = self.specs[index], self.generators[index]
            labels = [int(i["label"]) for i in group] if spec["conditional"] else None
            images = images_from_seeds(generator, [int(i["seed"]) for i in group], labels, self.device)
            files = None
            if self.archive_format is not None:
                from cxr_ray.data.archive import store_as_archive

                images, files = store_as_archive(images, self.archive_format, int(images.shape[1]))
            for key, values in fake_rows(spec, group, images, files).items():
                columns[key].extend(values)
        return pa.table({name: columns[name] for name in schema.IMAGE_SCHEMA.names}, schema=schema.IMAGE_SCHEMA)


# ---------------------------------------------------------------- planning and running


def plan_items(specs: list[GeneratorSpec], cfg: GenerateConfig) -> list[dict[str, Any]]:
    """One row per image to make: generator index, class, label, seed, split."""
    items = []
    for index, spec in enumerate(specs):
        for class_name in spec.classes:
            for split, (start, end) in cfg.split_ranges().items():
                for seed in range(start, end):
                    items.append(
                        {"generator": index, "class_name": class_name, "label": CLASS_NAMES.index(class_name), "seed": seed, "split": split}
                    )
    return items


def count_by_split_class(images_uri: str, s3: S3Settings | None) -> dict[str, Any]:
    """Counts read back from what was written, not from what was planned."""
    import pyarrow.parquet as pq

    fs, path = storage.resolve(images_uri, s3)
    table = pq.read_table(path, filesystem=fs, columns=["split", "class_name"])
    counts = Counter(zip(table.column("split").to_pylist(), table.column("class_name").to_pylist()))
    nested: dict[str, dict[str, int]] = defaultdict(dict)
    for (split, class_name), n in sorted(counts.items()):
        nested[split][class_name] = n
    return {"total": table.num_rows, "by_split_class": dict(nested)}


def run_generate(
    cfg: GenerateConfig,
    *,
    s3: S3Settings | None = None,
    log: Callable[[str], None] = print,
    address: str | None = None,
) -> dict[str, Any]:
    """Generate the fakes of every generator's class(es) into cfg.dest; returns the summary (also summary.json).

    Generators and destination are checked before Ray starts.
    """
    from cxr_ray.resources import actor_pool_options
    from cxr_ray.runtime import init_ray

    t0 = time.perf_counter()
    s3 = s3 or S3Settings.from_env()
    # DEST must not hold or sit inside a GAN run: --overwrite would delete the checkpoints.
    storage.check_separate(cfg.dest, cfg.generators, "generator")
    storage.check_destination(cfg.dest, s3, cfg.overwrite)
    specs = inspect_generators(cfg.generators, s3)
    _check_archive_size(cfg, specs[0].image_size)
    items = plan_items(specs, cfg)
    ray = init_ray(address)
    pool = actor_pool_options(cfg.max_actors, cfg.resources)
    log(
        f"generate: {len(items)} fakes of {', '.join(c for s in specs for c in s.classes)} at {specs[0].image_size}px "
        f"on {pool_size(pool)} actor(s), {storage_label(cfg.storage_format, cfg.archive_format)} -> {cfg.dest}"
    )
    agreement = float((cfg.archive_format or {}).get("agreement", 1.0))
    if agreement < MIN_AGREEMENT:
        # A mixed archive has no one format: fakes stored in its most common one differ from most reals.
        log(f"generate: warning: only {agreement:.0%} of the archive's sampled files share the format the fakes are stored in")
    spec_dicts = [{"state_uri": s.state_uri, "run": s.run, "conditional": s.conditional} for s in specs]
    blocks = max(2 * pool_size(pool), math.ceil(len(items) / (4 * cfg.batch_size)))
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), blocks))
    ds = ds.map_batches(
        FakeImageMaker,
        fn_constructor_kwargs={"generators": spec_dicts, "s3": s3.to_dict(), "archive_format": cfg.archive_format},
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        **pool,
    )
    with storage.staged_output(cfg.dest, s3, cfg.overwrite) as staging:
        t_gen = time.perf_counter()
        fs, images_path = storage.resolve(storage.join(staging, schema.IMAGES_DIR), s3)
        ds.write_parquet(images_path, filesystem=fs)
        generate_seconds = time.perf_counter() - t_gen
        counts = count_by_split_class(storage.join(staging, schema.IMAGES_DIR), s3)
        summary = _summary(cfg, specs, counts, pool, time.perf_counter() - t0, generate_seconds)
        storage.write_json_atomic(storage.join(staging, schema.SUMMARY_FILE), summary, s3)
    return summary


def _check_archive_size(cfg: GenerateConfig, image_size: int) -> None:
    """Archive fakes are decoded by ingest's path, which makes only its supported sizes."""
    from cxr_ray.data.decode import SUPPORTED_RESOLUTIONS

    if cfg.storage_format == "archive" and image_size not in SUPPORTED_RESOLUTIONS:
        raise ConfigError(
            f"storage_format 'archive': the generators make {image_size}px images; ingest decodes to {SUPPORTED_RESOLUTIONS} only"
        )


def storage_label(storage_format: str, archive_format: dict[str, Any] | None) -> str:
    """'raw generator output', or 'stored as the archive: JPEG 224x224 RGB q75 4:2:0'."""
    if storage_format != "archive" or archive_format is None:
        return "raw generator output"
    from cxr_ray.data.archive import ArchiveFormat

    return f"stored as the archive: {ArchiveFormat(**archive_format).describe()}"


def _summary(
    cfg: GenerateConfig,
    specs: list[GeneratorSpec],
    counts: dict[str, Any],
    pool: dict[str, Any],
    seconds: float,
    generate_seconds: float,
) -> dict[str, Any]:
    return {
        "dest": cfg.dest,
        "source": "fake",
        "resolution": specs[0].image_size,
        "generators": [
            {"given": s.source, "state": s.state_uri, "run": s.run, "classes": list(s.classes), "epoch": s.epoch}
            for s in specs
        ],
        "seed_ranges": {split: list(r) for split, r in cfg.split_ranges().items()},
        "val_fraction": cfg.val_fraction,
        "rows": counts["total"],
        "by_split_class": counts["by_split_class"],
        "actors": pool_size(pool),
        "gpu_actors": bool(pool.get("num_gpus")),
        "micro_batch": MICRO_BATCH,
        "storage_format": cfg.storage_format,
        "archive_format": cfg.archive_format,
        "seconds": round(seconds, 3),
        "generate_seconds": round(generate_seconds, 3),
        "images_per_second": round(counts["total"] / generate_seconds, 1) if generate_seconds > 0 else None,
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"generate summary for {summary['dest']} ({summary['resolution']}px)"]
    for split in ("train", "val", "test"):
        counts = summary["by_split_class"].get(split, {})
        if counts:
            seeds = summary["seed_ranges"][split]
            parts = ", ".join(f"{c} {n}" for c, n in sorted(counts.items()))
            lines.append(f"  {split:<5} {sum(counts.values()):>6} fakes ({parts}); seeds [{seeds[0]}, {seeds[1]})")
    lines.append(f"  storage: {storage_label(summary.get('storage_format', 'raw'), summary.get('archive_format'))}")
    for g in summary["generators"]:
        lines.append(f"  generator {g['run']} ({', '.join(g['classes'])}, epoch {g['epoch']}): {g['state']}")
    if summary["images_per_second"]:
        lines.append(
            f"  throughput {summary['images_per_second']} images/s on {summary['actors']} actor(s); {summary['seconds']} s in all"
        )
    return "\n".join(lines)
