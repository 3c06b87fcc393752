"""The `cxr-ray` command line: thin wrappers over the stage functions.

Only typer and the standard library are imported at start-up; torch, ray and
pyarrow are imported inside each command, so `cxr-ray --help` stays fast.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

app = typer.Typer(
    name="cxr-ray",
    help="Distributed chest X-ray deepfake study on Ray: ingest, GANs, classifiers, detectors, scan.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

S3_ENDPOINT = typer.Option(
    None, "--s3-endpoint", envvar="CXR_RAY_S3_ENDPOINT", help="S3-compatible endpoint URL, e.g. http://127.0.0.1:9000."
)
S3_REGION = typer.Option(None, "--s3-region", help="S3 region (default: AWS_REGION, else us-east-1).")
RAY_ADDRESS = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")


def _s3(endpoint: Optional[str], region: Optional[str]):
    from dataclasses import replace

    from cxr_ray.storage import S3Settings

    settings = S3Settings.from_env()
    if endpoint:
        settings = replace(settings, endpoint_url=endpoint)
    if region:
        settings = replace(settings, region=region)
    return settings


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _known_errors() -> tuple[type[BaseException], ...]:
    from cxr_ray.config import ConfigError
    from cxr_ray.data.ingest import IngestError
    from cxr_ray.storage import StorageError

    return (ConfigError, IngestError, StorageError)


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
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Decode a chest X-ray folder once into a Parquet image table (Ray Data)."""
    errors = _known_errors()
    try:
        from cxr_ray.config import IngestConfig
        from cxr_ray.data.ingest import format_summary, run_ingest
        cfg = IngestConfig(
            src=src,
            dest=dest,
            resolution=resolution,
            val_fraction=val_fraction,
            seed=seed,
            overwrite=overwrite,
            s3=_s3(s3_endpoint, s3_region),
        )
        summary = run_ingest(cfg, log=lambda m: typer.echo(m, err=True), address=address)
    except errors as exc:
        _fail(str(exc))
    typer.echo(format_summary(summary))


@app.command(
    epilog=(
        "Examples:\n\n"
        "  cxr-ray study                       # quick study on the embedded sample, under runs/study\n\n"
        "  cxr-ray study --data ../shared/data/chest_xray --storage s3://bucket/study --profile full"
    )
)
def study(
    profile: str = typer.Option("quick", help="quick (CPU, minutes, embedded sample) or full (GPU defaults)."),
    data: Optional[str] = typer.Option(None, help="Kaggle-layout source folder (default: the embedded sample)."),
    storage: str = typer.Option("runs/study", help="Study root folder: path or s3://."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo finished stages instead of skipping them."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Run the whole study (the same code as jobs/full_study.py)."""
    from cxr_ray.study import run_study_cli

    argv = ["--profile", profile, "--storage", storage]
    if data:
        argv += ["--data", data]
    if overwrite:
        argv.append("--overwrite")
    if s3_endpoint:
        argv += ["--s3-endpoint", s3_endpoint]
    if s3_region:
        argv += ["--s3-region", s3_region]
    if address:
        argv += ["--address", address]
    raise typer.Exit(code=run_study_cli(argv))


def main() -> None:
    app(prog_name="cxr-ray")


if __name__ == "__main__":
    sys.exit(main())
