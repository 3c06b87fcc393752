"""Generators on Ray Train (DDP): one per class as the study did, or one class-conditional generator.

Three families (cxr_ray.models.generators): the DCGAN, the SNGAN (hinge loss,
spectrally normalised critic) and a convolutional VAE; one training path,
one step per family (cxr_ray.train.gan_steps).

The driver (`train_gan`) reads the ingested table's train split only (never
val or test), keeps one class (or both for the conditional GAN) and hands it
to a TorchTrainer; every worker holds its shard as one uint8 tensor on its
device (`loop.load_shard`). Each epoch rank 0 writes a fixed-noise 8x8 sample
grid and the loss history into the run's storage and attaches a plain-data
checkpoint (both networks, both Adam states, history; format and readers in
`cxr_ray.gan_state`); a restarted worker group or a re-run with the same name
continues from it.

DDP and BatchNorm -- the decisions, and why:

* One DDP forward of D per backward. The textbook GAN step calls D twice
  (real, then fake) before one backward. Under DDP every forward re-broadcasts
  rank 0's BN buffers in place; in older torch that broke the backward
  ("modified by an inplace operation", pytorch#22095). torch 2.14 no longer
  raises (the broadcast runs under `_unsafe_preserve_version_counter`; two
  forwards then one backward did run in a 2-rank gloo check here), but the
  second broadcast still overwrites, on the other ranks, the running stats
  the first forward just updated, and each extra DDP forward is one more
  broadcast per step.
  `RealFakeDiscriminator` runs real and fake through D inside *one* DDP
  forward, as two separate BN batches: plain concatenation would also be one
  forward, but would normalise real and fake with shared batch statistics,
  which the DCGAN recipe avoids (all-real / all-fake batches).
* Generator step: D's parameters are frozen and the *unwrapped* D is called,
  so D's DDP wrapper sees no forward, no buffer broadcast and no gradient
  all-reduce it would throw away; only G's gradients are all-reduced.
* Buffers: `forward_sync_buffers=False` (the torch 2.14 name of
  `broadcast_buffers=False`) on both networks. Each rank normalises with its
  own batch, exactly the single-GPU DCGAN with batch 128, and at the end of
  every epoch the BN running statistics are averaged over ranks, so both
  ranks (and the checkpoint) hold identical buffers that reflect every shard,
  not rank 0's alone. Init still broadcasts rank 0's weights and buffers.
* `sync_bn=True` converts BN to SyncBatchNorm (batch statistics over the
  global batch; for small per-GPU batches). torch supports it on GPUs only.
* The VAE has no real/fake pass: encoder and decoder are both DDP-wrapped and
  run one forward each per backward of the one ELBO loss; both optimizers step.
  The SNGAN's critic has no BatchNorm; its spectral-norm power-iteration
  vectors are buffers updated deterministically from the (identical) weights,
  so the replicas' buffers stay identical without a broadcast.
* Samples are drawn in eval mode (running statistics): no side effect on the
  training state, no collective (works with SyncBatchNorm on rank 0 alone),
  and a fake does not depend on which other fakes share its batch.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from cxr_ray import resources, storage
from cxr_ray.config import ConfigError, config_hash, from_dict, to_dict
from cxr_ray.data.layout import CLASS_NAMES
from cxr_ray.filenames import GAN_CONFIG_FILE, GAN_LOSSES_FILE, GAN_SUMMARY_FILE, SAMPLES_DIR
from cxr_ray.gan_state import GRID_SIDE, build_gan_state, fixed_noise
from cxr_ray.models.dcgan import SUPPORTED_IMAGE_SIZES
from cxr_ray.models.generators import DEFAULT_FAMILY, GENERATOR_FAMILIES, build_family
from cxr_ray.pixels import autocast, to_input
from cxr_ray.storage import S3Settings
# StepModels, RealFakeDiscriminator and frozen are re-exported for benchmarks/gan_throughput.py and tests.
from cxr_ray.train.gan_steps import STEPS, AmpFactory, RealFakeDiscriminator, StepModels, dcgan_step, frozen  # noqa: F401

train_step = dcgan_step  # the DCGAN step under its old name (benchmarks/gan_throughput.py)

CLASS_CHOICES = (*CLASS_NAMES, "all")

# Fields that define the training trajectory: they name the run, and a re-run
# under that name must agree on them. Epochs, workers, storage and fault
# handling may change between attempts (e.g. to extend a run). `family` joins them only when it is not
# "dcgan", so every DCGAN run keeps the name and config hash it had before families existed.
IDENTITY_FIELDS = (
    "data", "class_name", "conditional", "image_size", "batch_size", "lr", "beta1", "nz", "ngf", "ndf", "seed", "sync_bn",
)


@dataclass(frozen=True)
class GanConfig:
    """One generator training run: a class (or all, conditional) of an ingested table's train split.

    `family`: dcgan, sngan (hinge loss; Miyato et al. used beta1 = 0.0,
    cxr_ray.models.sngan.RECOMMENDED_BETA1) or vae (lr and beta1 drive both
    encoder and decoder Adams alike).
    """

    data: str  # ingested image table (path or s3://)
    storage: str = "runs/gan"  # runs root: the run lives in {storage}/{name}
    class_name: str = "NORMAL"  # NORMAL / PNEUMONIA, or "all" for the conditional GAN
    conditional: bool = False
    family: str = DEFAULT_FAMILY  # generator family, see cxr_ray.models.generators
    image_size: int | None = None  # None: the table's resolution
    epochs: int = 25
    batch_size: int = 128  # per worker
    lr: float = 2e-4
    beta1: float = 0.5
    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    num_workers: int = 2
    use_gpu: bool | None = None  # None: as `resources` declares ("auto": GPUs when the cluster has them)
    resources: dict | None = None  # what each worker asks of a node (cxr_ray.resources); None: "auto"
    name: str | None = None  # None: derived from class and config hash (stable, resumable)
    seed: int = 0
    max_failures: int = 2
    sync_bn: bool = False
    inject_failure: dict | None = None  # test hook, see loop.maybe_inject_failure

    def __post_init__(self) -> None:
        from cxr_ray.config import at_least, check_fields, check_name

        check_fields(self)
        resources.of(self.resources)
        at_least(self, 0, "seed")
        if self.family not in GENERATOR_FAMILIES:
            raise ConfigError(f"family must be one of {', '.join(GENERATOR_FAMILIES)}, got {self.family!r}")
        if self.class_name not in CLASS_CHOICES:
            raise ConfigError(f"class_name must be one of {', '.join(CLASS_CHOICES)}, got {self.class_name!r}")
        if self.conditional != (self.class_name == "all"):
            raise ConfigError("a conditional GAN trains on class_name 'all'; a per-class GAN on NORMAL or PNEUMONIA")
        if self.image_size is not None and self.image_size not in SUPPORTED_IMAGE_SIZES:
            raise ConfigError(f"image_size must be one of {SUPPORTED_IMAGE_SIZES} for the generators, got {self.image_size}")
        for field_name in ("epochs", "batch_size", "nz", "ngf", "ndf", "num_workers"):
            if getattr(self, field_name) < 1:
                raise ConfigError(f"{field_name} must be >= 1, got {getattr(self, field_name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.beta1 < 1.0:
            raise ConfigError(f"beta1 must be in [0, 1), got {self.beta1}")
        if self.max_failures < 0:
            raise ConfigError(f"max_failures must be >= 0, got {self.max_failures}")
        check_name("name", self.name)

    @property
    def num_classes(self) -> int:
        return len(CLASS_NAMES) if self.conditional else 0

    def identity(self) -> dict[str, Any]:
        """The identity fields, plus `family` unless it is the DCGAN (whose identity predates families)."""
        identity = {key: getattr(self, key) for key in IDENTITY_FIELDS}
        if self.family != DEFAULT_FAMILY:
            identity["family"] = self.family
        return identity

    def run_name(self) -> str:
        """The given name, else `{family}-{class}-{size}px-{hash of the identity}`; never a timestamp."""
        if self.name:
            return self.name
        return f"{self.family}-{self.class_name.lower()}-{self.image_size}px-{config_hash(self.identity())}"

    def stage_config(self) -> dict[str, Any]:
        """All fields (as `to_dict`), without `family` for a DCGAN: for digests that predate families."""
        fields = to_dict(self)
        if self.family == DEFAULT_FAMILY:
            del fields["family"]
        return fields


# ---------------------------------------------------------------- models, samples, optimizers


@torch.no_grad()
def sample(generator: nn.Module, noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Images in [-1, 1] from a generator in eval mode (running BN statistics); restores its mode."""
    was_training = generator.training
    generator.eval()
    try:
        return generator(noise, labels).float()
    finally:
        generator.train(was_training)


