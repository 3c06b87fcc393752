"""Classifier and detector training on Ray Train (DDP), with selection on validation.

One trainer serves both tasks: `pneumonia` (NORMAL vs PNEUMONIA, from real,
fake or both) and `deepfake` (real vs fake). Workers see only the train and
val splits; the test split is read once, after training, by
`evaluate_on_test`, with the threshold chosen on validation.

Worker side (`classifier_worker`, shaped like the GAN trainer): the data
once (`load_worker_data`), the model (`build_fit`), `restore`, then per
epoch `train_epoch` (`train_step` per batch), `validate` and `epoch_state`
on rank 0, and `report_epoch` from every rank. Driver side:
`launch_classifier` is the one launch (train, Tune trials, the benchmark);
`train_classifier` adds the input checks and the test evaluation.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from cxr_ray import resources, storage
from cxr_ray.checkpoint import model_state, unwrap_model
from cxr_ray.classifier_state import build_classifier_state, check_classifier_state
from cxr_ray.config import ConfigError, config_hash, from_dict
from cxr_ray.data.archive import ArchiveFormat, read_archive_format
from cxr_ray.data.datasets import SOURCES, TASKS, TaskData, read_split, require_complete
from cxr_ray.filenames import (
    HISTORY_FILE,
    STATE_FILE,
    TEST_METRICS_FILE,
    TEST_METRICS_TABLE,
    TEST_PREDICTIONS_FILE,
    VAL_PREDICTIONS_FILE,
)
from cxr_ray.models.input_filters import NO_FILTER
from cxr_ray.metrics import choose_threshold, roc_auc, summarize, threshold_metrics
from cxr_ray.pixels import autocast, positive_probability, to_input
from cxr_ray.runtime import init_ray
from cxr_ray.storage import S3Settings
from cxr_ray.train import loop
from cxr_ray.train.launch import LaunchSpec, read_state, report_epoch, resume_state, run_trainer, worker_s3


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that defines a classifier run; the run name derives from it."""

    data: str  # ingested real table
    task: str = "pneumonia"
    model: str = "cnn"
    fakes: str | tuple[str, ...] | None = None  # generated fake table, or several (generator families)
    source: str = "real"  # pneumonia: train on real, fake or both
    epochs: int = 10
    batch_size: int = 64  # per worker
    lr: float = 1e-3
    weight_decay: float = 1e-4
    aug_strength: float = 0.5
    # Probability of a random blur or JPEG round trip per training image (0: off).
    # Detectors trained with it are scored under the same perturbations as the others.
    robust_aug: float = 0.0
    # Probability of a random window/level change (gamma or contrast stretch) per training image (0: off):
    # a hospital's display changes must not look like a fake.
    window_aug: float = 0.0
    # Deepfake only: probability that a real training image is halved and upsampled back and labelled fake
    # (loop.resampled_fakes; 0: off): the upsampling trace every generator leaves, not one generator's habits.
    resample_fakes: float = 0.0
    resample_modes: tuple[str, ...] = ("nearest", "bilinear", "bicubic")  # the upsamplers it draws from (loop.ALL_UPSAMPLERS)
    # Those fakes are stored in the real table's archive format and decoded by ingest's path, as an attacker's
    # stored fake is (cxr_ray.data.archive): they reach the model through the same processing as the fakes it is
    # meant to catch, so it cannot learn a trace that storing erases.
    resample_stored: bool = False
    # A fixed filter on the model's input, kept with the model (cxr_ray.models.input_filters; "npr": the
    # neighbouring-pixel residual that upsampling traces live in).
    input_filter: str = NO_FILTER
    # Deepfake only: also score how far an image's features lie from the real train images' (cxr_ray.models.novelty),
    # fitted on rank 0 each epoch before validation; the detector's score is the larger of the two, standardised.
    real_novelty: bool = False
    label_smoothing: float = 0.0
    pretrained: bool = False
    weights_path: str | None = None
    seed: int = 0
    # N train images per class, drawn with `seed` (None: every train image); val and test untouched.
    # Matches a fake-trained run and its real control in size, class balance and optimiser steps.
    train_per_class: int | None = None
    # Execution (not part of the run's identity).
    storage: str = "runs/train"
    name: str | None = None
    num_workers: int = 2
    use_gpu: bool | None = None
    max_failures: int = 2
    # CPUs per worker (None: 1). Trainings that share a CPU-only node take less, so
    # the Ray Data tasks that feed each new training's workers still find a CPU.
    cpus_per_worker: float | None = None
    # What each worker asks of a node (cxr_ray.resources: accelerator, GPUs, CPUs, custom); None: "auto".
    resources: dict | None = None
    n_boot: int = 1000
    inject_failure: dict | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        from cxr_ray.config import at_least, check_fields, check_name
        from cxr_ray.data.datasets import fake_tables, one_or_many

        check_fields(self)
        resources.of(self.resources)
        object.__setattr__(self, "fakes", one_or_many(fake_tables(self.fakes)))  # a YAML list, a 1-tuple -> one form
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.source not in SOURCES:
            raise ConfigError(f"source must be one of {SOURCES}, got {self.source!r}")
        for key in ("epochs", "batch_size", "num_workers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        at_least(self, 1, "n_boot", "train_per_class")
        at_least(self, 0, "max_failures", "seed", "weight_decay")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check_name("name", self.name)
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.aug_strength <= 1:
            raise ConfigError(f"aug_strength must be in [0, 1], got {self.aug_strength}")
        if self.cpus_per_worker is not None and not self.cpus_per_worker > 0:
            raise ConfigError(f"cpus_per_worker must be positive, got {self.cpus_per_worker}")
        if self.real_novelty and self.task != "deepfake":
            raise ConfigError("real_novelty models real images against fakes: it is for task 'deepfake' only")
        if self.resample_fakes and self.task != "deepfake":
            raise ConfigError("resample_fakes makes fakes out of reals: it is for task 'deepfake' only")
        if self.resample_stored and not self.resample_fakes:
            raise ConfigError("resample_stored stores the fakes resample_fakes makes: set resample_fakes above 0")
        from cxr_ray.upsamplers import ALL_UPSAMPLERS

        unknown_modes = sorted(set(self.resample_modes) - set(ALL_UPSAMPLERS))
        if unknown_modes or not self.resample_modes:
            raise ConfigError(f"resample_modes: unknown {', '.join(unknown_modes) or '(none given)'}; known: {', '.join(ALL_UPSAMPLERS)}")
        from cxr_ray.models.input_filters import INPUT_FILTERS

        if self.input_filter not in INPUT_FILTERS:
            raise ConfigError(f"input_filter must be one of {', '.join(INPUT_FILTERS)}, got {self.input_filter!r}")
        for key in ("robust_aug", "window_aug", "resample_fakes"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        from cxr_ray.models import list_models

        if self.model not in list_models():
            raise ConfigError(f"model must be one of {', '.join(list_models())}, got {self.model!r}")
        if not self.data:
            raise ConfigError("data (the ingested real table) is required")

    def later_options_off(self) -> set[str]:
        """Options added after studies were first run, while they are off: left out of run names and stage
        hashes alike (study.plan), so runs and study roots made before them keep their names."""
        off: set[str] = set()
        if not self.resample_fakes:
            off.update({"resample_fakes", "resample_modes"})
        if not self.resample_stored:
            off.add("resample_stored")
        if self.input_filter == NO_FILTER:
            off.add("input_filter")
        if not self.real_novelty:
            off.add("real_novelty")
        return off

    def identity(self) -> dict[str, Any]:
        """The fields that change what is learnt (hashed into the default run name)."""
        skip = {"storage", "name", "num_workers", "use_gpu", "max_failures", "cpus_per_worker", "resources", "n_boot",
                "inject_failure"}
        skip |= self.later_options_off()
        # Off, these are left out of run names too (not of stage hashes: those always held them).
        if not self.robust_aug:
            skip.add("robust_aug")
        if not self.window_aug:
            skip.add("window_aug")
        if self.train_per_class is None:
            skip.add("train_per_class")
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def run_name(self) -> str:
        return self.name or f"{self.task}-{self.model}-{self.source}-{config_hash(self.identity())}"


def task_data(cfg: ClassifierConfig) -> TaskData:
    """The tables the run reads and how they become targets (a detector always sees real and fake)."""
    source = "both" if cfg.task == "deepfake" else cfg.source
    return TaskData(task=cfg.task, real=cfg.data, fake=cfg.fakes, source=source)


def run_uri(cfg: ClassifierConfig) -> str:
    """The run's folder: Ray Train's checkpoints, then the test outputs."""
    return storage.join(cfg.storage, cfg.run_name())


# ---------------------------------------------------------------- worker side


@dataclass
class WorkerData:
    """One worker's uint8 images on its device: its train shard, and on rank 0 the whole val split."""

    x_train: torch.Tensor  # (N, 1, H, W), N the same on every rank
    y_train: torch.Tensor
    x_val: torch.Tensor | None  # rank 0 only: validation runs there
    y_val: torch.Tensor | None
    class_weights: torch.Tensor  # inverse class frequency over every shard

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])


