"""The full study as one job: ingest -> GAN per class -> generate -> tune -> train -> evaluate -> report.

Shared by `jobs/full_study.py` (for `ray job submit`) and `cxr-ray study`.
Every stage is recorded in the study manifest (cxr_ray/manifest.py): a
re-run skips finished stages, resumes an interrupted one, and re-runs only
what a changed setting feeds into. Independent trainings (the two GANs, the
classifiers, the detectors) run side by side when the cluster has room.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from cxr_ray import storage
from cxr_ray.storage import S3Settings

SAMPLE_DATA = str(Path(__file__).resolve().parent / "sample" / "chest_xray")
MODELS = ("cnn", "resnet18", "resnet50", "mobilenet_v2")
CLASSES = ("NORMAL", "PNEUMONIA")


@dataclass(frozen=True)
class Profile:
    """Every knob of a study; profiles set defaults, the command line overrides any of them."""

    name: str
    data: str | None  # None: must be given with --data
    resolution: int = 64
    gan_epochs: int = 25
    gan_width: int = 64  # ngf = ndf
    fakes_per_class: int = 500  # the seed study's number: detector train+val fakes per class
    test_fakes_per_class: int = 500  # held-out fakes per class
    models: tuple[str, ...] = MODELS
    epochs: int = 10
    batch_size: int = 64
    workers: int = 1  # per training (Ray Train workers; one GPU each on GPU clusters)
    tune_models: tuple[str, ...] = MODELS
    tune_samples: int = 8
    tune_max_epochs: int = 8
    robust_models: tuple[str, ...] = MODELS  # detectors also trained with blur/JPEG augmentation
    robust_aug: float = 0.5  # its per-image probability
    n_boot: int = 1000
    seed: int = 0


PROFILES = {
    # CPU, minutes, the embedded sample: every stage runs, numbers are not meaningful.
    "quick": Profile(
        name="quick", data=SAMPLE_DATA, gan_epochs=3, gan_width=16, fakes_per_class=100, test_fakes_per_class=30,
        epochs=1, batch_size=32, tune_models=("cnn",), tune_samples=2, tune_max_epochs=1, robust_models=("cnn",),
        n_boot=200,
    ),
    # GPU defaults, the whole dataset.
    "full": Profile(name="full", data=None),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="full_study.py",
        description="Run the chest X-ray deepfake study on Ray (local or cluster, local or S3 storage).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Examples:\n"
            "  python jobs/full_study.py                                   # quick study, embedded sample, runs/study\n"
            "  cxr-ray study --profile full --data ../shared/data/chest_xray --storage s3://bucket/study\n"
            "  ray job submit --working-dir . -- python jobs/full_study.py --profile full --data s3://bucket/chest_xray \\\n"
            "      --storage s3://bucket/study --epochs 5 --models cnn,resnet18\n"
            "Re-running the same command skips finished stages and resumes an interrupted one."
        ),
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    p.add_argument("--data", help="Kaggle-layout source folder, path or s3:// (quick default: embedded sample)")
    p.add_argument("--storage", default="runs/study", help="study root, path or s3:// (default runs/study)")
    p.add_argument("--resolution", type=int, choices=(64, 128, 224))
    p.add_argument("--gan-epochs", type=int)
    p.add_argument("--gan-width", type=int, help="DCGAN ngf = ndf")
    p.add_argument("--fakes-per-class", type=int)
    p.add_argument("--test-fakes-per-class", type=int)
    p.add_argument("--models", help="comma-separated subset of " + ",".join(MODELS))
    p.add_argument("--epochs", type=int, help="classifier/detector epochs (when not tuned)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int, help="Ray Train workers per training")
    p.add_argument("--tune-models", help="comma-separated models to tune ('' for none)")
    p.add_argument("--robust-models", help="comma-separated models whose detector is also trained with blur/JPEG augmentation ('' for none)")
    p.add_argument("--robust-aug", type=float, help="per-image probability of that augmentation")
    p.add_argument("--tune-samples", type=int)
    p.add_argument("--tune-max-epochs", type=int)
    p.add_argument("--n-boot", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--sequential", action="store_true", help="run trainings one after another (for timing)")
    p.add_argument("--overwrite", action="store_true", help="redo every stage")
    p.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (else CXR_RAY_S3_ENDPOINT / AWS_ENDPOINT_URL)")
    p.add_argument("--s3-region", help="S3 region (else AWS_REGION)")
    p.add_argument("--address", help="Ray address (else RAY_ADDRESS, else a local Ray)")
    return p


def profile_from_args(args: argparse.Namespace) -> Profile:
    profile = PROFILES[args.profile]
    overrides: dict[str, Any] = {}
    for key in (
        "data", "resolution", "gan_epochs", "gan_width", "fakes_per_class", "test_fakes_per_class", "epochs",
        "batch_size", "workers", "tune_samples", "tune_max_epochs", "robust_aug", "n_boot", "seed",
    ):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    for key in ("models", "tune_models", "robust_models"):
        value = getattr(args, key)
        if value is not None:
            names = tuple(m for m in value.split(",") if m)
            unknown = sorted(set(names) - set(MODELS))
            if unknown:
                raise SystemExit(f"--{key.replace('_', '-')}: unknown model(s) {', '.join(unknown)}")
            overrides[key] = names
    profile = replace(profile, **overrides)
    if profile.data is None:
        raise SystemExit(f"profile {profile.name!r} needs --data (a Kaggle-layout folder or s3:// prefix)")
    return profile


class Timeline:
    """Start/end of every training, for the report's timeline and the speed-up figure."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def run(self, stage: str, name: str, fn: Callable[[], Any]) -> Any:
        start = time.time()
        try:
            return fn()
        finally:
            with self._lock:
                self.rows.append({"stage": stage, "name": name, "start": start, "end": time.time()})