def grid_png(images: torch.Tensor) -> bytes:
    """(64, 1, H, W) images in [-1, 1] -> an 8x8 grayscale PNG with 2 px gaps."""
    from cxr_ray import grids

    return grids.png(images, nrow=GRID_SIDE)


def make_optimizers(cfg: GanConfig, generator: nn.Module, discriminator: nn.Module) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    betas = (cfg.beta1, 0.999)
    return (
        torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=betas),
        torch.optim.Adam(discriminator.parameters(), lr=cfg.lr, betas=betas),
    )


# ---------------------------------------------------------------- one epoch


def train_epoch(
    models: StepModels,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    batch_size: int,
    steps: int,
    nz: int,
    order_gen: torch.Generator,
    amp: AmpFactory,
    family: str = DEFAULT_FAMILY,
) -> dict[str, float]:
    """`steps` steps of the family's step (cxr_ray.train.gan_steps) over a fresh permutation of this worker's
    images; returns local means."""
    from cxr_ray.train.loop import batches

    sums = {key: torch.zeros((), device=images.device) for key in ("loss_d", "loss_g", "d_real", "d_fake")}
    for index in batches(len(images), batch_size, steps, order_gen):
        index = index.to(images.device)
        step_labels = labels[index] if labels is not None else None
        out = STEPS[family](models, to_input(images[index]), step_labels, nz, amp)
        for key in sums:
            sums[key] += out[key].float()
    # One host sync per epoch, not per step.
    return {key: float(value) / max(steps, 1) for key, value in sums.items()}