@dataclass
class Fit:
    """What one worker trains: the (DDP-wrapped) model, its optimizer and LR schedule."""

    model: torch.nn.Module
    model_kwargs: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device

    @property
    def channels_last(self) -> bool:
        return self.device.type == "cuda"


def worker_config(config: dict[str, Any]) -> ClassifierConfig:
    """The run's config from a worker's loop config (launch keys start with `_`)."""
    return from_dict(ClassifierConfig, {k: v for k, v in config.items() if not k.startswith("_")})


def load_worker_data(rank: int, device: torch.device) -> WorkerData:
    """Read the shards once; every rank keeps the same number of train images (DDP needs equal steps)."""
    x_train, y_train = loop.load_shard("train", device)
    n_train = loop.agree_on_count(len(x_train), device)
    x_train, y_train = x_train[:n_train], y_train[:n_train]
    x_val, y_val = loop.load_shard("val", device) if rank == 0 else (None, None)
    # Inverse-frequency class weights over all shards: the data is ~1:2.9.
    counts = loop.global_class_counts(y_train, 2)
    weights = (counts.sum() / (2 * counts.clamp(min=1))).to(torch.float32).to(device)
    return WorkerData(x_train, y_train, x_val, y_val, weights)


def build_fit(cfg: ClassifierConfig, image_size: int, device: torch.device) -> Fit:
    """The model (DDP-prepared), AdamW and a cosine schedule over the run's epochs."""
    import ray.train.torch

    from cxr_ray.models import create_model

    model_kwargs: dict[str, Any] = {"num_classes": 2, "in_channels": 1, "image_size": image_size}
    if cfg.input_filter != NO_FILTER:
        model_kwargs["input_filter"] = cfg.input_filter  # rebuilt with the model wherever it is loaded
    if cfg.real_novelty:
        model_kwargs["real_novelty"] = True
    model = create_model(cfg.model, **model_kwargs, pretrained=cfg.pretrained, weights_path=cfg.weights_path)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return Fit(model, model_kwargs, optimizer, scheduler, device)


