"""Ray Tune (ASHA) search over the classifier trainer, on validation AUC only.

Train V2 interop: each Tune trial runs a small driver function that builds
its own TorchTrainer (run name from the trial id) and passes metrics to Tune
through `TuneReportCallback`. The test split is never read here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.filenames import BEST_CONFIG_FILE
from cxr_ray.storage import S3Settings

TRIALS_TABLE = "trials.csv"
# Tune needs a non-empty request per trial; the driver only waits on its trainer.
TRIAL_DRIVER_CPU = 0.01


@dataclass(frozen=True)
class SearchConfig:
    """A search: the base classifier config, the space's bounds, and the budget."""

    data: str
    task: str = "pneumonia"
    model: str = "cnn"
    fakes: str | None = None
    source: str = "real"
    num_samples: int = 8
    max_epochs: int = 8  # ASHA's max_t; each trial also samples its own epoch count
    grace_period: int = 1
    reduction_factor: int = 2
    lr_range: tuple[float, float] = (1e-4, 3e-3)
    weight_decay_range: tuple[float, float] = (1e-6, 1e-3)
    batch_sizes: tuple[int, ...] = (32, 64, 128)
    aug_range: tuple[float, float] = (0.0, 1.0)
    workers_per_trial: int = 1
    max_concurrent_trials: int = 0  # 0: as many as the cluster fits
    storage: str = "runs/tune"
    name: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.max_epochs < 1:
            raise ConfigError("num_samples and max_epochs must be at least 1")
        if not 0 < self.lr_range[0] < self.lr_range[1]:
            raise ConfigError(f"lr_range must be increasing positive bounds, got {self.lr_range}")

    def search_name(self) -> str:
        return self.name or f"tune-{self.task}-{self.model}-{self.source}"