# ---------------------------------------------------------------- distributed helpers


def _collective_device(device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_collective_device(device))
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def bn_modules(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def average_bn_running_stats(module: nn.Module) -> None:
    """Average BN running mean/var over ranks: identical buffers everywhere, reflecting every shard."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for bn in bn_modules(module):
        for buffer in (bn.running_mean, bn.running_var):
            if buffer is None:
                continue
            on = buffer.to(_collective_device(buffer.device))
            dist.all_reduce(on)
            buffer.copy_(on / dist.get_world_size())


def tensor_digest(tensors: Iterator[tuple[str, torch.Tensor]]) -> str:
    """sha256 over names and exact bytes: equal digests mean bitwise-equal tensors."""
    h = hashlib.sha256()
    for name, value in tensors:
        h.update(name.encode())
        h.update(value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def digests_by_rank(module: nn.Module) -> dict[str, list[str]]:
    """Each rank's parameter and buffer digests, gathered so rank 0 can report every rank's own value."""
    mine = {
        "params": tensor_digest(iter(module.named_parameters())),
        "buffers": tensor_digest(iter(module.named_buffers())),
    }
    if dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
    else:
        gathered = [mine]
    return {key: [g[key] for g in gathered] for key in mine}


# ---------------------------------------------------------------- the per-worker function


def _worker_config(config: dict[str, Any]) -> tuple[GanConfig, bool, S3Settings]:
    """The GanConfig, GPU flag and S3 settings that `launch.run_trainer` put into the loop config."""
    from cxr_ray.train.launch import worker_s3

    plain = {k: v for k, v in config.items() if not k.startswith("_")}
    return from_dict(GanConfig, plain), bool(config.get("_use_gpu")), worker_s3(config)


def _build_models(cfg: GanConfig, state: dict[str, Any] | None, device: torch.device) -> StepModels:
    import ray.train.torch

    generator, discriminator = build_family(cfg.family, cfg.image_size, cfg.nz, cfg.ngf, cfg.ndf, cfg.num_classes)
    if state is not None:
        generator.load_state_dict(state["generator"]["model_state"])
        discriminator.load_state_dict(state["discriminator"]["model_state"])
    if cfg.sync_bn:
        generator = nn.SyncBatchNorm.convert_sync_batchnorm(generator)
        discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)
    ddp_kwargs = {"forward_sync_buffers": False}
    generator_ddp = ray.train.torch.prepare_model(generator, parallel_strategy_kwargs=ddp_kwargs)
    # GANs: D sees real and fake in one DDP forward; the VAE's encoder is called directly, once per step.
    critic = discriminator if cfg.family == "vae" else RealFakeDiscriminator(discriminator)
    real_fake_ddp = ray.train.torch.prepare_model(critic, parallel_strategy_kwargs=ddp_kwargs)
    # prepare_model moved the modules in place; the optimizers must see the moved parameters.
    optimizer_g, optimizer_d = make_optimizers(cfg, generator, discriminator)
    if state is not None:
        optimizer_g.load_state_dict(state["optimizer_g"])
        optimizer_d.load_state_dict(state["optimizer_d"])
    return StepModels(generator_ddp, real_fake_ddp, discriminator, optimizer_g, optimizer_d)


@dataclass(frozen=True)
class TrainShard:
    """This worker's train images on its device, and the batch plan every rank agrees on."""

    images: torch.Tensor  # uint8 (N, 1, H, W)
    labels: torch.Tensor | None  # the conditional GAN's class labels; None for a per-class GAN
    batch_size: int
    steps: int  # per epoch: the same on every rank, so DDP's collectives pair up


def load_train_shard(cfg: GanConfig, device: torch.device, world_size: int) -> TrainShard:
    from cxr_ray.train.loop import agree_on_count, load_shard

    images, targets = load_shard("train", device)
    n_min = agree_on_count(len(images), device, "min")
    if n_min == 0:
        raise RuntimeError(f"a worker received no training images ({world_size} workers): use fewer workers")
    batch_size = min(cfg.batch_size, n_min)  # tiny tables: one smaller batch rather than none
    return TrainShard(images, targets if cfg.conditional else None, batch_size, n_min // batch_size)


def _epoch_seed(cfg: GanConfig, epoch: int, rank: int) -> int:
    # Seeds depend on (seed, epoch, rank) only, so a resumed attempt draws what an uninterrupted one would have.
    return (cfg.seed * 1_000_003 + epoch * 1009 + rank) % 2**31


def run_epoch(cfg: GanConfig, models: StepModels, shard: TrainShard, epoch: int, device: torch.device) -> dict[str, Any]:
    """Epoch `epoch` on every rank, then BN statistics and losses averaged over ranks: losses and throughput."""
    from cxr_ray.train.loop import world

    rank, world_size = world()
    torch.manual_seed(_epoch_seed(cfg, epoch, rank))
    order_gen = torch.Generator().manual_seed(_epoch_seed(cfg, epoch, rank))
    t0 = time.perf_counter()
    amp = lambda: autocast(device)  # noqa: E731
    local = train_epoch(models, shard.images, shard.labels, shard.batch_size, shard.steps, cfg.nz, order_gen, amp, cfg.family)
    if not cfg.sync_bn:
        average_bn_running_stats(models.generator)
        average_bn_running_stats(models.discriminator)
    losses = mean_over_ranks(local, device)
    seconds = time.perf_counter() - t0
    n_images = shard.steps * shard.batch_size * world_size
    return {
        "epoch": epoch + 1,
        **losses,
        "seconds": seconds,
        "images": n_images,
        "images_per_s": n_images / seconds if seconds > 0 else 0.0,
    }


def replica_facts(models: StepModels, start_epoch: int, world_size: int) -> dict[str, Any]:
    """How this epoch ran (attempt, world, threads) and every rank's weight digests (a collective)."""
    return {
        "attempt_start_epoch": start_epoch,
        "world_size": world_size,
        "torch_threads": torch.get_num_threads(),
        # Every rank's own digest: equal across ranks <=> DDP kept the replicas bitwise identical.
        "g_digests": digests_by_rank(models.generator),
        "d_digests": digests_by_rank(models.discriminator),
    }


def _write_grid(cfg: GanConfig, run_uri: str, epoch: int, generator: nn.Module, device: torch.device, s3: S3Settings) -> None:
    noise, labels = fixed_noise(cfg)
    images = sample(generator, noise.to(device), labels.to(device) if labels is not None else None)
    storage.write_bytes_atomic(storage.join(run_uri, SAMPLES_DIR, f"epoch_{epoch:03d}.png"), grid_png(images), s3)


def publish_epoch(
    cfg: GanConfig, run_uri: str, models: StepModels, history: list[dict[str, Any]], device: torch.device, s3: S3Settings
) -> dict[str, Any]:
    """Rank 0 after an epoch: write the sample grid and the loss history; return the checkpoint state to attach."""
    epoch = int(history[-1]["epoch"])
    _write_grid(cfg, run_uri, epoch, models.generator, device, s3)
    storage.write_json_atomic(storage.join(run_uri, GAN_LOSSES_FILE), {"run": cfg.run_name(), "epochs": history}, s3)
    return build_gan_state(cfg, epoch, models.generator, models.discriminator, models.optimizer_g, models.optimizer_d, history)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: restore, then per epoch train, sync BN stats, write grid + losses (rank 0), report."""
    from cxr_ray.train import loop
    from cxr_ray.train.launch import report_epoch, resume_state

    cfg, use_gpu, s3 = _worker_config(config)
    rank, world_size = loop.world()
    device = loop.device_for_worker(use_gpu)
    run_uri = storage.join(cfg.storage, cfg.run_name())

    state = resume_state(config)
    start_epoch = int(state["epoch"]) if state else 0
    history: list[dict[str, Any]] = list(state["history"]) if state else []

    torch.manual_seed(cfg.seed)  # identical init everywhere (DDP also broadcasts rank 0's)
    models = _build_models(cfg, state, device)
    shard = load_train_shard(cfg, device, world_size)
    if rank == 0 and start_epoch == 0:
        _write_grid(cfg, run_uri, 0, models.generator, device, s3)  # the untrained generator, for comparison

    for epoch in range(start_epoch, cfg.epochs):
        loop.maybe_inject_failure(config, epoch, rank)
        entry = {**run_epoch(cfg, models, shard, epoch, device), **replica_facts(models, start_epoch, world_size)}
        history.append(entry)
        metrics = {**entry, "finite": all(math.isfinite(entry[k]) for k in ("loss_d", "loss_g"))}
        save = publish_epoch(cfg, run_uri, models, history, device, s3) if rank == 0 else None
        report_epoch(metrics, save)


# ---------------------------------------------------------------- driver


def keep_class(batch: Any, label: int) -> Any:
    """Ray Data UDF (pyarrow batches): keep one class."""
    import pyarrow.compute as pc

    return batch.filter(pc.equal(batch.column("target"), label))


def count_train_images(cfg: GanConfig, s3: S3Settings | None) -> int:
    """Train rows of the class (or all), read from the label/split columns only."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from cxr_ray.data.datasets import images_uri

    fs, path = storage.resolve(images_uri(storage.published(cfg.data, s3)), s3)
    expr = pc.field("split") == "train"
    if not cfg.conditional:
        expr = expr & (pc.field("label") == CLASS_NAMES.index(cfg.class_name))
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows(filter=expr)


def resolve_config(cfg: GanConfig, s3: S3Settings | None) -> GanConfig:
    """Fill image_size and name from the table; check the table has enough train images."""
    from cxr_ray.data.datasets import DatasetError, resolution_of

    # Ray Train V2 runs workers in a per-run artifacts folder: relative local paths would land there.
    cfg = replace(cfg, data=storage.absolute(cfg.data), storage=storage.absolute(cfg.storage))
    size = resolution_of(cfg.data, s3)
    if cfg.image_size is not None and cfg.image_size != size:
        raise ConfigError(f"image_size {cfg.image_size} does not match the table's resolution {size} ({cfg.data})")
    if size not in SUPPORTED_IMAGE_SIZES:
        raise ConfigError(f"the generators train at {' or '.join(map(str, SUPPORTED_IMAGE_SIZES))} px; {cfg.data} is {size} px")
    cfg = replace(cfg, image_size=size)
    n = count_train_images(cfg, s3)
    if n < cfg.num_workers:
        raise DatasetError(f"{cfg.data}: {n} train images of class {cfg.class_name}, fewer than {cfg.num_workers} workers")
    return replace(cfg, name=cfg.run_name())


def claim_run(cfg: GanConfig, run_uri: str, s3: S3Settings | None) -> None:
    """Refuse to continue a run under this name that was trained with a different identity."""
    marker = storage.join(run_uri, GAN_CONFIG_FILE)
    if storage.exists(marker, s3):
        # A marker without `family` is a DCGAN run's (families came later): compare the family too, always.
        previous = {"family": DEFAULT_FAMILY, **storage.read_json(marker, s3)}
        current = {**cfg.identity(), "family": cfg.family}
        changed = sorted(k for k in current if previous.get(k) != current[k])
        if changed:
            raise ConfigError(
                f"{run_uri} was trained with different {', '.join(changed)}; use another --name (or the default name)"
            )
        return
    storage.write_json_atomic(marker, cfg.identity(), s3)


def train_dataset(cfg: GanConfig, s3: S3Settings | None) -> Any:
    from cxr_ray.data.datasets import TaskData, read_split

    ds = read_split(TaskData(task="pneumonia", real=cfg.data), ["train"], s3)
    if cfg.conditional:
        return ds
    return ds.map_batches(keep_class, batch_format="pyarrow", fn_kwargs={"label": CLASS_NAMES.index(cfg.class_name)}, batch_size=None)


def claim_inputs(cfg: GanConfig, s3: S3Settings | None, log: Callable[[str], None]) -> str:
    """The run name for a training on this config and the table's content: the run under `cfg.run_name()`
    is re-used (finished or resumed) only when it recorded the same inputs, else a new name (issue 13)."""
    from cxr_ray.data.fingerprint import INPUTS_FILE, claim_run_name, run_inputs

    run_uri = storage.join(cfg.storage, cfg.run_name())
    recorded = storage.exists(storage.join(run_uri, INPUTS_FILE), s3)
    if not recorded and storage.exists(storage.join(run_uri, GAN_CONFIG_FILE), s3):
        claim_run(cfg, run_uri, s3)  # a run from before inputs were recorded: another config under its name is refused
    return claim_run_name(cfg.storage, cfg.run_name(), run_inputs(cfg.identity(), [cfg.data], s3), s3, log)


def finished_summary(cfg: GanConfig, run_uri: str, s3: S3Settings | None) -> dict[str, Any] | None:
    """The run's summary if it already reached `cfg.epochs` (a finished re-run costs no Ray Train start)."""
    uri = storage.join(run_uri, GAN_SUMMARY_FILE)
    if not storage.exists(uri, s3):
        return None
    summary = storage.read_json(uri, s3)
    return summary if int(summary.get("epochs", 0)) >= cfg.epochs else None


def run_summary(cfg: GanConfig, run_uri: str, result: Any, use_gpu: bool, seconds: dict[str, float]) -> dict[str, Any]:
    """What {run}/gan_summary.json records about a finished fit (`seconds`: fit and wall time)."""
    from cxr_ray.train.launch import read_state

    state = read_state(result.checkpoint)
    history = state["history"]
    return {
        "run": cfg.run_name(),
        "run_dir": run_uri,
        "checkpoint": storage.uri_for(cfg.storage, result.checkpoint.path),
        "epochs": int(state["epoch"]),
        "family": cfg.family,
        "class_name": cfg.class_name,
        "image_size": cfg.image_size,
        "num_workers": cfg.num_workers,
        "use_gpu": use_gpu,
        "images_per_epoch": history[-1]["images"] if history else 0,
        "losses": [{k: e[k] for k in ("epoch", "loss_d", "loss_g", "d_real", "d_fake")} for e in history],
        "resumed_from_epoch": history[-1]["attempt_start_epoch"] if history else 0,
        "train_seconds": sum(e["seconds"] for e in history),
        "fit_seconds": seconds["fit"],
        "wall_seconds": seconds["wall"],
        "samples": storage.join(run_uri, SAMPLES_DIR),
        "config": to_dict(cfg),
    }


def train_gan(
    cfg: GanConfig, *, s3: S3Settings | None = None, log: Callable[[str], None] = print, address: str | None = None
) -> dict[str, Any]:
    """Train (or resume) one generator (any family) with Ray Train; returns the summary also written to {run}/gan_summary.json."""
    from cxr_ray.runtime import init_ray
    from cxr_ray.train.launch import LaunchSpec, cpus_per_worker, resolve_use_gpu, run_trainer

    t0 = time.perf_counter()
    s3 = s3 or S3Settings.from_env()
    cfg = resolve_config(cfg, s3)
    init_ray(address)
    declared = resources.of(cfg.resources)
    use_gpu = resolve_use_gpu(cfg.use_gpu, declared)
    if cfg.sync_bn and not use_gpu:
        raise ConfigError("sync_bn needs GPU workers: torch's SyncBatchNorm does not run on CPU")
    cfg = replace(cfg, name=claim_inputs(cfg, s3, log))
    run_uri = storage.join(cfg.storage, cfg.run_name())
    claim_run(cfg, run_uri, s3)
    finished = finished_summary(cfg, run_uri, s3)
    if finished is not None:
        log(f"train-gan: {cfg.run_name()} already has {finished['epochs']} epochs; nothing to do")
        return finished
    spec = LaunchSpec(
        name=cfg.run_name(),
        storage=cfg.storage,
        num_workers=cfg.num_workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus_per_worker(cfg.num_workers),
        resources=declared,
        max_failures=cfg.max_failures,
    )
    log(f"train-gan: {cfg.run_name()} ({cfg.family}, {cfg.class_name}, {cfg.image_size}px) on {cfg.num_workers} workers -> {run_uri}")
    t_fit = time.perf_counter()
    result = run_trainer(train_loop_per_worker, to_dict(cfg), spec, s3=s3, datasets={"train": train_dataset(cfg, s3)})
    fit_seconds = time.perf_counter() - t_fit
    if result.checkpoint is None:
        raise RuntimeError(f"{run_uri}: training finished without a checkpoint")
    summary = run_summary(cfg, run_uri, result, use_gpu, {"fit": fit_seconds, "wall": time.perf_counter() - t0})
    storage.write_json_atomic(storage.join(run_uri, GAN_SUMMARY_FILE), summary, s3)
    return summary


def format_losses(history: list[dict[str, Any]]) -> str:
    """A Markdown table of the per-epoch losses."""
    lines = ["| epoch | loss D | loss G | D(x) | D(G(z)) |", "|---:|---:|---:|---:|---:|"]
    for e in history:
        lines.append(f"| {e['epoch']} | {e['loss_d']:.3f} | {e['loss_g']:.3f} | {e['d_real']:.3f} | {e['d_fake']:.3f} |")
    return "\n".join(lines)
