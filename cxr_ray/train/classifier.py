"""Classifier and detector training on Ray Train (DDP), with selection on validation.

One trainer serves both tasks: `pneumonia` (NORMAL vs PNEUMONIA, from real,
fake or both) and `deepfake` (real vs fake). Workers see only the train and
val splits; the test split is read once, after training, by
`evaluate_on_test`, with the threshold chosen on validation.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cxr_ray import storage
from cxr_ray.config import ConfigError, config_hash, from_dict
from cxr_ray.storage import S3Settings

TEST_METRICS_FILE = "test_metrics.json"
TEST_METRICS_TABLE = "test_metrics.parquet"
TEST_PREDICTIONS = "test_predictions.parquet"
HISTORY_FILE = "history.json"


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that defines a classifier run; the run name derives from it."""

    data: str  # ingested real table
    task: str = "pneumonia"
    model: str = "cnn"
    fakes: str | None = None  # generated fake table
    source: str = "real"  # pneumonia: train on real, fake or both
    epochs: int = 10
    batch_size: int = 64  # per worker
    lr: float = 1e-3
    weight_decay: float = 1e-4
    aug_strength: float = 0.5
    # Probability of a random blur or JPEG round trip per training image (0: off).
    # Detectors trained with it are scored under the same perturbations as the others.
    robust_aug: float = 0.0
    label_smoothing: float = 0.0
    pretrained: bool = False
    weights_path: str | None = None
    seed: int = 0
    # Execution (not part of the run's identity).
    storage: str = "runs/train"
    name: str | None = None
    num_workers: int = 2
    use_gpu: bool | None = None
    max_failures: int = 2
    # CPUs per worker (None: 1). Trainings that share a CPU-only node take less, so
    # the Ray Data tasks that feed each new training's workers still find a CPU.
    cpus_per_worker: float | None = None
    n_boot: int = 1000
    inject_failure: dict | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        from cxr_ray.data.datasets import SOURCES, TASKS

        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.source not in SOURCES:
            raise ConfigError(f"source must be one of {SOURCES}, got {self.source!r}")
        for key in ("epochs", "batch_size", "num_workers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.aug_strength <= 1:
            raise ConfigError(f"aug_strength must be in [0, 1], got {self.aug_strength}")
        if self.cpus_per_worker is not None and not self.cpus_per_worker > 0:
            raise ConfigError(f"cpus_per_worker must be positive, got {self.cpus_per_worker}")
        if not 0 <= self.robust_aug <= 1:
            raise ConfigError(f"robust_aug must be in [0, 1], got {self.robust_aug}")
        from cxr_ray.models import list_models

        if self.model not in list_models():
            raise ConfigError(f"model must be one of {', '.join(list_models())}, got {self.model!r}")
        if not self.data:
            raise ConfigError("data (the ingested real table) is required")

    def identity(self) -> dict[str, Any]:
        """The fields that change what is learnt (hashed into the default run name)."""
        skip = {"storage", "name", "num_workers", "use_gpu", "max_failures", "cpus_per_worker", "n_boot", "inject_failure"}
        if not self.robust_aug:
            skip.add("robust_aug")  # off: keep the names runs had before the option existed
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def run_name(self) -> str:
        return self.name or f"{self.task}-{self.model}-{self.source}-{config_hash(self.identity())}"


def task_data(cfg: ClassifierConfig):
    from cxr_ray.data.datasets import TaskData

    source = "both" if cfg.task == "deepfake" else cfg.source
    return TaskData(task=cfg.task, real=cfg.data, fake=cfg.fakes, source=source)


# ---------------------------------------------------------------- worker side


def classifier_worker(config: dict[str, Any]) -> None:
    """Per-worker training loop (Ray Train calls this on every rank)."""
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch
    import torch.nn.functional as F

    from cxr_ray import metrics as M
    from cxr_ray.checkpoint import model_state, unwrap_model
    from cxr_ray.models import create_model
    from cxr_ray.train import loop
    from cxr_ray.train.launch import report_epoch, resume_state

    cfg = from_dict(ClassifierConfig, {k: v for k, v in config.items() if not k.startswith("_")})
    rank, world_size = loop.world()
    device = loop.device_for_worker(bool(config.get("_use_gpu")))
    gen = loop.seed_everything(cfg.seed, rank)
    channels_last = device.type == "cuda"

    x_train, y_train = loop.load_shard("train", device)
    n_train = loop.agree_on_count(len(x_train), device)
    x_train, y_train = x_train[:n_train], y_train[:n_train]
    x_val, y_val = loop.load_shard("val", device) if rank == 0 else (None, None)
    image_size = int(x_train.shape[-1])

    model_kwargs = {"num_classes": 2, "in_channels": 1, "image_size": image_size}
    model = create_model(cfg.model, **model_kwargs, pretrained=cfg.pretrained, weights_path=cfg.weights_path)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)

    start_epoch, history = 0, []
    state = resume_state(config)
    if state is not None:
        unwrap_model(model).load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        start_epoch, history = int(state["epoch"]) + 1, list(state["history"])

    # Inverse-frequency class weights over all shards: the data is ~1:2.9.
    counts = loop.global_class_counts(y_train, 2)
    weights = (counts.sum() / (2 * counts.clamp(min=1))).to(torch.float32).to(device)
    steps = max(1, n_train // cfg.batch_size)
    if start_epoch >= cfg.epochs and history:
        # Resumed after the last epoch (the job died before it finished up):
        # report the final epoch again, so callers such as a Tune trial still
        # receive this run's metrics.
        report_epoch(dict(history[-1]), None)

    for epoch in range(start_epoch, cfg.epochs):
        loop.maybe_inject_failure(config, epoch, rank)
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for idx in loop.batches(n_train, cfg.batch_size, steps, gen):
            idx = idx.to(device)
            pixels = x_train[idx]
            if cfg.robust_aug:
                pixels = loop.robust_augment(pixels, cfg.robust_aug, seed=(cfg.seed * 1_000_003 + epoch) * 64 + rank)
            x = loop.augment(loop.to_input(pixels, channels_last), cfg.aug_strength, gen)
            with loop.autocast(device):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y_train[idx], weight=weights, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        scheduler.step()
        # .item() waits for the GPU's queued steps: without it the timer stops early.
        train_loss = float(loss_sum.item() / steps)
        seconds = time.perf_counter() - t0
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "lr": float(optimizer.param_groups[0]["lr"]),
            "epoch_seconds": seconds,
            "train_images_per_s": steps * cfg.batch_size * world_size / seconds,
        }
        state = None
        if rank == 0:
            metrics.update(_validate(unwrap_model(model), x_val, y_val, weights, device, channels_last, M, F, np))
            history.append(dict(metrics))
            state = {
                "kind": "classifier",
                "task": cfg.task,
                "model_name": cfg.model,
                "model_kwargs": model_kwargs,
                "model_state": model_state(model),
                "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(),
                "epoch": epoch,
                "config": asdict(replace(cfg, inject_failure=None)),
                "val_metrics": {k: v for k, v in metrics.items() if k.startswith("val_")},
                "threshold": metrics["val_threshold"],
                "history": history,
            }
        report_epoch(metrics, state)


