"""`cxr-ray benign`: thin typer wrapper over `cxr_ray.benign.run_benign`.

Only typer is imported here; ray, pyarrow and PIL load inside the command.
Register with `app.command(name="benign", epilog=EPILOG_BENIGN)(benign)`.
"""

from __future__ import annotations

from typing import Optional

import typer

from cxr_ray.cli.common import RAY_ADDRESS, S3_ENDPOINT, S3_REGION, run_stage

# Kept here, not imported from cxr_ray.benign, so `--help` needs no PIL or pyarrow; a test checks they agree.
CONDITIONS_HELP = (
    "ingest, jpeg95, jpeg85, jpeg60, png, resize_nearest, resize_bicubic, resize_lanczos, no_draft, resave, "
    "gamma0.8, gamma1.2, contrast_stretch, png16"
)

EPILOG_BENIGN = (
    "Examples:\n\n"
    "  cxr-ray benign runs/study/data/real-64 runs/study/data/benign-64\n\n"
    "  cxr-ray benign s3://bucket/study/data/real-64 s3://bucket/study/benign-64 --conditions ingest,jpeg85,png16 "
    "--s3-endpoint http://127.0.0.1:9000 --overwrite\n\n"
    "Each condition starts from the real row's original source file and ends in the study's pixels "
    "(ingest's decode path wherever a file is written); 'ingest' reproduces the ingested pixels exactly. "
    "Score the output as the benign eval set (`cxr-ray evaluate --benign`) to read each detector's false alarms per "
    "condition on the test reals; the val reals fix its benign-robust 1% point (`fpr_0.01_benign`)."
)


def benign(
    real_table: str = typer.Argument(..., help="Ingested real image table (path or s3://); its source files must still be readable."),
    dest: str = typer.Argument(..., help="Output folder for the re-processed image table (path or s3://)."),
    conditions: Optional[str] = typer.Option(None, "--conditions", help=f"Comma-separated subset of: {CONDITIONS_HELP} (default: all)."),
    splits: str = typer.Option("val,test", "--splits", help="Comma-separated splits of the real table to re-process (train, val, test); val gives the benign-robust operating point, test is scored."),
    batch_size: int = typer.Option(32, help="Source files per actor call."),
    max_actors: Optional[int] = typer.Option(None, help="Cap on re-processing actors (default: CPUs - 1)."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", help="Larger source images (width x height) are listed as unreadable, never decoded."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DEST if it exists."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Re-process real validation and test images the way a hospital's own software does (re-encode, resize, window) into an image table (Ray Data)."""

    def build():
        from cxr_ray.benign import BENIGN_CONDITIONS, BenignConfig, run_benign

        chosen = tuple(c.strip() for c in conditions.split(",") if c.strip()) if conditions is not None else BENIGN_CONDITIONS
        cfg = BenignConfig(
            real=real_table, dest=dest, conditions=chosen, splits=tuple(s.strip() for s in splits.split(",") if s.strip()), batch_size=batch_size,
            max_actors=max_actors, overwrite=overwrite, max_pixels=max_pixels,
        )
        return cfg, run_benign

    summary = run_stage(build, s3_endpoint, s3_region, address)
    from cxr_ray.benign import format_summary

    typer.echo(format_summary(summary))