def restore(fit: Fit, state: dict[str, Any] | None, where: str) -> tuple[int, list[dict[str, Any]]]:
    """Load a checkpoint (of the run at `where`) into `fit`; (first epoch to train, history so far)."""
    if state is None:
        return 0, []
    check_classifier_state(state, where)
    unwrap_model(fit.model).load_state_dict(state["model_state"])
    fit.optimizer.load_state_dict(state["optimizer_state"])
    fit.scheduler.load_state_dict(state["scheduler_state"])
    return int(state["epoch"]) + 1, list(state["history"])


def train_step(fit: Fit, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """One optimizer step on a batch of model inputs; the detached loss (no host sync)."""
    with autocast(fit.device):
        logits = fit.model(x)
    loss = F.cross_entropy(logits.float(), y, weight=weights, label_smoothing=label_smoothing)
    fit.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    fit.optimizer.step()
    return loss.detach()


def model_input(
    cfg: ClassifierConfig, pixels: torch.Tensor, epoch: int, rank: int, gen: torch.Generator, channels_last: bool
) -> torch.Tensor:
    """A uint8 batch as augmented model input (window/level, then blur/JPEG, on the bytes, when those are on)."""
    seed = (cfg.seed * 1_000_003 + epoch) * 64 + rank
    if cfg.window_aug:
        pixels = loop.window_level_augment(pixels, cfg.window_aug, seed=seed)
    if cfg.robust_aug:
        pixels = loop.robust_augment(pixels, cfg.robust_aug, seed=seed)
    return loop.augment(to_input(pixels, channels_last), cfg.aug_strength, gen)


def train_epoch(
    cfg: ClassifierConfig, fit: Fit, data: WorkerData, epoch: int, gen: torch.Generator, archive: ArchiveFormat | None = None
) -> dict[str, Any]:
    """One pass over this worker's shard; the epoch's record (mean loss, lr, time, images/s over all ranks).
    `archive`: the format resampled fakes are stored in (cfg.resample_stored)."""
    rank, world_size = loop.world()
    n_train = len(data.x_train)
    steps = max(1, n_train // cfg.batch_size)
    fit.model.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=fit.device)
    for idx in loop.batches(n_train, cfg.batch_size, steps, gen):
        idx = idx.to(fit.device)
        pixels, y = data.x_train[idx], data.y_train[idx]
        if cfg.resample_fakes:
            made, y_made = loop.resampled_fakes(pixels, y, cfg.resample_fakes, gen, tuple(cfg.resample_modes))
            if archive is not None:
                made = loop.stored_as_archive(made, y_made != y, archive)
            pixels, y = made, y_made
        x = model_input(cfg, pixels, epoch, rank, gen, fit.channels_last)
        loss_sum += train_step(fit, x, y, data.class_weights, cfg.label_smoothing)
    fit.scheduler.step()
    # .item() waits for the GPU's queued steps: without it the timer stops early.
    train_loss = float(loss_sum.item() / steps)
    seconds = time.perf_counter() - t0
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "lr": float(fit.optimizer.param_groups[0]["lr"]),
        "epoch_seconds": seconds,
        "train_images_per_s": steps * cfg.batch_size * world_size / seconds,
    }