def _validate(model, x_val, y_val, weights, device, channels_last, M, F, np) -> dict[str, float]:
    """Val loss, AUC and the threshold-based metrics at the val-chosen (Youden) threshold."""
    import torch

    model.eval()
    scores, losses = [], []
    from cxr_ray.train import loop

    with torch.no_grad():
        for start in range(0, len(x_val), 512):
            x = loop.to_input(x_val[start : start + 512], channels_last)
            with loop.autocast(device):
                logits = model(x).float()
            losses.append(F.cross_entropy(logits, y_val[start : start + 512], weight=weights, reduction="sum").item())
            scores.append(torch.softmax(logits, 1)[:, 1].cpu().numpy())
    y = y_val.cpu().numpy()
    s = np.concatenate(scores) if scores else np.zeros(0)
    threshold = float(M.choose_threshold(y, s)) if len(np.unique(y)) == 2 else 0.5
    at = M.threshold_metrics(y, s, threshold)
    return {
        "val_loss": float(sum(losses) / max(1, len(y))),
        "val_auc": float(M.roc_auc(y, s)),
        "val_accuracy": float(at["accuracy"]),
        "val_sensitivity": float(at["sensitivity"]),
        "val_specificity": float(at["specificity"]),
        "val_threshold": threshold,
    }


# ---------------------------------------------------------------- driver side


def train_classifier(
    cfg: ClassifierConfig, s3: S3Settings | None = None, log=print, address: str | None = None
) -> dict[str, Any]:
    """Train (or resume) the run, then evaluate its best checkpoint on the test split once.

    Inputs are checked before Ray starts, so a wrong path fails in a moment.
    """
    from cxr_ray.data.datasets import read_split, require_complete
    from cxr_ray.runtime import init_ray
    from cxr_ray.train.launch import LaunchSpec, run_trainer

    # Workers run in their own folder: give them absolute paths (the run name keeps the given ones).
    name = cfg.run_name()
    cfg = replace(
        cfg,
        name=name,
        data=storage.absolute(cfg.data),
        fakes=storage.absolute(cfg.fakes) if cfg.fakes else None,
        storage=storage.absolute(cfg.storage),
    )
    run_uri = storage.join(cfg.storage, name)
    done = storage.join(run_uri, TEST_METRICS_FILE)
    data = task_data(cfg)
    if storage.exists(done, s3):
        log(f"[train] {name}: finished earlier; test metrics at {done}")
        return storage.read_json(done, s3)
    for table in data.tables():
        require_complete(table, s3)

    init_ray(address)
    train_ds = read_split(data, ["train"], s3)
    val_ds = read_split(data, ["val"], s3)
    spec = LaunchSpec(
        name=name,
        storage=cfg.storage,
        num_workers=cfg.num_workers,
        use_gpu=cfg.use_gpu,
        max_failures=cfg.max_failures,
        cpus_per_worker=cfg.cpus_per_worker or 1.0,
        score_attribute="val_auc",
    )
    log(f"[train] {name}: {cfg.task}/{cfg.model} on {cfg.num_workers} workers, {cfg.epochs} epochs -> {run_uri}")
    t0 = time.perf_counter()
    result = run_trainer(
        classifier_worker,
        asdict(cfg),
        spec,
        s3=s3,
        datasets={"train": train_ds, "val": val_ds},
        datasets_to_split=["train"],
    )
    train_seconds = time.perf_counter() - t0
    if result.error:
        raise result.error
    from cxr_ray.train.launch import read_state

    # The latest checkpoint holds every epoch's record; the best one only those up to it.
    history = read_state(result.checkpoint)["history"]
    return evaluate_on_test(cfg, best_checkpoint(result), history, s3=s3, train_seconds=train_seconds, log=log)


