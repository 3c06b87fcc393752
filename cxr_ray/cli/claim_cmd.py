"""`cxr-ray claim`: the seed's transfer claim, both readings, against matched real controls (a typer wrapper).

Only typer is imported here; the stage loads inside the command.
Register with `app.command(name="claim", epilog=EPILOG_CLAIM)(claim)`.
"""

from __future__ import annotations

from typing import Optional

import typer

from cxr_ray.cli.common import MAX_SCORING_ACTORS, N_BOOT, OVERWRITE_OUT, RAY_ADDRESS, S3_ENDPOINT, S3_REGION, run_stage

EPILOG_CLAIM = (
    "Examples:\n\n"
    "  cxr-ray train --source fake --fakes runs/study/data/fake-archive-64 --data runs/study/data/real-64 --train-per-class 250 "
    "--seed 0 ...  (and --source real with the same --train-per-class and --seed: the control; seeds 0, 1, 2)\n\n"
    "  cxr-ray claim --fake-runs runs/train/F0,runs/train/F1,runs/train/F2 --real-runs runs/train/R0,runs/train/R1,"
    "runs/train/R2 --real runs/study/data/real-64 --fakes runs/study/data/fake-archive-64 runs/study/claim\n\n"
    "Writes DEST/claim.md (both readings and what is reproduced), claim.json and claim.parquet. "
    "fake-runs[i] and real-runs[i] are one seed's pair: same model, seed, --train-per-class, epochs and batch size."
)


def _runs(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def claim(
    dest: str = typer.Argument(..., help="Output folder: claim.md, claim.json, claim.parquet, summary.json."),
    fake_runs: str = typer.Option(..., "--fake-runs", help="Comma-separated finished runs trained on fakes, one per seed."),
    real_runs: str = typer.Option(..., "--real-runs", help="Their real-trained controls, comma-separated, in the same order."),
    real: str = typer.Option(..., "--real", help="Ingested real image table (its test split is scored)."),
    fakes: str = typer.Option(..., "--fakes", help="Generated fake table (its held-out test split is scored)."),
    n_boot: int = N_BOOT,
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    batch_size: int = typer.Option(256, help="Images per actor call."),
    max_actors: Optional[int] = MAX_SCORING_ACTORS,
    overwrite: bool = OVERWRITE_OUT,
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Test the seed's transfer claim as written: reading A (fake-trained ~50%) and B (real-trained drops on fakes)."""

    def build():
        from cxr_ray.claim import ClaimConfig, run_claim

        cfg = ClaimConfig(
            fake_runs=_runs(fake_runs), real_runs=_runs(real_runs), real=real, fakes=fakes, dest=dest, n_boot=n_boot,
            seed=seed, batch_size=batch_size, max_actors=max_actors, overwrite=overwrite,
        )
        return cfg, run_claim

    summary = run_stage(build, s3_endpoint, s3_region, address)
    for model, verdict in summary["verdicts"].items():
        for reading in ("A", "B"):
            typer.echo(verdict[reading]["sentence"])
    typer.echo(f"claim: report at {dest}/claim.md")