@torch.no_grad()
def val_scores(
    model: torch.nn.Module, data: WorkerData, channels_last: bool, batch_size: int = 512
) -> tuple[np.ndarray, float]:
    """P(class 1) for every val image, and the class-weighted mean val loss."""
    model.eval()
    scores, loss_sum = [], 0.0
    for start in range(0, len(data.x_val), batch_size):
        x = to_input(data.x_val[start : start + batch_size], channels_last)
        with autocast(data.x_val.device):
            logits = model(x).float()
        y = data.y_val[start : start + batch_size]
        loss_sum += F.cross_entropy(logits, y, weight=data.class_weights, reduction="sum").item()
        scores.append(positive_probability(logits))
    s = np.concatenate(scores) if scores else np.zeros(0)
    return s, loss_sum / max(1, len(data.y_val))


def fit_real_novelty(model: torch.nn.Module, data: WorkerData, channels_last: bool, batch_size: int = 512) -> None:
    """Fit a RealNovelty detector's real-image model on this rank's real train images (un-augmented) and the real
    val images: what validation, the checkpoint and every later scoring then use."""
    def batches(x: torch.Tensor) -> Iterator[torch.Tensor]:
        for start in range(0, len(x), batch_size):
            yield to_input(x[start : start + batch_size], channels_last)

    model.fit(batches(data.x_train[data.y_train == 0]), batches(data.x_val[data.y_val == 0]))


def validate(model: torch.nn.Module, data: WorkerData, channels_last: bool) -> dict[str, float]:
    """Val loss, AUC and the threshold-based metrics at the val-chosen (Youden) threshold."""
    s, loss = val_scores(model, data, channels_last)
    y = data.y_val.cpu().numpy()
    threshold = float(choose_threshold(y, s)) if len(np.unique(y)) == 2 else 0.5
    at = threshold_metrics(y, s, threshold)
    return {
        "val_loss": float(loss),
        "val_auc": float(roc_auc(y, s)),
        "val_accuracy": float(at["accuracy"]),
        "val_sensitivity": float(at["sensitivity"]),
        "val_specificity": float(at["specificity"]),
        "val_threshold": threshold,
    }


def epoch_state(
    cfg: ClassifierConfig, fit: Fit, metrics: dict[str, Any], history: list[dict[str, Any]]
) -> dict[str, Any]:
    """The checkpoint of the epoch just validated (`metrics` holds its val_* values)."""
    return build_classifier_state(
        config=asdict(replace(cfg, inject_failure=None)),
        task=cfg.task,
        model_name=cfg.model,
        model_kwargs=fit.model_kwargs,
        model_state=model_state(fit.model),
        optimizer_state=fit.optimizer.state_dict(),
        scheduler_state=fit.scheduler.state_dict(),
        epoch=metrics["epoch"],
        val_metrics={k: v for k, v in metrics.items() if k.startswith("val_")},
        threshold=metrics["val_threshold"],
        history=history,
    )


