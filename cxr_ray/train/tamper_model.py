"""The tamper model on Ray Train (DDP): an in-painter that fills a region inside the lungs with the class wanted.

Trained on the ingested table's train split only (issue 16). Every step, each
image gets a fresh mask inside its lung fields (cxr_ray.tamper.masks; the
fields are found once, in the Ray Data pipeline) and a wanted class: its own
class, or with probability `swap` the other one (the edits an attacker makes:
opacity into a NORMAL lung, normal lung over a PNEUMONIA one).

* Critic (`PatchCritic`): hinge loss; real images are judged with their own
  class, edits with the class they were asked to show. Real and edited
  images go through it in one DDP forward (no BatchNorm, so one batch is
  the same as two).
* In-painter: hinge adversarial loss through the frozen, unwrapped critic
  (only the in-painter's gradients are all-reduced), plus `rec_weight` x L1
  on the masked pixels of the fills asked for the image's own class: there
  the truth is known, and it keeps edits anatomically in place.

Each epoch rank 0 measures the masked-pixel L1 of same-class fills on the
validation images (fixed masks), writes a sample grid (originals, the
masked regions, the edits to the other class) and attaches a plain-data
checkpoint (cxr_ray.tamper.state); a restarted worker group or a re-run
under the same name continues from it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from cxr_ray import resources, storage
from cxr_ray.config import ConfigError, config_hash, from_dict, to_dict
from cxr_ray.filenames import SAMPLES_DIR, TAMPER_SUMMARY_FILE
from cxr_ray.pixels import autocast, to_input
from cxr_ray.storage import S3Settings

GRID_IMAGES = 8  # validation images in each epoch's sample grid
# Fields that change what is learnt: they name the run. Epochs, workers, storage and fault handling may change
# between attempts (e.g. to extend a run).
IDENTITY_FIELDS = ("data", "batch_size", "lr", "beta1", "ngf", "ndf", "rec_weight", "swap", "seed")


@dataclass(frozen=True)
class TamperModelConfig:
    """One tamper-model training: the in-painter and its critic on an ingested table's train split."""

    data: str  # ingested real table (path or s3://)
    storage: str = "runs/tamper"  # runs root: the run lives in {storage}/{name}
    epochs: int = 20
    batch_size: int = 64  # per worker
    lr: float = 2e-4
    beta1: float = 0.5
    ngf: int = 32
    ndf: int = 32
    rec_weight: float = 10.0  # weight of the masked-pixel L1 of same-class fills
    swap: float = 0.5  # share of fills asked for the other class
    num_workers: int = 2
    use_gpu: bool | None = None  # None: as `resources` declares ("auto": GPUs when the cluster has them)
    resources: dict | None = None  # what each worker asks of a node (cxr_ray.resources); None: "auto"
    name: str | None = None  # None: from the identity's hash (stable, resumable)
    seed: int = 0
    max_failures: int = 2
    inject_failure: dict | None = None  # test hook, see loop.maybe_inject_failure

    def __post_init__(self) -> None:
        from cxr_ray.config import at_least, check_fields, check_name

        check_fields(self)
        resources.of(self.resources)
        for key in ("epochs", "batch_size", "ngf", "ndf", "num_workers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        at_least(self, 0, "seed", "max_failures", "rec_weight")
        if self.ngf % 8:
            raise ConfigError(f"ngf must be a multiple of 8 (GroupNorm groups), got {self.ngf}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.beta1 < 1.0:
            raise ConfigError(f"beta1 must be in [0, 1), got {self.beta1}")
        if not 0.0 <= self.swap <= 1.0:
            raise ConfigError(f"swap must be in [0, 1], got {self.swap}")
        if not self.data:
            raise ConfigError("data (the ingested real table) is required")
        check_name("name", self.name)

    def identity(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in IDENTITY_FIELDS}

    def run_name(self) -> str:
        return self.name or f"tamper-{config_hash(self.identity())}"


# ---------------------------------------------------------------- worker side


@dataclass
class TamperShard:
    """Images (uint8 (N, 1, S, S)), classes (N,) and lung fields (bool (N, S, S), host) of one split's rows here."""

    images: torch.Tensor
    labels: torch.Tensor
    lungs: np.ndarray


def load_tamper_shard(name: str, device: torch.device) -> TamperShard:
    """This worker's rows of Ray Data dataset `name` (image, target, lungs columns)."""
    import ray.train

    from cxr_ray.data.datasets import batch_to_arrays
    from cxr_ray.tamper.lungs import LUNGS_COLUMN

    images, labels, lungs = [], [], []
    for batch in ray.train.get_dataset_shard(name).iter_batches(batch_size=4096, batch_format="numpy"):
        x, y = batch_to_arrays(batch)
        if len(x):
            images.append(x)
            labels.append(y)
            lungs.append(np.frombuffer(b"".join(batch[LUNGS_COLUMN]), np.uint8).reshape(x.shape).astype(bool))
    if not images:
        raise RuntimeError(f"a worker received no {name} images: use fewer workers")
    x = torch.from_numpy(np.concatenate(images)).unsqueeze(1).to(device)
    return TamperShard(x, torch.from_numpy(np.concatenate(labels)).to(device), np.concatenate(lungs))


def masks_for(lungs: np.ndarray, rng: np.random.Generator, device: torch.device) -> torch.Tensor:
    """One mask inside each image's lung fields: float (N, 1, S, S)."""
    from cxr_ray.tamper.masks import sample_mask

    masks = np.stack([sample_mask(fields, rng) for fields in lungs])
    return torch.from_numpy(masks.astype(np.float32)).unsqueeze(1).to(device)


def wanted_classes(labels: torch.Tensor, swap: float, gen: torch.Generator) -> torch.Tensor:
    """Each image's own class, or with probability `swap` the other one."""
    flip = (torch.rand(len(labels), generator=gen) < swap).to(labels.device)
    return torch.where(flip, 1 - labels, labels)


def masked_l1(edit: torch.Tensor, original: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean |edit - original| over the masked pixels of the selected rows (0 when none is selected)."""
    weight = mask * rows.view(-1, 1, 1, 1).to(mask.dtype)
    return ((edit - original).abs() * weight).sum() / weight.sum().clamp(min=1.0)


@dataclass
class TamperModels:
    inpainter: torch.nn.Module  # DDP-wrapped
    critic: torch.nn.Module  # DDP-wrapped
    critic_plain: torch.nn.Module  # the same critic unwrapped: the in-painter's step calls it frozen
    optimizer_g: torch.optim.Optimizer
    optimizer_d: torch.optim.Optimizer


class _RealAndEdited(torch.nn.Module):
    """The critic on real and edited images in one forward (one DDP forward per backward)."""

    def __init__(self, critic: torch.nn.Module) -> None:
        super().__init__()
        self.critic = critic

    def forward(self, real: torch.Tensor, real_class: torch.Tensor, edited: torch.Tensor, wanted: torch.Tensor):
        logits = self.critic(torch.cat([real, edited]), torch.cat([real_class, wanted]))
        return logits[: len(real)], logits[len(real) :]


def build_tamper_fit(cfg: TamperModelConfig, image_size: int, state: dict[str, Any] | None) -> TamperModels:
    import ray.train.torch

    from cxr_ray.models.inpainter import build_tamper_models

    inpainter, critic = build_tamper_models(image_size, cfg.ngf, cfg.ndf)
    if state is not None:
        inpainter.load_state_dict(state["inpainter"]["model_state"])
        critic.load_state_dict(state["critic"]["model_state"])
    # Spectral norm's power-iteration vectors are buffers updated from identical weights: no broadcast needed.
    ddp_kwargs = {"forward_sync_buffers": False}
    inpainter_ddp = ray.train.torch.prepare_model(inpainter, parallel_strategy_kwargs=ddp_kwargs)
    critic_ddp = ray.train.torch.prepare_model(_RealAndEdited(critic), parallel_strategy_kwargs=ddp_kwargs)
    betas = (cfg.beta1, 0.999)
    optimizer_g = torch.optim.Adam(inpainter.parameters(), lr=cfg.lr, betas=betas)
    optimizer_d = torch.optim.Adam(critic.parameters(), lr=cfg.lr, betas=betas)
    if state is not None:
        optimizer_g.load_state_dict(state["optimizer_g"])
        optimizer_d.load_state_dict(state["optimizer_d"])
    return TamperModels(inpainter_ddp, critic_ddp, critic, optimizer_g, optimizer_d)


def tamper_step(
    models: TamperModels, x: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, wanted: torch.Tensor, rec_weight: float
) -> dict[str, torch.Tensor]:
    """One critic step, then one in-painter step; detached losses (no host sync)."""
    device = x.device
    with autocast(device):
        edited = models.inpainter(x, mask, wanted)
        real_logits, edit_logits = models.critic(x, labels, edited.detach(), wanted)
    loss_d = F.relu(1 - real_logits.float()).mean() + F.relu(1 + edit_logits.float()).mean()
    models.optimizer_d.zero_grad(set_to_none=True)
    loss_d.backward()
    models.optimizer_d.step()

    for p in models.critic_plain.parameters():
        p.requires_grad_(False)
    try:
        with autocast(device):
            adversarial = -models.critic_plain(edited, wanted).float().mean()
        same = wanted == labels
        reconstruction = masked_l1(edited.float(), x, mask, same)
        loss_g = adversarial + rec_weight * reconstruction
        models.optimizer_g.zero_grad(set_to_none=True)
        loss_g.backward()
        models.optimizer_g.step()
    finally:
        for p in models.critic_plain.parameters():
            p.requires_grad_(True)
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "rec_l1": reconstruction.detach()}


def _epoch_seed(cfg: TamperModelConfig, epoch: int, rank: int) -> int:
    # Depends on (seed, epoch, rank) only: a resumed attempt draws what an uninterrupted one would have.
    return (cfg.seed * 1_000_003 + epoch * 1009 + rank) % 2**31


def train_epoch(cfg: TamperModelConfig, models: TamperModels, shard: TamperShard, epoch: int, steps: int, batch: int) -> dict[str, float]:
    """`steps` steps over a fresh permutation of this worker's images; local mean losses."""
    from cxr_ray.train.loop import batches

    rank_seed = _epoch_seed(cfg, epoch, _rank())
    gen = torch.Generator().manual_seed(rank_seed)
    rng = np.random.default_rng(rank_seed)
    device = shard.images.device
    sums: dict[str, torch.Tensor] = {}
    for index in batches(len(shard.images), batch, steps, gen):
        mask = masks_for(shard.lungs[index.numpy()], rng, device)
        index = index.to(device)
        labels = shard.labels[index]
        out = tamper_step(models, to_input(shard.images[index]), labels, mask, wanted_classes(labels, cfg.swap, gen), cfg.rec_weight)
        for key, value in out.items():
            sums[key] = sums.get(key, torch.zeros((), device=device)) + value.float()
    return {key: float(value) / max(steps, 1) for key, value in sums.items()}


def _rank() -> int:
    from cxr_ray.train.loop import world

    return world()[0]


def fixed_val_masks(cfg: TamperModelConfig, val: TamperShard) -> torch.Tensor:
    """The validation masks: the same every epoch and attempt."""
    return masks_for(val.lungs, np.random.default_rng(cfg.seed + 777), val.images.device)


@torch.no_grad()
def validate(inpainter: torch.nn.Module, val: TamperShard, masks: torch.Tensor, batch_size: int = 256) -> float:
    """Masked-pixel L1 (in [-1, 1] units) of same-class fills of the validation images."""
    inpainter.eval()
    total, weight = 0.0, 0.0
    for start in range(0, len(val.images), batch_size):
        x = to_input(val.images[start : start + batch_size])
        m, y = masks[start : start + batch_size], val.labels[start : start + batch_size]
        with autocast(x.device):
            edited = inpainter(x, m, y).float()
        total += float(((edited - x).abs() * m).sum())
        weight += float(m.sum())
    inpainter.train()
    return total / max(weight, 1.0)


@torch.no_grad()
def grid_png(inpainter: torch.nn.Module, val: TamperShard, masks: torch.Tensor) -> bytes:
    """Rows: validation images, the masked region (shown black), the edit to the other class."""
    from cxr_ray import grids

    n = min(GRID_IMAGES, len(val.images))
    x, m, y = to_input(val.images[:n]), masks[:n], val.labels[:n]
    inpainter.eval()
    edited = inpainter(x, m, 1 - y).float()
    inpainter.train()
    rows = torch.cat([x, x * (1 - m) - m, edited])
    return grids.png(rows, nrow=n)


def tamper_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: restore, then per epoch train, validate and checkpoint (rank 0), report (every rank)."""
    from cxr_ray.checkpoint import unwrap_model
    from cxr_ray.tamper.state import build_tamper_state
    from cxr_ray.train import loop
    from cxr_ray.train.gan import mean_over_ranks
    from cxr_ray.train.launch import report_epoch, resume_state, worker_s3

    cfg = from_dict(TamperModelConfig, {k: v for k, v in config.items() if not k.startswith("_")})
    s3 = worker_s3(config)
    rank, world_size = loop.world()
    device = loop.device_for_worker(bool(config.get("_use_gpu")))
    run_uri = storage.join(cfg.storage, cfg.run_name())
    state = resume_state(config)
    start_epoch = int(state["epoch"]) if state else 0
    history: list[dict[str, Any]] = list(state["history"]) if state else []

    train = load_tamper_shard("train", device)
    n_min = loop.agree_on_count(len(train.images), device)
    batch = min(cfg.batch_size, n_min)
    steps = n_min // batch
    torch.manual_seed(cfg.seed)  # identical init everywhere (DDP also broadcasts rank 0's)
    models = build_tamper_fit(cfg, int(train.images.shape[-1]), state)
    val = load_tamper_shard("val", device) if rank == 0 else None
    val_masks = fixed_val_masks(cfg, val) if val is not None else None

    for epoch in range(start_epoch, cfg.epochs):
        loop.maybe_inject_failure(config, epoch, rank)
        t0 = time.perf_counter()
        losses = mean_over_ranks(train_epoch(cfg, models, train, epoch, steps, batch), device)
        seconds = time.perf_counter() - t0
        entry = {"epoch": epoch + 1, **losses, "seconds": seconds, "images_per_s": steps * batch * world_size / seconds}
        save = None
        if rank == 0:
            inpainter = unwrap_model(models.inpainter)
            entry["val_l1"] = validate(inpainter, val, val_masks)
            png = grid_png(inpainter, val, val_masks)
            storage.write_bytes_atomic(storage.join(run_uri, SAMPLES_DIR, f"epoch_{epoch + 1:03d}.png"), png, s3)
            history.append(entry)
            save = build_tamper_state(to_dict(cfg), epoch + 1, inpainter, models.critic_plain, models.optimizer_g,
                                      models.optimizer_d, history)  # fmt: skip
        metrics = {**entry, "finite": all(math.isfinite(entry[k]) for k in ("loss_d", "loss_g"))}
        report_epoch(metrics, save)


# ---------------------------------------------------------------- driver side


def tamper_datasets(cfg: TamperModelConfig, s3: S3Settings | None) -> dict[str, Any]:
    """The train and val rows (image, class) with their lung fields, found once here on Ray Data."""
    from cxr_ray.data.datasets import TaskData, read_split
    from cxr_ray.tamper.lungs import with_lung_fields

    data = TaskData(task="pneumonia", real=cfg.data)
    return {
        split: read_split(data, [split], s3).map_batches(with_lung_fields, batch_format="pyarrow")
        for split in ("train", "val")
    }


def finished_summary(cfg: TamperModelConfig, run_uri: str, s3: S3Settings | None) -> dict[str, Any] | None:
    uri = storage.join(run_uri, TAMPER_SUMMARY_FILE)
    if not storage.exists(uri, s3):
        return None
    summary = storage.read_json(uri, s3)
    return summary if int(summary.get("epochs", 0)) >= cfg.epochs else None


def train_tamper_model(
    cfg: TamperModelConfig, *, s3: S3Settings | None = None, log: Callable[[str], None] = print, address: str | None = None
) -> dict[str, Any]:
    """Train (or resume) the tamper model with Ray Train; returns the summary also written to {run}/tamper_summary.json."""
    from cxr_ray.data.datasets import require_complete, resolution_of
    from cxr_ray.data.fingerprint import claim_run_name, run_inputs
    from cxr_ray.runtime import init_ray
    from cxr_ray.train.launch import LaunchSpec, cpus_per_worker, read_state, resolve_use_gpu, run_trainer

    t0 = time.perf_counter()
    s3 = s3 or S3Settings.from_env()
    # Ray Train V2 runs workers in a per-run folder: relative local paths would land there.
    cfg = replace(cfg, data=storage.absolute(cfg.data), storage=storage.absolute(cfg.storage))
    require_complete(cfg.data, s3)
    size = resolution_of(cfg.data, s3)
    if size % 8:
        raise ConfigError(f"{cfg.data}: the tamper model needs a size divisible by 8, the table is {size} px")
    init_ray(address)
    declared = resources.of(cfg.resources)
    use_gpu = resolve_use_gpu(cfg.use_gpu, declared)
    cfg = replace(cfg, name=claim_run_name(cfg.storage, cfg.run_name(), run_inputs(cfg.identity(), [cfg.data], s3), s3, log))
    run_uri = storage.join(cfg.storage, cfg.run_name())
    finished = finished_summary(cfg, run_uri, s3)
    if finished is not None:
        log(f"train-tamper: {cfg.run_name()} already has {finished['epochs']} epochs; nothing to do")
        return finished
    spec = LaunchSpec(name=cfg.run_name(), storage=cfg.storage, num_workers=cfg.num_workers, use_gpu=use_gpu,
                      cpus_per_worker=cpus_per_worker(cfg.num_workers), resources=declared, max_failures=cfg.max_failures)  # fmt: skip
    log(f"train-tamper: {cfg.run_name()} ({size}px) on {cfg.num_workers} workers, {cfg.epochs} epochs -> {run_uri}")
    t_fit = time.perf_counter()
    result = run_trainer(tamper_worker, to_dict(cfg), spec, s3=s3, datasets=tamper_datasets(cfg, s3), datasets_to_split=["train"])
    if result.checkpoint is None:
        raise RuntimeError(f"{run_uri}: training finished without a checkpoint")
    state = read_state(result.checkpoint)
    summary = {
        "run": cfg.run_name(),
        "run_dir": run_uri,
        "checkpoint": storage.uri_for(cfg.storage, result.checkpoint.path),
        "epochs": int(state["epoch"]),
        "image_size": size,
        "num_workers": cfg.num_workers,
        "use_gpu": use_gpu,
        "history": state["history"],
        "val_l1": state["history"][-1]["val_l1"] if state["history"] else None,
        "fit_seconds": time.perf_counter() - t_fit,
        "wall_seconds": time.perf_counter() - t0,
        "samples": storage.join(run_uri, SAMPLES_DIR),
        "config": to_dict(cfg),
    }
    storage.write_json_atomic(storage.join(run_uri, TAMPER_SUMMARY_FILE), summary, s3)
    return summary
