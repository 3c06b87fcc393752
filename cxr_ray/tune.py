"""Ray Tune (ASHA) search over the classifier trainer, on validation AUC only.

Train V2 interop: each Tune trial runs a small driver function that builds
its own TorchTrainer (run name `trial-<key>` from the planned trial's key) and
passes metrics to Tune through `TuneReportCallback`. The trials are planned
and recorded by `cxr_ray.search`, which resumes a search from its own JSON
records, never from Tune's pickles. The test split is never read here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from cxr_ray import resources, search, storage
from cxr_ray.config import ConfigError
from cxr_ray.filenames import BEST_CONFIG_FILE
from cxr_ray.storage import S3Settings

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
    resources: dict | None = None  # what each worker asks of a node (cxr_ray.resources); None: "auto"
    max_concurrent_trials: int = 0  # 0: as many as the cluster fits (declared resources: their pool size)
    storage: str = "runs/tune"
    name: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        from cxr_ray.config import at_least, check_fields, check_name, positive_bounds, positive_choices

        check_fields(self)
        resources.of(self.resources)
        at_least(self, 1, "num_samples", "max_epochs", "grace_period", "workers_per_trial")
        at_least(self, 2, "reduction_factor")
        at_least(self, 0, "max_concurrent_trials", "seed")
        check_name("name", self.name)
        positive_bounds(self, "lr_range", "weight_decay_range")
        if not 0 <= self.aug_range[0] <= self.aug_range[1] <= 1:
            raise ConfigError(f"aug_range must be increasing bounds in [0, 1], got {self.aug_range}")
        positive_choices(self, "batch_sizes")

    def search_name(self) -> str:
        return self.name or f"tune-{self.task}-{self.model}-{self.source}"


def search_space(cfg: SearchConfig) -> dict[str, search.Dimension]:
    """The searched values and their bounds; the trials are drawn from it up front (`search.plan_trials`)."""
    epochs = sorted({max(1, cfg.max_epochs // 2), cfg.max_epochs})
    return {
        "lr": search.loguniform(*cfg.lr_range),
        "weight_decay": search.loguniform(*cfg.weight_decay_range),
        "batch_size": search.choice(cfg.batch_sizes),
        "aug_strength": search.uniform(*cfg.aug_range),
        "epochs": search.choice(epochs),
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
        "resources": cfg.resources,
        "storage": storage.absolute(storage.join(cfg.storage, cfg.search_name(), "trials")),
        "seed": cfg.seed,
        "max_failures": 1,
    }


def trial_driver(
    config: dict[str, Any], plan: dict[str, dict[str, Any]], base: dict[str, Any], s3: dict[str, Any] | None
) -> None:
    """One Tune trial: the classifier launch of its planned values, metrics to Tune via the callback.

    The run is named after the trial's key, not Tune's trial id, so a re-run of
    the search continues this trial's own checkpoint.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    from cxr_ray.config import from_dict
    from cxr_ray.train.classifier import ClassifierConfig, launch_classifier

    key = config["trial"]
    cfg = from_dict(ClassifierConfig, {**base, **plan[key], "name": f"trial-{key}"})
    launch_classifier(cfg, s3=S3Settings.from_dict(s3), num_to_keep=1, callbacks=[TuneReportCallback()])


def run_search(
    cfg: SearchConfig,
    *,
    s3: S3Settings | None = None,
    log: Callable[[str], None] = print,
    address: str | None = None,
) -> dict[str, Any]:
    """Run (or continue, from the trial records) the search; writes the trials table and the best config."""
    from ray import tune

    from cxr_ray.runtime import init_ray
    from cxr_ray.train.classifier import ClassifierConfig, check_inputs

    s3 = s3 or S3Settings.from_env()
    base = trial_base(cfg)
    check_inputs(ClassifierConfig(**base), s3)
    init_ray(address)
    plan = search.plan_trials(search_space(cfg), cfg.num_samples, cfg.seed)
    run = search.SearchRun(
        root=storage.join(cfg.storage, cfg.search_name()), metric="val_auc", mode="max",
        max_concurrent_trials=search.concurrent_trials(cfg.workers_per_trial, cfg.max_concurrent_trials, cfg.resources),
        scheduler=_scheduler(cfg),
    )
    trainable = tune.with_parameters(trial_driver, plan=plan, base=base, s3=s3.to_dict())
    records = search.run_trials(run, plan, trainable, s3=s3, log=log)
    return write_search_results(cfg, records, s3, log)


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
    cfg: SearchConfig, records: list[dict[str, Any]], s3: S3Settings | None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Trials table (CSV) and best config (JSON), from the search's own trial records."""
    space = list(search_space(cfg))
    rows = []
    for r in records:
        m = r["metrics"]
        rows.append({
            "trial_id": r["key"], **{k: r["config"].get(k) for k in space},
            # a trial resumed by a re-run counts Tune iterations from its resume: the epoch index is what it ran
            "epochs_run": m["epoch"] + 1 if isinstance(m.get("epoch"), int) else m.get("training_iteration"),
            "val_auc": m.get("val_auc"), "val_loss": m.get("val_loss"), "error": search.record_error(r),
        })
    root = storage.join(cfg.storage, cfg.search_name())
    table = search.write_trials_table(root, rows, s3)
    best = search.best_record(records, "val_auc", "max", cfg.search_name())
    best_config = {k: best["config"][k] for k in space}
    out = {
        "search": cfg.search_name(),
        "metric": "val_auc",
        "best_val_auc": best["metrics"]["val_auc"],
        "best_trial": best["key"],
        "best_config": best_config,
        "trials": len(rows),
        "trials_table": table,
        "space": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items() if k.endswith(("_range", "_sizes", "max_epochs"))},
    }
    storage.write_json_atomic(storage.join(root, BEST_CONFIG_FILE), out, s3)
    log(f"[tune] {cfg.search_name()}: best val AUC {out['best_val_auc']:.3f} with {best_config}")
    return out


def tuned(cfg_train: Any, best: dict[str, Any]) -> Any:
    """A ClassifierConfig with the search's best hyperparameters applied."""
    return replace(cfg_train, **best["best_config"])