def parallel(jobs: list[tuple[str, Callable[[], Any]]], max_parallel: int) -> dict[str, Any]:
    """Run independent jobs (each a blocking TorchTrainer.fit or Ray Data job) side by side."""
    if max_parallel <= 1:
        return {name: fn() for name, fn in jobs}
    with ThreadPoolExecutor(max_workers=max_parallel) as pool:
        futures = {name: pool.submit(fn) for name, fn in jobs}
        return {name: f.result() for name, f in futures.items()}


def slots(ray: Any, workers_per_job: int) -> int:
    """How many trainings fit on the cluster at once (GPUs if any, else CPUs)."""
    res = ray.cluster_resources()
    if res.get("GPU", 0) >= 1:
        return max(1, int(res["GPU"] // workers_per_job))
    return max(1, int(res.get("CPU", 1) // workers_per_job))


def cpu_share(ray: Any, workers_per_job: int, width: int) -> float | None:
    """CPUs per training worker when `width` trainings share a CPU-only cluster; None on GPUs or alone.

    See `launch.cpus_per_worker`: one CPU stays free for the Ray Data tasks
    that load each new training's shard.
    """
    from cxr_ray.train.launch import cpus_per_worker

    if ray.cluster_resources().get("GPU", 0) >= 1 or width <= 1:
        return None
    return cpus_per_worker(workers_per_job, concurrent=width)


def run_study(args: argparse.Namespace, log=print) -> dict[str, Any]:
    from cxr_ray.config import IngestConfig, to_dict
    from cxr_ray.data.ingest import format_summary, run_ingest
    from cxr_ray.manifest import Manifest, stage_hash
    from cxr_ray.runtime import init_ray

    profile = profile_from_args(args)
    s3 = S3Settings.from_env()
    if args.s3_endpoint:
        s3 = replace(s3, endpoint_url=args.s3_endpoint)
    if args.s3_region:
        s3 = replace(s3, region=args.s3_region)
    root = args.storage if storage.is_s3(args.storage) else str(Path(args.storage).resolve())
    ray = init_ray(args.address)
    manifest = Manifest.load(root, s3)
    if args.overwrite:
        manifest.stages.clear()
    timeline = Timeline()
    t_study = time.time()
    width = 1 if args.sequential else slots(ray, profile.workers)
    share = cpu_share(ray, profile.workers, width)
    log(f"study {profile.name}: data {profile.data} -> {root}; up to {width} trainings at once")

    # 1. Ingest.
    ingest_uri = storage.join(root, "data", f"real-{profile.resolution}")
    h_ingest = stage_hash({"data": profile.data, "resolution": profile.resolution, "seed": profile.seed}, [])

    def ingest() -> dict[str, Any]:
        summary = run_ingest(
            IngestConfig(src=profile.data, dest=ingest_uri, resolution=profile.resolution, seed=profile.seed,
                         overwrite=True, s3=s3),
            log=log,
        )
        log(format_summary(summary))
        return {"table": ingest_uri, "summary": summary}

    manifest.run("ingest", h_ingest, ingest, log)

    # 2. One DCGAN per class, side by side.
    from cxr_ray.train.gan import GanConfig, train_gan

    gan_cfgs = {
        cls: GanConfig(
            data=ingest_uri, storage=storage.join(root, "gan"), class_name=cls, epochs=profile.gan_epochs,
            ngf=profile.gan_width, ndf=profile.gan_width, num_workers=profile.workers, seed=profile.seed,
        )
        for cls in CLASSES
    }
    h_gan = stage_hash({c: to_dict(g) for c, g in gan_cfgs.items()}, [h_ingest])

    def gans() -> dict[str, Any]:
        jobs = [
            (cls, lambda cls=cls: timeline.run("gan", f"dcgan-{cls}", lambda: train_gan(gan_cfgs[cls], s3, log=log)))
            for cls in CLASSES
        ]
        return parallel(jobs, min(width, len(jobs)))

    gan_out = manifest.run("gan", h_gan, gans, log)

    # GAN quality: Frechet distance and KID in a project-trained X-ray encoder's feature space.
    from cxr_ray.gan_quality import evaluate_generator

    from cxr_ray.gan_curve import quality_curve

    def gan_quality() -> dict[str, Any]:
        # The final generators against the test split (the reference the issue names), and the curve over
        # training from each epoch's sample grid against val.
        return {
            cls: {
                **evaluate_generator(gan_out[cls]["checkpoint"], seed=profile.seed, s3=s3, log=log),
                "curve": quality_curve(gan_out[cls]["run_dir"], split="val", seed=profile.seed, s3=s3, log=log),
            }
            for cls in CLASSES
        }

    manifest.run("gan_quality", stage_hash("gan_quality", [h_gan]), gan_quality, log)

    # 3. Fakes: detector train/val seeds and held-out test seeds, per class.
    from cxr_ray.generate import TEST_SEED_START, GenerateConfig, run_generate

    fakes_uri = storage.join(root, "data", f"fake-{profile.resolution}")
    gen_cfg = GenerateConfig(
        generators=tuple(gan_out[c]["run_dir"] for c in CLASSES), dest=fakes_uri,
        train_seeds=(0, profile.fakes_per_class),
        test_seeds=(TEST_SEED_START, TEST_SEED_START + profile.test_fakes_per_class), overwrite=True, s3=s3,
    )
    h_gen = stage_hash({k: v for k, v in asdict(gen_cfg).items() if k != "s3"}, [h_gan])
    manifest.run("generate", h_gen, lambda: {"table": fakes_uri, "summary": run_generate(gen_cfg, log=log)}, log)

    # 4. Tune (validation AUC only) the chosen models on real data.
    from cxr_ray.tune import SearchConfig, run_search

    tune_cfgs = {
        m: SearchConfig(
            data=ingest_uri, model=m, num_samples=profile.tune_samples, max_epochs=profile.tune_max_epochs,
            batch_sizes=(profile.batch_size,) if profile.name == "quick" else (32, 64, 128),
            workers_per_trial=profile.workers, storage=storage.join(root, "tune"), seed=profile.seed,
        )
        for m in profile.tune_models
        if m in profile.models
    }
    h_tune = stage_hash({m: asdict(c) for m, c in tune_cfgs.items()}, [h_ingest])

    def tune_all() -> dict[str, Any]:
        return {m: timeline.run("tune", f"tune-{m}", lambda c=c: run_search(c, s3, log=log)) for m, c in tune_cfgs.items()}

    tuned = manifest.run("tune", h_tune, tune_all, log)

    # 5. Classifiers (real, fake) and detectors, side by side.
    from cxr_ray.train.classifier import ClassifierConfig, train_classifier

    runs_root = storage.join(root, "runs")

    def classifier_cfg(model: str, task: str, source: str, robust_aug: float = 0.0) -> ClassifierConfig:
        best = tuned.get(model, {}).get("best_config", {})
        hp = {"epochs": profile.epochs, "batch_size": profile.batch_size, **best}
        # Run names: task-label-source, where the label is the model, "-robust" for blur/JPEG-augmented training.
        label = f"{model}-robust" if robust_aug else model
        return ClassifierConfig(
            data=ingest_uri, fakes=fakes_uri, task=task, model=model, source=source, storage=runs_root,
            num_workers=profile.workers, seed=profile.seed, n_boot=profile.n_boot, robust_aug=robust_aug,
            cpus_per_worker=share,
            name=f"{task}-{label}-{source}", **hp,
        )

    train_cfgs = [classifier_cfg(m, "pneumonia", src) for m in profile.models for src in ("real", "fake")]
    train_cfgs += [classifier_cfg(m, "deepfake", "real") for m in profile.models]
    train_cfgs += [classifier_cfg(m, "deepfake", "real", profile.robust_aug) for m in profile.robust_models if m in profile.models]
    h_train = stage_hash([asdict(c) for c in train_cfgs], [h_gen, h_tune])

    def train_all() -> dict[str, Any]:
        jobs = [
            (c.run_name(), lambda c=c: timeline.run("train", c.run_name(), lambda: train_classifier(c, s3, log=log)))
            for c in train_cfgs
        ]
        return {name: {"run_dir": storage.join(runs_root, name), "test": out["test"]}
                for name, out in parallel(jobs, width).items()}

    manifest.run("train", h_train, train_all, log)

    # 6. Cross-evaluation (with perturbations) and the transfer matrix.
    from cxr_ray.evaluate import EvaluateConfig, run_evaluate
    from cxr_ray.transfer import TransferConfig, run_transfer

    eval_cfg = EvaluateConfig(runs=(runs_root,), real=ingest_uri, fakes=fakes_uri, dest=storage.join(root, "evaluate"),
                              n_boot=profile.n_boot, seed=profile.seed, overwrite=True, s3=s3)
    transfer_cfg = TransferConfig(runs=(runs_root,), real=ingest_uri, fakes=fakes_uri, dest=storage.join(root, "transfer"),
                                  n_boot=profile.n_boot, seed=profile.seed, overwrite=True, s3=s3)
    h_eval = stage_hash({"eval": {k: v for k, v in asdict(eval_cfg).items() if k != "s3"},
                         "transfer": {k: v for k, v in asdict(transfer_cfg).items() if k != "s3"}}, [h_train])

    def evaluate() -> dict[str, Any]:
        return {"evaluate": run_evaluate(eval_cfg, log=log), "transfer": run_transfer(transfer_cfg, log=log)}

    manifest.run("evaluate", h_eval, evaluate, log)

    # 7. Report (always rebuilt: cheap, and it should show this run's timeline).
    record_timeline(manifest, timeline, t_study, width)
    from cxr_ray.report.build import build_report

    report = build_report(root, s3, log=log)
    log(f"study finished in {time.time() - t_study:.0f} s; report: {report['html']}")
    return {"root": root, "report": report}


def record_timeline(manifest: Any, timeline: Timeline, t_study: float, width: int) -> None:
    """Keep the trainings' start/end across re-runs: a skipped stage keeps its earlier rows."""
    previous = manifest.stages.get("timeline", {}).get("outputs", {}).get("rows", [])
    fresh = {r["name"] for r in timeline.rows}
    rows = [r for r in previous if r["name"] not in fresh] + timeline.rows
    manifest.start("timeline", "-")
    manifest.finish("timeline", {"rows": rows, "max_parallel": width, "study_seconds": time.time() - t_study})


def run_study_cli(argv: Sequence[str] | None = None) -> int:
    from cxr_ray.checkpoint import CheckpointError
    from cxr_ray.config import ConfigError
    from cxr_ray.data.datasets import DatasetError
    from cxr_ray.data.ingest import IngestError
    from cxr_ray.storage import StorageError

    args = build_parser().parse_args(argv)
    try:
        run_study(args)
    except (ConfigError, IngestError, StorageError, DatasetError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
