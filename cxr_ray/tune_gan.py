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

from dataclasses import asdict, dataclass
from typing import Any, Callable

from cxr_ray import resources, search, storage
from cxr_ray.config import ConfigError
from cxr_ray.filenames import BEST_CONFIG_FILE
from cxr_ray.storage import S3Settings

ENCODER_FILE = "quality-encoder.pt"


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
    resources: dict | None = None  # what each worker asks of a node (cxr_ray.resources); None: "auto"
    max_concurrent_trials: int = 0  # 0: as many as the cluster fits (declared resources: their pool size)
    n_fake: int = 500
    storage: str = "runs/tune"
    name: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        from cxr_ray.config import at_least, check_fields, check_name, positive_bounds, positive_choices

        check_fields(self)
        at_least(self, 0, "max_concurrent_trials", "seed")
        resources.of(self.resources)
        check_name("name", self.name)
        if self.class_name not in ("NORMAL", "PNEUMONIA"):
            raise ConfigError(f"class_name must be NORMAL or PNEUMONIA, got {self.class_name!r}")
        at_least(self, 1, "num_samples", "epochs", "workers_per_trial", "n_fake")
        positive_bounds(self, "lr_range")
        if not self.beta1_choices or not all(0 <= b < 1 for b in self.beta1_choices):
            raise ConfigError(f"beta1_choices must be in [0, 1), got {self.beta1_choices}")
        positive_choices(self, "width_choices")

    def search_name(self) -> str:
        return self.name or f"tune-dcgan-{self.class_name.lower()}"


def gan_search_space(cfg: GanSearchConfig) -> dict[str, search.Dimension]:
    """The searched values; the trials are drawn from it up front (`search.plan_trials`)."""
    return {
        "lr": search.loguniform(*cfg.lr_range),
        "beta1": search.choice(cfg.beta1_choices),
        "width": search.choice(cfg.width_choices),
    }


def gan_trial_driver(
    config: dict[str, Any], plan: dict[str, dict[str, Any]], base: dict[str, Any], s3: dict[str, Any] | None
) -> None:
    """One trial: train a DCGAN (its own TorchTrainer), then report val FD/KID of its fakes to Tune.

    The GAN run is named after the trial's key, so a re-run of the search
    continues (or reuses) this trial's own run.
    """
    from ray import tune

    from cxr_ray.gan_quality import evaluate_generator
    from cxr_ray.train.gan import GanConfig, train_gan

    settings = S3Settings.from_dict(s3)
    key = config["trial"]
    sampled = plan[key]
    base = dict(base)
    encoder_uri, n_fake = base.pop("_encoder"), base.pop("_n_fake")
    cfg = GanConfig(
        **base, lr=float(sampled["lr"]), beta1=float(sampled["beta1"]),
        ngf=int(sampled["width"]), ndf=int(sampled["width"]), name=f"trial-{key}",
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
    """Run (or continue, from the trial records) the search; writes the trials table and the best config (lowest val FD)."""
    from ray import tune

    from cxr_ray.data.datasets import require_complete
    from cxr_ray.gan_quality import load_or_train_encoder
    from cxr_ray.runtime import init_ray

    s3 = s3 or S3Settings.from_env()
    name = cfg.search_name()
    root = storage.join(cfg.storage, name)
    data = storage.absolute(cfg.data)
    require_complete(data, s3)
    init_ray(address)
    encoder_uri = storage.absolute(storage.join(root, ENCODER_FILE))
    load_or_train_encoder(encoder_uri, data, s3, log)  # once, before any trial needs it

    base = {
        "data": data, "class_name": cfg.class_name, "epochs": cfg.epochs, "num_workers": cfg.workers_per_trial,
        "resources": cfg.resources,
        "storage": storage.absolute(storage.join(root, "trials")), "seed": cfg.seed,
        "_encoder": encoder_uri, "_n_fake": cfg.n_fake,
    }
    plan = search.plan_trials(gan_search_space(cfg), cfg.num_samples, cfg.seed)
    run = search.SearchRun(
        root=root, metric="val_fd", mode="min",
        max_concurrent_trials=search.concurrent_trials(cfg.workers_per_trial, cfg.max_concurrent_trials, cfg.resources),
    )
    trainable = tune.with_parameters(gan_trial_driver, plan=plan, base=base, s3=s3.to_dict())
    log(f"[tune-gan] {name}: {cfg.num_samples} trial(s) of {cfg.epochs} epoch(s), {cfg.class_name}, -> {root}")
    records = search.run_trials(run, plan, trainable, s3=s3, log=log)
    return write_gan_search_results(cfg, records, s3, log)


def write_gan_search_results(
    cfg: GanSearchConfig, records: list[dict[str, Any]], s3: S3Settings | None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Trials table (CSV) and best config (JSON, lowest val FD), from the search's own trial records."""
    space = list(gan_search_space(cfg))
    rows = [{
        "trial_id": r["key"], **{k: r["config"].get(k) for k in space},
        "val_fd": r["metrics"].get("val_fd"), "val_kid": r["metrics"].get("val_kid"),
        "run_dir": r["metrics"].get("run_dir"), "error": search.record_error(r),
    } for r in records]
    root = storage.join(cfg.storage, cfg.search_name())
    table = search.write_trials_table(root, rows, s3)
    winner = search.best_record(records, "val_fd", "min", cfg.search_name())
    best, best_config = winner["metrics"], winner["config"]
    out = {
        "search": cfg.search_name(),
        "metric": "val_fd (min)",
        "class_name": cfg.class_name,
        "best_val_fd": best["val_fd"],
        "best_val_kid": best.get("val_kid"),
        "best_trial": winner["key"],
        "best_run_dir": best.get("run_dir"),
        "best_config": {"lr": best_config["lr"], "beta1": best_config["beta1"], "width": best_config["width"], "epochs": cfg.epochs},
        "trials": len(rows),
        "trials_table": table,
        "space": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items() if k.endswith(("_range", "_choices"))},
    }
    storage.write_json_atomic(storage.join(root, BEST_CONFIG_FILE), out, s3)
    log(f"[tune-gan] {cfg.search_name()}: best val FD {best['val_fd']:.3f} with {out['best_config']}")
    return out