def classifier_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: restore, then per epoch train, validate and checkpoint (rank 0), report (every rank)."""
    cfg = worker_config(config)
    rank, _ = loop.world()
    device = loop.device_for_worker(bool(config.get("_use_gpu")))
    gen = loop.seed_everything(cfg.seed, rank)
    data = load_worker_data(rank, device)
    archive = read_archive_format(cfg.data, worker_s3(config)) if cfg.resample_stored else None
    fit = build_fit(cfg, data.image_size, device)
    start_epoch, history = restore(fit, resume_state(config), run_uri(cfg))
    if start_epoch >= cfg.epochs and history:
        # Resumed after the last epoch (the job died before it finished up):
        # report the final epoch again, so callers such as a Tune trial still
        # receive this run's metrics.
        report_epoch(dict(history[-1]), None)
    for epoch in range(start_epoch, cfg.epochs):
        loop.maybe_inject_failure(config, epoch, rank)
        metrics = train_epoch(cfg, fit, data, epoch, gen, archive)
        state = None
        if rank == 0:
            if cfg.real_novelty:
                fit_real_novelty(unwrap_model(fit.model), data, fit.channels_last)
            metrics.update(validate(unwrap_model(fit.model), data, fit.channels_last))
            history.append(dict(metrics))
            state = epoch_state(cfg, fit, metrics, history)
        report_epoch(metrics, state)


# ---------------------------------------------------------------- driver side


def absolute_tables(fakes: str | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
    """`fakes` (one table or several) with every local path made absolute."""
    from cxr_ray.data.datasets import fake_tables, one_or_many

    return one_or_many([storage.absolute(uri) for uri in fake_tables(fakes)])


def for_workers(cfg: ClassifierConfig) -> ClassifierConfig:
    """`cfg` with its run name fixed, then absolute paths: workers run in their own folder.

    The name is taken first, so it keeps hashing the paths as given. Idempotent.
    """
    return replace(
        cfg,
        name=cfg.run_name(),
        data=storage.absolute(cfg.data),
        fakes=absolute_tables(cfg.fakes),
        storage=storage.absolute(cfg.storage),
    )


def launch_classifier(
    cfg: ClassifierConfig,
    *,
    s3: S3Settings | None = None,
    num_to_keep: int = 2,
    callbacks: list[Any] | None = None,
) -> Any:
    """Train (or resume) the run of `cfg` on Ray Train; returns Ray Train's Result.

    The one launch of `classifier_worker`: `train_classifier`, every Tune
    trial (`callbacks=[TuneReportCallback()]`) and the throughput benchmark go
    through it. Ray must be running; relative paths are taken from this
    process's working directory.
    """
    cfg = for_workers(cfg)
    spec = LaunchSpec(
        name=cfg.run_name(),
        storage=cfg.storage,
        num_workers=cfg.num_workers,
        use_gpu=cfg.use_gpu,
        max_failures=cfg.max_failures,
        cpus_per_worker=cfg.cpus_per_worker or 1.0,
        resources=resources.of(cfg.resources),
        num_to_keep=num_to_keep,
        score_attribute="val_auc",
    )
    return run_trainer(
        classifier_worker, asdict(cfg), spec, s3=s3, datasets=training_datasets(cfg, s3), datasets_to_split=["train"],
        callbacks=callbacks,
    )


def training_datasets(cfg: ClassifierConfig, s3: S3Settings | None) -> dict[str, Any]:
    """The run's "train" (shuffled, then split between the workers) and "val" (whole, rank 0) Ray Datasets.

    Rows come table by table (reals, then each fake table; within a table class by class), and Ray Train splits
    "train" into contiguous shards: unshuffled, one rank trained on reals alone and another mostly on fakes, so
    BatchNorm's batch statistics told the classes apart in training while its running statistics (rank 0's, all
    real) failed at evaluation. train_per_class cuts the train rows only.
    """
    data = task_data(cfg)
    train = read_split(data, ["train"], s3, per_class=cfg.train_per_class, seed=cfg.seed).random_shuffle(seed=cfg.seed)
    return {"train": train, "val": read_split(data, ["val"], s3, per_class=cfg.train_per_class, seed=cfg.seed)}


def check_inputs(cfg: ClassifierConfig, s3: S3Settings | None) -> None:
    """Every table the run reads exists and was completely written (DatasetError naming it otherwise)."""
    for table in task_data(cfg).tables():
        require_complete(table, s3)


def train_classifier(
    cfg: ClassifierConfig,
    *,
    s3: S3Settings | None = None,
    log: Callable[[str], None] = print,
    address: str | None = None,
) -> dict[str, Any]:
    """Train (or resume) the run, then evaluate its best checkpoint on the test split once.

    Inputs are checked before Ray starts, so a wrong path fails in a moment.
    """
    from cxr_ray.data.fingerprint import claim_run_name, run_inputs

    s3 = s3 or S3Settings.from_env()
    cfg = for_workers(cfg)
    check_inputs(cfg, s3)
    # Re-used only when trained on these inputs (config, tables' content); else retrained under a new name.
    inputs = run_inputs(cfg.identity(), task_data(cfg).tables(), s3)
    cfg = replace(cfg, name=claim_run_name(cfg.storage, cfg.run_name(), inputs, s3, log))
    done = storage.join(run_uri(cfg), TEST_METRICS_FILE)
    if storage.exists(done, s3):
        log(f"[train] {cfg.name}: finished earlier on the same inputs; test metrics at {done}")
        return storage.read_json(done, s3)
    init_ray(address)
    log(f"[train] {cfg.name}: {cfg.task}/{cfg.model} on {cfg.num_workers} workers, {cfg.epochs} epochs -> {run_uri(cfg)}")
    t0 = time.perf_counter()
    result = launch_classifier(cfg, s3=s3)
    train_seconds = time.perf_counter() - t0  # a failed run raised TrainingFailedError from fit() (Train V2)
    # The latest checkpoint holds every epoch's record; the best one only those up to it.
    history = read_state(result.checkpoint)["history"]
    return evaluate_on_test(cfg, best_checkpoint(result), history, s3=s3, train_seconds=train_seconds, log=log)


def best_checkpoint(result: Any) -> Any:
    """Best by val AUC (NaN-safe); the latest when no epoch has a finite AUC."""
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if isinstance(m.get("val_auc"), float) and math.isfinite(m["val_auc"])]
    if scored:
        return max(scored, key=lambda cm: (cm[1]["val_auc"], cm[1]["epoch"]))[0]
    return result.checkpoint


# ---------------------------------------------------------------- the one test evaluation


def evaluate_on_test(
    cfg: ClassifierConfig,
    checkpoint: Any,
    history: list[dict[str, Any]],
    *,
    s3: S3Settings | None = None,
    train_seconds: float | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The one evaluation on the test split: metrics with 95% patient-bootstrap intervals, as JSON and Parquet.

    The best checkpoint's val split is scored in the same task; the operating
    points and the temperature are fixed on it, then applied to test.
    """
    from cxr_ray.operating import at_points, val_selection

    state = check_classifier_state(read_state(checkpoint), storage.join(checkpoint.path, STATE_FILE))
    scored = score_splits(cfg, state, s3)
    val, test = scored["val"], scored["test"]
    threshold = float(state["threshold"])
    summary = summarize(test["target"], test["score"], threshold, n_boot=cfg.n_boot, seed=cfg.seed, groups=test["patient_id"])
    out = test_record(cfg, state, summary, checkpoint.path, train_seconds)
    # The Youden point stays the threshold the run chose on val during training (its "threshold").
    out.update(val_selection(val["target"], val["score"], youden=threshold))
    out["test_at"] = at_points(
        test["target"], test["score"], out["operating_points"], groups=test["patient_id"], n_boot=cfg.n_boot, seed=cfg.seed
    )
    write_test_outputs(cfg, out, summary, scored, history, s3)
    log(test_line(out))
    return out


