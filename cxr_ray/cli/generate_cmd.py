"""`cxr-ray generate`: thin typer wrapper over `cxr_ray.generate.run_generate`.

Only typer is imported here; torch, ray and pyarrow load inside the command.
Register with `app.command(epilog=EPILOG_GENERATE)(generate)`.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from cxr_ray.cli.common import OVERWRITE_OUT, RAY_ADDRESS, S3_ENDPOINT, S3_REGION, run_stage, s3_settings

EPILOG_GENERATE = (
    "Examples:\n\n"
    "  cxr-ray generate --gan runs/gan/dcgan-normal-64px-1a2b3c --gan runs/gan/dcgan-pneumonia-64px-4d5e6f "
    "--out runs/study/data/fake-archive-64\n\n"
    "  cxr-ray generate --gan s3://bucket/gan/dcgan-all-64px-7a8b9c --out s3://bucket/study/data/fake-archive-64 "
    "--n 500 --n-test 300 --s3-endpoint http://127.0.0.1:9000 --overwrite\n\n"
    "Per class, seeds [0, N) give the detector's train/val fakes (val = the last --val-fraction of them) and "
    "seeds [--test-seed-start, --test-seed-start + N_TEST) its held-out test fakes.\n\n"
    "  cxr-ray generate --gan runs/gan/dcgan-all-64px-7a8b9c --out runs/study/data/fake-archive-64 --archive-like runs/study/data/real-64\n\n"
    "--archive-like stores each fake as the real table's archive stores its images (the format `cxr-ray ingest` "
    "recorded: size, mode, JPEG quality and subsampling), then decodes it the way ingest decodes a real."
)


def generate(
    gan: List[str] = typer.Option(..., "--gan", help="GAN run dir, checkpoint dir or state.pt (path or s3://); repeat per class."),
    out: str = typer.Option(..., "--out", help="Output folder for the fake image table (path or s3://)."),
    n: int = typer.Option(500, "--n", help="Fakes per class for the detector's train + val splits (seeds 0..N-1)."),
    n_test: int = typer.Option(500, "--n-test", help="Held-out test fakes per class."),
    test_seed_start: int = typer.Option(1_000_000, help="First seed of the held-out test range."),
    val_fraction: float = typer.Option(0.1, help="Share of the train seed range used as validation."),
    batch_size: int = typer.Option(64, help="Images per actor call."),
    max_actors: Optional[int] = typer.Option(None, help="Cap on generator actors (default: one per GPU, else CPUs - 1)."),
    archive_like: Optional[str] = typer.Option(
        None, "--archive-like", metavar="REAL_TABLE",
        help="Ingested real table: store the fakes in the format its source archive uses (default: raw generator output).",
    ),
    overwrite: bool = OVERWRITE_OUT,
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Generate fake X-rays from DCGAN checkpoints into a Parquet table (Ray Data, actor pool)."""

    def build():
        from cxr_ray.generate import GenerateConfig, run_generate

        archive = None
        if archive_like:
            from cxr_ray.data.archive import read_archive_format

            archive = read_archive_format(archive_like, s3_settings(s3_endpoint, s3_region)).to_dict()
        cfg = GenerateConfig(
            generators=tuple(gan), dest=out, train_seeds=(0, n), test_seeds=(test_seed_start, test_seed_start + n_test),
            val_fraction=val_fraction, batch_size=batch_size, max_actors=max_actors, overwrite=overwrite,
            storage_format="archive" if archive else "raw", archive_format=archive,
        )
        return cfg, run_generate

    summary = run_stage(build, s3_endpoint, s3_region, address)
    from cxr_ray.generate import format_summary

    typer.echo(format_summary(summary))