def search_space(cfg: SearchConfig) -> dict[str, Any]:
    from ray import tune

    epochs = sorted({max(1, cfg.max_epochs // 2), cfg.max_epochs})
    return {
        "lr": tune.loguniform(*cfg.lr_range),
        "weight_decay": tune.loguniform(*cfg.weight_decay_range),
        "batch_size": tune.choice(list(cfg.batch_sizes)),
        "aug_strength": tune.uniform(*cfg.aug_range),
        "epochs": tune.choice(epochs),
    }


def trial_base(cfg: SearchConfig) -> dict[str, Any]:
    """The ClassifierConfig fields every trial shares (a trial adds its sampled values and its name).

    Paths are made absolute here, on the driver: a trial runs in its own folder.
    """
    return {
        "data": storage.absolute(cfg.data),
        "task": cfg.task,
        "model": cfg.model,
        "fakes": storage.absolute(cfg.fakes) if cfg.fakes else None,
        "source": cfg.source,
        "num_workers": cfg.workers_per_trial,
        "storage": storage.absolute(storage.join(cfg.storage, cfg.search_name(), "trials")),
        "seed": cfg.seed,
        "max_failures": 1,
    }


def trial_driver(sampled: dict[str, Any], base: dict[str, Any], s3: dict[str, Any] | None) -> None:
    """One Tune trial: the classifier launch under the trial's name, metrics to Tune via the callback."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from cxr_ray.config import from_dict
    from cxr_ray.train.classifier import ClassifierConfig, launch_classifier

    trial_id = tune.get_context().get_trial_id()
    cfg = from_dict(ClassifierConfig, {**base, **sampled, "name": f"trial-{trial_id}"})
    launch_classifier(cfg, s3=S3Settings.from_dict(s3), num_to_keep=1, callbacks=[TuneReportCallback()])


def run_search(
    cfg: SearchConfig,
    *,
    s3: S3Settings | None = None,
    log: Callable[[str], None] = print,
    address: str | None = None,
) -> dict[str, Any]:
    """Run (or continue) the search; writes the trials table and the best config to storage."""
    from cxr_ray.runtime import init_ray
    from cxr_ray.train.classifier import ClassifierConfig, check_inputs

    s3 = s3 or S3Settings.from_env()
    base = trial_base(cfg)
    check_inputs(ClassifierConfig(**base), s3)
    init_ray(address)
    trainable = _trainable(base, s3)
    tuner = _restored_tuner(cfg, trainable, s3, log)
    if tuner is None:
        tuner = _new_tuner(cfg, trainable, s3)
    return write_search_results(cfg, tuner.fit(), s3, log)


def _trainable(base: dict[str, Any], s3: S3Settings) -> Any:
    from ray import tune

    trainable = tune.with_parameters(trial_driver, base=base, s3=s3.to_dict())
    # The trial driver only waits on its TorchTrainer: it must not hold a CPU
    # the trainer's workers need (on 2 CPUs that would deadlock).
    return tune.with_resources(trainable, tune.PlacementGroupFactory([{"CPU": TRIAL_DRIVER_CPU}]))


def _restored_tuner(cfg: SearchConfig, trainable: Any, s3: S3Settings, log: Callable[[str], None]) -> Any | None:
    """The interrupted search under this name, continued; None when there is none."""
    from ray import tune

    experiment_path = storage.join(cfg.storage, cfg.search_name())
    fs, exp_fs_path = storage.resolve(experiment_path, s3)
    storage_fs = fs if storage.is_s3(cfg.storage) else None
    if not tune.Tuner.can_restore(exp_fs_path, storage_filesystem=storage_fs):
        return None
    log(f"[tune] continuing the interrupted search at {experiment_path}")
    return tune.Tuner.restore(
        exp_fs_path, trainable=trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=storage_fs
    )


def _new_tuner(cfg: SearchConfig, trainable: Any, s3: S3Settings) -> Any:
    from ray import tune

    from cxr_ray.train.launch import ray_storage

    storage_path, storage_fs = ray_storage(cfg.storage, s3)
    tune_config = tune.TuneConfig(
        metric="val_auc",
        mode="max",
        num_samples=cfg.num_samples,
        max_concurrent_trials=_concurrent_trials(cfg),
        scheduler=_scheduler(cfg),
    )
    run_config = tune.RunConfig(name=cfg.search_name(), storage_path=storage_path, storage_filesystem=storage_fs)
    return tune.Tuner(trainable, param_space=search_space(cfg), tune_config=tune_config, run_config=run_config)


def _concurrent_trials(cfg: SearchConfig) -> int:
    """As asked, else as many trials as the cluster's CPUs fit."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1))
    return cfg.max_concurrent_trials or max(1, int(cpus // (cfg.workers_per_trial + TRIAL_DRIVER_CPU)))


def _scheduler(cfg: SearchConfig) -> Any | None:
    """ASHA on epochs; None (FIFO) for a one-epoch budget.

    ASHA needs two rungs to stop anything early; with a one-epoch budget FIFO
    lets every trial end on its own instead of being stopped by Tune while its
    trainer is still cleaning up.
    """
    from ray.tune.schedulers import ASHAScheduler

    if cfg.max_epochs <= 1:
        return None
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=cfg.max_epochs,
        grace_period=cfg.grace_period,
        reduction_factor=cfg.reduction_factor,
    )


def write_search_results(
    cfg: SearchConfig, results: Any, s3: S3Settings | None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Trials table (CSV) and best config (JSON) beside Tune's own experiment state."""
    import pandas as pd

    rows = []
    for r in results:
        metrics = r.metrics or {}
        auc = metrics.get("val_auc")
        rows.append(
            {
                "trial_id": metrics.get("trial_id"),
                **{k: v for k, v in (r.config or {}).items()},
                "epochs_run": metrics.get("training_iteration"),
                "val_auc": auc,
                "val_loss": metrics.get("val_loss"),
                "error": str(r.error).splitlines()[0] if r.error else "",
            }
        )
    table = pd.DataFrame(rows)
    root = storage.join(cfg.storage, cfg.search_name())
    storage.write_bytes_atomic(storage.join(root, TRIALS_TABLE), table.to_csv(index=False).encode(), s3)
    finite = [row for row in rows if isinstance(row["val_auc"], float) and math.isfinite(row["val_auc"])]
    if not finite:
        raise RuntimeError(f"search {cfg.search_name()}: no trial reported a finite val_auc; see {TRIALS_TABLE}")
    best = max(finite, key=lambda row: row["val_auc"])
    best_config = {k: best[k] for k in ("lr", "weight_decay", "batch_size", "aug_strength", "epochs")}
    out = {
        "search": cfg.search_name(),
        "metric": "val_auc",
        "best_val_auc": best["val_auc"],
        "best_trial": best["trial_id"],
        "best_config": best_config,
        "trials": len(rows),
        "trials_table": storage.join(root, TRIALS_TABLE),
        "space": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items() if k.endswith(("_range", "_sizes", "max_epochs"))},
    }
    storage.write_json_atomic(storage.join(root, BEST_CONFIG_FILE), out, s3)
    log(f"[tune] {cfg.search_name()}: best val AUC {best['val_auc']:.3f} with {best_config}")
    return out


def tuned(cfg_train: Any, best: dict[str, Any]) -> Any:
    """A ClassifierConfig with the search's best hyperparameters applied."""
    return replace(cfg_train, **best["best_config"])
