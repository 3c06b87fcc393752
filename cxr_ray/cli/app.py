"""The `cxr-ray` command line: thin wrappers over the stage functions.

Only typer and the standard library are imported at start-up; torch, ray and
pyarrow are imported inside each command, so `cxr-ray --help` stays fast.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import typer

app = typer.Typer(
    name="cxr-ray",
    help="Distributed chest X-ray deepfake study on Ray: ingest, GANs, classifiers, detectors, scan.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

def _print_version(value: bool) -> None:
    if value:
        from cxr_ray import __version__

        typer.echo(f"cxr-ray {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Distributed chest X-ray deepfake study on Ray: ingest, GANs, classifiers, detectors, scan."""


from cxr_ray.cli.common import (
    MODEL,
    RAY_ADDRESS,
    REAL_TABLE,
    S3_ENDPOINT,
    S3_REGION,
    SEARCH_NAME,
    SEARCH_STORAGE,
    TRAINERS_SEED,
    WORKERS_PER_TRIAL,
    run_configured,
    run_stage,
)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  cxr-ray ingest ../shared/data/chest_xray runs/data/ingest-64\n\n"
        "  cxr-ray ingest s3://bucket/chest_xray s3://bucket/study/ingest-128 --resolution 128 "
        "--s3-endpoint http://127.0.0.1:9000 --overwrite"
    )
)
def ingest(
    src: str = typer.Argument(..., help="Kaggle-layout folder ({train,val,test}/{NORMAL,PNEUMONIA}/*): path or s3://."),
    dest: str = typer.Argument(..., help="Output folder for the Parquet table and summary: path or s3://."),
    resolution: int = typer.Option(64, help="Study resolution in pixels: 64, 128 or 224."),
    val_fraction: float = typer.Option(0.1, help="Share of train patients carved out for validation."),
    seed: int = typer.Option(0, help="Seed of the patient-level validation split."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DEST if it exists."),
    max_pixels: int = typer.Option(
        40_000_000, "--max-pixels", help="Larger images (width x height) are quarantined, never decoded; X-ray detectors make at most ~18 MP."
    ),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Decode a chest X-ray folder once into a Parquet image table (Ray Data)."""

    def build():
        from cxr_ray.config import IngestConfig
        from cxr_ray.data.ingest import run_ingest

        cfg = IngestConfig(
            src=src, dest=dest, resolution=resolution, val_fraction=val_fraction, seed=seed, overwrite=overwrite,
            max_pixels=max_pixels,
        )
        return cfg, run_ingest

    summary = run_stage(build, s3_endpoint, s3_region, address)
    from cxr_ray.data.ingest import format_summary

    typer.echo(format_summary(summary))


@app.command(
    epilog=(
        "Examples:\n\n"
        "  cxr-ray train --data runs/study/data/real-64 --model cnn --epochs 10\n\n"
        "  cxr-ray train --task deepfake --model resnet18 --data runs/study/data/real-64 "
        "--fakes runs/study/data/fake-archive-64 --storage s3://bucket/runs\n\n"
        "  cxr-ray train --config configs/cnn.yaml --workers 4 --gpu"
    )
)
def train(
    data: Optional[str] = REAL_TABLE,
    task: Optional[str] = typer.Option(None, help="pneumonia (NORMAL vs PNEUMONIA) or deepfake (real vs fake)."),
    model: Optional[str] = MODEL,
    fakes: Optional[list[str]] = typer.Option(
        None, help="Generated fake image table (needed for deepfake / source fake); repeat for several generator families."
    ),
    source: Optional[str] = typer.Option(None, help="pneumonia only: train on real, fake or both."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (default 10)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size per worker (default 64)."),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate (default 1e-3)."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay (default 1e-4)."),
    aug_strength: Optional[float] = typer.Option(None, help="On-device augmentation strength in [0, 1]."),
    robust_aug: Optional[float] = typer.Option(
        None, help="Probability in [0, 1] of a random blur or JPEG round trip per training image (robust detectors)."
    ),
    window_aug: Optional[float] = typer.Option(
        None, help="Probability in [0, 1] of a random window/level change (gamma, contrast stretch) per training image."
    ),
    resample_fakes: Optional[float] = typer.Option(None, help="Deepfake only: probability in [0, 1] that a real training image is halved, upsampled back and labelled fake."),
    resample_stored: Optional[bool] = typer.Option(None, help="Store those fakes in the real table's archive format and decode them as ingest does (same processing as stored fakes)."),
    input_filter: Optional[str] = typer.Option(None, help="Fixed input filter kept with the model: none (default) or npr."),
    real_novelty: Optional[bool] = typer.Option(None, help="Deepfake only: also flag features far from every real train image's."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--scratch", help="ImageNet weights (torchvision models)."),
    weights_path: Optional[str] = typer.Option(None, help="Local ImageNet weights file for --pretrained."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray Train workers (DDP ranks, default 2)."),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="Force GPU or CPU workers (default: GPU if the cluster has one)."),
    storage: Optional[str] = typer.Option(None, help="Runs root (path or s3://, default runs/train)."),
    name: Optional[str] = typer.Option(None, help="Run name; the same name resumes the same run."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    train_per_class: Optional[int] = typer.Option(
        None, help="Train on N images per class, drawn with --seed (default: every train image); val and test untouched."
    ),
    max_failures: Optional[int] = typer.Option(None, help="Worker failures to recover from (default 2)."),
    config: Optional[str] = typer.Option(None, "--config", help="YAML file of ClassifierConfig keys; flags override it."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Train a classifier or deepfake detector with Ray Train (DDP), then test it once."""

    def load():
        from cxr_ray.train.classifier import ClassifierConfig, train_classifier

        return ClassifierConfig, train_classifier

    overrides = dict(
        data=data, task=task, model=model, fakes=tuple(fakes) if fakes else None, source=source, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, aug_strength=aug_strength,
        robust_aug=robust_aug, window_aug=window_aug, resample_fakes=resample_fakes, resample_stored=resample_stored,
        input_filter=input_filter, real_novelty=real_novelty, pretrained=pretrained, weights_path=weights_path, num_workers=workers, use_gpu=gpu,
        storage=storage, name=name, seed=seed, max_failures=max_failures, train_per_class=train_per_class,
    )
    out = run_configured(load, config, overrides, s3_endpoint, s3_region, address)
    t = out["test"]
    typer.echo(
        f"{out['run']}: test AUC {t['auc']:.3f} [{t['auc_ci_low']:.3f}-{t['auc_ci_high']:.3f}] "
        f"accuracy {t['accuracy']:.3f} sensitivity {t['sensitivity']:.3f} specificity {t['specificity']:.3f}"
    )


@app.command(
    epilog=(
        "Examples:\n\n"
        "  cxr-ray tune --data runs/study/data/real-64 --model cnn --num-samples 8 --max-epochs 8\n\n"
        "  cxr-ray tune --data s3://bucket/study/data/real-64 --storage s3://bucket/study/tune --workers-per-trial 2\n\n"
        "  (re-running the same command continues an interrupted search)"
    )
)
def tune(
    data: Optional[str] = REAL_TABLE,
    task: Optional[str] = typer.Option(None, help="pneumonia or deepfake."),
    model: Optional[str] = MODEL,
    fakes: Optional[str] = typer.Option(None, help="Generated fake table (deepfake task or fake source)."),
    source: Optional[str] = typer.Option(None, help="pneumonia only: real, fake or both."),
    num_samples: Optional[int] = typer.Option(None, help="Trials to sample (default 8)."),
    max_epochs: Optional[int] = typer.Option(None, help="ASHA's epoch budget per trial (default 8)."),
    workers_per_trial: Optional[int] = WORKERS_PER_TRIAL,
    storage: Optional[str] = SEARCH_STORAGE,
    name: Optional[str] = SEARCH_NAME,
    seed: Optional[int] = TRAINERS_SEED,
    config: Optional[str] = typer.Option(None, "--config", help="YAML file of SearchConfig keys; flags override it."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Search a classifier's hyperparameters with Ray Tune (ASHA) on validation AUC."""

    def load():
        from cxr_ray.tune import SearchConfig, run_search

        return SearchConfig, run_search

    overrides = dict(
        data=data, task=task, model=model, fakes=fakes, source=source, num_samples=num_samples,
        max_epochs=max_epochs, workers_per_trial=workers_per_trial, storage=storage, name=name, seed=seed,
    )
    out = run_configured(load, config, overrides, s3_endpoint, s3_region, address)
    typer.echo(f"{out['search']}: best val AUC {out['best_val_auc']:.3f} with {out['best_config']}")


@app.command(
    name="tune-gan",
    epilog=(
        "Examples:\n\n"
        "  cxr-ray tune-gan --data runs/study/data/real-64 --class NORMAL --num-samples 4 --epochs 10\n\n"
        "  cxr-ray tune-gan --data s3://bucket/study/data/real-64 --class PNEUMONIA --storage s3://bucket/study/tune\n\n"
        "  (re-running the same command continues an interrupted search)"
    ),
)
def tune_gan(
    data: Optional[str] = REAL_TABLE,
    class_name: Optional[str] = typer.Option(None, "--class", help="NORMAL or PNEUMONIA (one GAN per class)."),
    num_samples: Optional[int] = typer.Option(None, help="Trials to sample (default 4)."),
    epochs: Optional[int] = typer.Option(None, help="GAN epochs per trial (default 10)."),
    workers_per_trial: Optional[int] = WORKERS_PER_TRIAL,
    n_fake: Optional[int] = typer.Option(None, help="Fakes drawn per trial for the val FD/KID (default 500)."),
    storage: Optional[str] = SEARCH_STORAGE,
    name: Optional[str] = SEARCH_NAME,
    seed: Optional[int] = TRAINERS_SEED,
    config: Optional[str] = typer.Option(None, "--config", help="YAML file of GanSearchConfig keys; flags override it."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Search a DCGAN's lr, beta1 and width with Ray Tune, on the Frechet distance to real validation images."""

    def load():
        from cxr_ray.tune_gan import GanSearchConfig, run_gan_search

        return GanSearchConfig, run_gan_search

    overrides = dict(
        data=data, class_name=class_name, num_samples=num_samples, epochs=epochs,
        workers_per_trial=workers_per_trial, n_fake=n_fake, storage=storage, name=name, seed=seed,
    )
    out = run_configured(load, config, overrides, s3_endpoint, s3_region, address)
    typer.echo(f"{out['search']}: best val FD {out['best_val_fd']:.3f} with {out['best_config']}")


def _study_command() -> Any:
    """`cxr-ray study`: every option of cxr_ray/cli/study_options.py as a typer option; the values go to the same
    parser jobs/full_study.py uses, so both entry points run the same code on the same options."""
    import inspect

    from cxr_ray.cli.study_options import STUDY_OPTIONS, to_argv

    def study(**values: Any) -> None:
        from cxr_ray.study import run_study_cli

        raise typer.Exit(code=run_study_cli(to_argv(values)))

    params = []
    for option in STUDY_OPTIONS:
        help_text = option.help + (f" (one of: {', '.join(map(str, option.choices))})" if option.choices else "")
        default = typer.Option(False if option.kind is bool else option.default, option.flag, help=help_text)
        annotation = bool if option.kind is bool else Optional[option.kind]
        params.append(inspect.Parameter(option.dest, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
    study.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    study.__doc__ = "Run the whole study, every stage resumable (the same code and options as jobs/full_study.py)."
    return study


from cxr_ray.cli.study_options import STUDY_EPILOG  # noqa: E402  (standard library only)

app.command(name="study", epilog=STUDY_EPILOG)(_study_command())


def _register_stage_commands() -> None:
    """Commands written in their own modules (typer only at import; heavy imports inside)."""
    from cxr_ray.cli import benign_cmd, claim_cmd, eval_cmds, generalise_cmd, generate_cmd, tamper_cmd, train_gan_cmd

    app.command(name="train-gan", epilog=train_gan_cmd.EPILOG)(train_gan_cmd.train_gan)
    app.command(name="gan-quality", epilog=train_gan_cmd.EPILOG_QUALITY)(train_gan_cmd.quality)
    app.command(name="gan-curve", epilog=train_gan_cmd.EPILOG_CURVE)(train_gan_cmd.curve)
    app.command(name="generate", epilog=generate_cmd.EPILOG_GENERATE)(generate_cmd.generate)
    app.command(name="benign", epilog=benign_cmd.EPILOG_BENIGN)(benign_cmd.benign)
    app.command(name="evaluate", epilog=eval_cmds.EPILOG_EVALUATE)(eval_cmds.evaluate)
    app.command(name="transfer", epilog=eval_cmds.EPILOG_TRANSFER)(eval_cmds.transfer)
    app.command(name="scan", epilog=eval_cmds.EPILOG_SCAN)(eval_cmds.scan)
    app.command(name="claim", epilog=claim_cmd.EPILOG_CLAIM)(claim_cmd.claim)
    app.command(name="generalise", epilog=generalise_cmd.EPILOG_GENERALISE)(generalise_cmd.generalise)
    app.command(name="train-tamper", epilog=tamper_cmd.EPILOG_TRAIN)(tamper_cmd.train_tamper)
    app.command(name="tamper", epilog=tamper_cmd.EPILOG_TAMPER)(tamper_cmd.tamper)
    app.command(name="attack", epilog=tamper_cmd.EPILOG_ATTACK)(tamper_cmd.attack)
    app.command(name="train-localiser", epilog=tamper_cmd.EPILOG_LOCALISER)(tamper_cmd.train_localiser)


_register_stage_commands()


def main() -> None:
    app(prog_name="cxr-ray")


if __name__ == "__main__":
    sys.exit(main())