def score_splits(cfg: ClassifierConfig, state: dict[str, Any], s3: S3Settings | None) -> dict[str, dict[str, np.ndarray]]:
    """{"val", "test"}: {path, patient_id, target, score (P(class 1))}, scored in one Ray task (on a GPU when there is one)."""
    import ray

    settings = (s3 or S3Settings.from_env()).to_dict()
    options = resources.of(cfg.resources).task_options()
    return ray.get(_score_splits.options(**options).remote(state, asdict(cfg), settings))


def test_record(
    cfg: ClassifierConfig, state: dict[str, Any], summary: dict[str, Any], checkpoint_path: str, train_seconds: float | None
) -> dict[str, Any]:
    """The content of test_metrics.json (`checkpoint` is Ray's path: on S3, bucket/key without the scheme)."""
    return {
        "run": cfg.run_name(),
        "task": cfg.task,
        "model": cfg.model,
        "source": cfg.source if cfg.task == "pneumonia" else "real+fake",
        "best_epoch": int(state["epoch"]),
        "threshold": float(state["threshold"]),
        "val_metrics": state["val_metrics"],
        "test": {k: (float(v) if isinstance(v, float) else int(v)) for k, v in summary.items()},
        "train_seconds": train_seconds,
        "checkpoint": checkpoint_path,
        "config": state["config"],
    }


