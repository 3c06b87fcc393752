"""A small Ray Tune search for one class's DCGAN, scored by the Frechet distance to real *validation* images.

The space is small on purpose (learning rate, Adam beta1, network width): the
DCGAN recipe is well known, and each trial is a whole GAN training. A GAN has
no validation loss that means anything, so each trial's driver function
trains its TorchTrainer (`train_gan`), then draws fakes and reports FD and
KID against the val split of its class in the project's X-ray encoder's
feature space (`cxr_ray.gan_quality`). The encoder is trained once, before
the trials, and shared. The objective exists only after training, so a
trial reports once and the search runs FIFO (no early stopping). The test
split is never read.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.filenames import BEST_CONFIG_FILE
from cxr_ray.storage import S3Settings

TRIALS_TABLE = "trials.csv"
ENCODER_FILE = "quality-encoder.pt"
TRIAL_DRIVER_CPU = 0.01  # as in cxr_ray.tune: the driver only waits on its trainer


@dataclass(frozen=True)
class GanSearchConfig:
    """One class's GAN search: the space's bounds and the budget."""

    data: str
    class_name: str = "NORMAL"
    num_samples: int = 4
    epochs: int = 10  # per trial (every trial trains the same budget)
    lr_range: tuple[float, float] = (1e-4, 5e-4)
    beta1_choices: tuple[float, ...] = (0.5, 0.7)
    width_choices: tuple[int, ...] = (32, 64)  # ngf = ndf
    workers_per_trial: int = 1
    max_concurrent_trials: int = 0  # 0: as many as the cluster fits
    n_fake: int = 500
    storage: str = "runs/tune"
    name: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.class_name not in ("NORMAL", "PNEUMONIA"):
            raise ConfigError(f"class_name must be NORMAL or PNEUMONIA, got {self.class_name!r}")
        for key in ("num_samples", "epochs", "workers_per_trial", "n_fake"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if not 0 < self.lr_range[0] < self.lr_range[1]:
            raise ConfigError(f"lr_range must be increasing positive bounds, got {self.lr_range}")
        if not self.beta1_choices or not all(0 <= b < 1 for b in self.beta1_choices):
            raise ConfigError(f"beta1_choices must be in [0, 1), got {self.beta1_choices}")
        if not self.width_choices or min(self.width_choices) < 1:
            raise ConfigError(f"width_choices must be positive, got {self.width_choices}")

    def search_name(self) -> str:
        return self.name or f"tune-dcgan-{self.class_name.lower()}"


def gan_search_space(cfg: GanSearchConfig) -> dict[str, Any]:
    from ray import tune

    return {
        "lr": tune.loguniform(*cfg.lr_range),
        "beta1": tune.choice(list(cfg.beta1_choices)),
        "width": tune.choice(list(cfg.width_choices)),
    }


def gan_trial_driver(sampled: dict[str, Any], base: dict[str, Any], s3: dict[str, Any] | None) -> None:
    """One trial: train a DCGAN (its own TorchTrainer), then report val FD/KID of its fakes to Tune."""
    from ray import tune

    from cxr_ray.gan_quality import evaluate_generator
    from cxr_ray.train.gan import GanConfig, train_gan

    settings = S3Settings.from_dict(s3)
    trial_id = tune.get_context().get_trial_id()
    base = dict(base)
    encoder_uri, n_fake = base.pop("_encoder"), base.pop("_n_fake")
    cfg = GanConfig(
        **base, lr=float(sampled["lr"]), beta1=float(sampled["beta1"]),
        ngf=int(sampled["width"]), ndf=int(sampled["width"]), name=f"trial-{trial_id}",
    )
    summary = train_gan(cfg, s3=settings, log=lambda m: None)
    quality = evaluate_generator(
        summary["run_dir"], split="val", n_fake=n_fake, encoder_uri=encoder_uri, baselines=False,
        seed=cfg.seed, s3=settings, log=lambda m: None,
    )
    row = quality["rows"][0]
    tune.report({
        "val_fd": float(row["fd"]), "val_kid": float(row["kid"]), "loss_d": summary["losses"][-1]["loss_d"],
        "loss_g": summary["losses"][-1]["loss_g"], "epochs": summary["epochs"], "run_dir": summary["run_dir"],
        "feature_dim": quality["feature"]["dim"], "n_real_val": quality["n_real"],
    })


def run_gan_search(
    cfg: GanSearchConfig, *, s3: S3Settings | None = None, log: Callable[[str], None] = print, address: str | None = None
) -> dict[str, Any]:
    """Run (or continue) the search; writes the trials table and the best config (lowest val FD)."""
    from ray import tune

    from cxr_ray.data.datasets import require_complete
    from cxr_ray.gan_quality import load_or_train_encoder
    from cxr_ray.runtime import init_ray
    from cxr_ray.train.launch import ray_storage

    s3 = s3 or S3Settings.from_env()
    name = cfg.search_name()
    root = storage.join(cfg.storage, name)
    data = storage.absolute(cfg.data)
    require_complete(data, s3)
    ray = init_ray(address)
    encoder_uri = storage.absolute(storage.join(root, ENCODER_FILE))
    load_or_train_encoder(encoder_uri, data, s3, log)  # once, before any trial needs it

    base = {
        "data": data, "class_name": cfg.class_name, "epochs": cfg.epochs, "num_workers": cfg.workers_per_trial,
        "storage": storage.absolute(storage.join(root, "trials")), "seed": cfg.seed,
        "_encoder": encoder_uri, "_n_fake": cfg.n_fake,
    }
    trainable = tune.with_parameters(gan_trial_driver, base=base, s3=s3.to_dict())
    trainable = tune.with_resources(trainable, tune.PlacementGroupFactory([{"CPU": TRIAL_DRIVER_CPU}]))
    storage_path, storage_fs = ray_storage(cfg.storage, s3)
    fs, exp_path = storage.resolve(root, s3)
    restore_fs = fs if storage.is_s3(cfg.storage) else None
    if tune.Tuner.can_restore(exp_path, storage_filesystem=restore_fs):
        log(f"[tune-gan] continuing the interrupted search at {root}")
        tuner = tune.Tuner.restore(
            exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=restore_fs
        )
    else:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        concurrent = cfg.max_concurrent_trials or max(1, int(cpus // (cfg.workers_per_trial + TRIAL_DRIVER_CPU)))
        tuner = tune.Tuner(
            trainable,
            param_space=gan_search_space(cfg),
            tune_config=tune.TuneConfig(
                metric="val_fd", mode="min", num_samples=cfg.num_samples, max_concurrent_trials=concurrent
            ),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_fs),
        )
    log(f"[tune-gan] {name}: {cfg.num_samples} trial(s) of {cfg.epochs} epoch(s), {cfg.class_name}, -> {root}")
    return write_gan_search_results(cfg, tuner.fit(), s3, log)


def write_gan_search_results(cfg: GanSearchConfig, results: Any, s3: S3Settings | None, log=print) -> dict[str, Any]:
    import pandas as pd

    rows = []
    for r in results:
        metrics = r.metrics or {}
        rows.append({
            "trial_id": metrics.get("trial_id"),
            **(r.config or {}),
            "val_fd": metrics.get("val_fd"),
            "val_kid": metrics.get("val_kid"),
            "run_dir": metrics.get("run_dir"),
            "error": str(r.error).splitlines()[0] if r.error else "",
        })
    root = storage.join(cfg.storage, cfg.search_name())
    storage.write_bytes_atomic(storage.join(root, TRIALS_TABLE), pd.DataFrame(rows).to_csv(index=False).encode(), s3)
    finite = [row for row in rows if isinstance(row["val_fd"], float) and math.isfinite(row["val_fd"])]
    if not finite:
        raise RuntimeError(f"search {cfg.search_name()}: no trial reported a finite val_fd; see {TRIALS_TABLE}")
    best = min(finite, key=lambda row: row["val_fd"])
    out = {
        "search": cfg.search_name(),
        "metric": "val_fd (min)",
        "class_name": cfg.class_name,
        "best_val_fd": best["val_fd"],
        "best_val_kid": best["val_kid"],
        "best_trial": best["trial_id"],
        "best_run_dir": best["run_dir"],
        "best_config": {"lr": best["lr"], "beta1": best["beta1"], "width": best["width"], "epochs": cfg.epochs},
        "trials": len(rows),
        "trials_table": storage.join(root, TRIALS_TABLE),
        "space": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items() if k.endswith(("_range", "_choices"))},
    }
    storage.write_json_atomic(storage.join(root, BEST_CONFIG_FILE), out, s3)
    log(f"[tune-gan] {cfg.search_name()}: best val FD {best['val_fd']:.3f} with {out['best_config']}")
    return out