def best_checkpoint(result: Any) -> Any:
    """Best by val AUC (NaN-safe); the latest when no epoch has a finite AUC."""
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if isinstance(m.get("val_auc"), float) and math.isfinite(m["val_auc"])]
    if scored:
        return max(scored, key=lambda cm: (cm[1]["val_auc"], cm[1]["epoch"]))[0]
    return result.checkpoint


def evaluate_on_test(
    cfg: ClassifierConfig,
    checkpoint: Any,
    history: list[dict[str, Any]],
    s3: S3Settings | None = None,
    train_seconds: float | None = None,
    log=print,
) -> dict[str, Any]:
    """The one evaluation on the test split: metrics with 95% bootstrap intervals, as JSON and Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from cxr_ray import metrics as M
    from cxr_ray.train.launch import read_state

    state = read_state(checkpoint)
    use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    scores_ref = _score_test_split.options(num_gpus=1 if use_gpu else 0).remote(state, asdict(cfg), s3)
    y, scores, paths = ray.get(scores_ref)
    threshold = float(state["threshold"])
    summary = M.summarize(y, scores, threshold, n_boot=cfg.n_boot, seed=cfg.seed)
    name = cfg.run_name()
    run_uri = storage.join(cfg.storage, name)
    out = {
        "run": name,
        "task": cfg.task,
        "model": cfg.model,
        "source": cfg.source if cfg.task == "pneumonia" else "real+fake",
        "best_epoch": int(state["epoch"]),
        "threshold": threshold,
        "val_metrics": state["val_metrics"],
        "test": {k: (float(v) if isinstance(v, float) else int(v)) for k, v in summary.items()},
        "train_seconds": train_seconds,
        "checkpoint": checkpoint.path,
        "config": state["config"],
    }
    rows = [
        {
            "metric": k,
            "value": float(summary[k]),
            "ci_low": float(summary.get(f"{k}_ci_low", float("nan"))),
            "ci_high": float(summary.get(f"{k}_ci_high", float("nan"))),
        }
        for k in ("accuracy", "auc", "sensitivity", "specificity")
    ]
    fs, base = storage.resolve(run_uri, s3)
    fs.create_dir(base, recursive=True)
    pq.write_table(pa.Table.from_pylist(rows), f"{base}/{TEST_METRICS_TABLE}", filesystem=fs)
    predictions = pa.table({"path": paths, "target": y.astype("int64"), "score": scores.astype("float64")})
    pq.write_table(predictions, f"{base}/{TEST_PREDICTIONS}", filesystem=fs)
    storage.write_json_atomic(storage.join(run_uri, HISTORY_FILE), history, s3)
    # Written last: its presence means "this run is finished".
    storage.write_json_atomic(storage.join(run_uri, TEST_METRICS_FILE), out, s3)
    t = out["test"]
    log(
        f"[test] {name}: AUC {t['auc']:.3f} [{t['auc_ci_low']:.3f}, {t['auc_ci_high']:.3f}], "
        f"accuracy {t['accuracy']:.3f}, sensitivity {t['sensitivity']:.3f}, specificity {t['specificity']:.3f} "
        f"(threshold {threshold:.3f} from val, best epoch {out['best_epoch']})"
    )
    return out


def _remote_score():
    import ray

    @ray.remote
    def score(state: dict, cfg_dict: dict, s3: S3Settings | None):
        from cxr_ray.data.datasets import load_arrays
        from cxr_ray.inference import build_model, predict_proba

        cfg = from_dict(ClassifierConfig, cfg_dict)
        arrays = load_arrays(task_data(cfg), ["test"], s3, columns=("path",))
        scores = predict_proba(build_model(state), arrays["image"])
        return arrays["target"], scores, arrays["path"].tolist()

    return score


class _LazyRemote:
    """Defer @ray.remote until first use, so importing this module does not import ray."""

    def __init__(self, factory):
        self._factory, self._fn = factory, None

    def options(self, **kwargs):
        if self._fn is None:
            self._fn = self._factory()
        return self._fn.options(**kwargs)


_score_test_split = _LazyRemote(_remote_score)