def metric_table(summary: dict[str, Any]) -> list[dict[str, float | str]]:
    """(metric, value, ci_low, ci_high) rows of test_metrics.parquet."""
    return [
        {
            "metric": k,
            "value": float(summary[k]),
            "ci_low": float(summary.get(f"{k}_ci_low", float("nan"))),
            "ci_high": float(summary.get(f"{k}_ci_high", float("nan"))),
        }
        for k in ("accuracy", "auc", "sensitivity", "specificity")
    ]


def write_test_outputs(
    cfg: ClassifierConfig,
    out: dict[str, Any],
    summary: dict[str, Any],
    scored: dict[str, dict[str, np.ndarray]],
    history: list[dict[str, Any]],
    s3: S3Settings | None,
) -> None:
    """Metrics table, per-image test and val predictions, history, and last test_metrics.json (the run's "finished" mark)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, base = storage.resolve(run_uri(cfg), s3)
    fs.create_dir(base, recursive=True)
    pq.write_table(pa.Table.from_pylist(metric_table(summary)), f"{base}/{TEST_METRICS_TABLE}", filesystem=fs)
    for split, name in (("test", TEST_PREDICTIONS_FILE), ("val", VAL_PREDICTIONS_FILE)):
        part = scored[split]
        table = pa.table(
            {
                "path": pa.array([str(p) for p in part["path"]], pa.string()),
                "patient_id": pa.array([str(p) for p in part["patient_id"]], pa.string()),
                "target": np.asarray(part["target"], np.int64),
                "score": np.asarray(part["score"], np.float64),
            }
        )
        pq.write_table(table, f"{base}/{name}", filesystem=fs)
    storage.write_json_atomic(storage.join(run_uri(cfg), HISTORY_FILE), history, s3)
    # Written last: its presence means "this run is finished".
    storage.write_json_atomic(storage.join(run_uri(cfg), TEST_METRICS_FILE), out, s3)


def test_line(out: dict[str, Any]) -> str:
    t = out["test"]
    line = (
        f"[test] {out['run']}: AUC {t['auc']:.3f} [{t['auc_ci_low']:.3f}, {t['auc_ci_high']:.3f}], "
        f"accuracy {t['accuracy']:.3f}, sensitivity {t['sensitivity']:.3f}, specificity {t['specificity']:.3f} "
        f"(threshold {out['threshold']:.3f} from val, best epoch {out['best_epoch']})"
    )
    at = out.get("test_at", {}).get("fpr_0.01")
    if at:
        line += f"; at the val FPR-1% threshold {at['threshold']:.4f}: TPR {at['tpr']:.3f}, test FPR {at['fpr']:.4f}"
    return line


def _remote_score():
    import ray

    @ray.remote
    def score(state: dict, cfg_dict: dict, s3: dict[str, Any]):
        from cxr_ray.data.datasets import load_arrays
        from cxr_ray.inference import build_model, predict_proba

        cfg = from_dict(ClassifierConfig, cfg_dict)
        model, out = build_model(state), {}
        for split in ("val", "test"):
            arrays = load_arrays(task_data(cfg), [split], S3Settings.from_dict(s3), columns=("path", "patient_id"))
            out[split] = {
                "path": arrays["path"], "patient_id": arrays["patient_id"], "target": arrays["target"],
                "score": predict_proba(model, arrays["image"]),
            }
        return out

    return score


class _LazyRemote:
    """Defer @ray.remote until first use, so importing this module does not import ray."""

    def __init__(self, factory):
        self._factory, self._fn = factory, None

    def options(self, **kwargs):
        if self._fn is None:
            self._fn = self._factory()
        return self._fn.options(**kwargs)


_score_splits = _LazyRemote(_remote_score)
