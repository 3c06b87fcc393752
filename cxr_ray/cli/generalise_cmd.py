"""`cxr-ray generalise`: leave-one-family-out detection (a typer wrapper).

Only typer is imported here; the job loads inside the command.
Register with `app.command(name="generalise", epilog=EPILOG_GENERALISE)(generalise)`.
"""

from __future__ import annotations

from typing import Optional

import typer

from cxr_ray.cli.common import N_BOOT, OVERWRITE_OUT, RAY_ADDRESS, S3_ENDPOINT, S3_REGION, run_stage

EPILOG_GENERALISE = (
    "Examples:\n\n"
    "  cxr-ray generalise --real runs/study/data/real-64 --family dcgan=runs/study/data/fake-archive-64 "
    "--family sngan=runs/study/data/fake-sngan-archive-64 --family vae=runs/study/data/fake-vae-archive-64 "
    "--benign runs/study/data/benign-64 --runs runs/study/runs runs/study/generalise\n\n"
    "Trains each design on each family alone, on every family but one and on all (finished runs are reused), "
    "scores every detector on every family's test fakes and on the benign reals, and writes DEST/lofo.md "
    "(held-out families first), lofo.parquet/.csv and lofo_benign.parquet/.csv."
)


VERDICT = {True: "met", False: "not met", None: "met for detection, benign not measured"}


def parse_families(values: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """NAME=TABLE pairs -> (names, tables); BadParameter naming a malformed one."""
    names, tables = [], []
    for value in values:
        name, sep, table = value.partition("=")
        if not sep or not name.strip() or not table.strip():
            raise typer.BadParameter(f"{value!r}: expected NAME=TABLE, e.g. sngan=runs/study/data/fake-sngan-archive-64")
        names.append(name.strip())
        tables.append(table.strip())
    return tuple(names), tuple(tables)


def generalise(
    dest: str = typer.Argument(..., help="Output folder: lofo.md, lofo.parquet/.csv, lofo_benign.parquet/.csv, summary.json."),
    real: str = typer.Option(..., "--real", help="Ingested real image table."),
    family: list[str] = typer.Option(..., "--family", help="NAME=TABLE: one generator family's fake table (archive format); repeat, 2 or more."),
    runs: str = typer.Option(..., "--runs", help="Runs root the detectors train in (finished runs are reused)."),
    benign: Optional[str] = typer.Option(None, "--benign", help="Re-processed reals (cxr-ray benign): false alarms per condition (test rows); with val rows, targets are judged at each detector's benign-robust 1% point."),
    benign_design: Optional[list[str]] = typer.Option(
        None, "--benign-design", help="Designs whose detectors score the benign reals (repeat; default every design)."
    ),
    model: str = typer.Option("resnet18", help="Detector architecture."),
    design: Optional[list[str]] = typer.Option(None, "--design", help="plain, generalising, upsampling, residual, residual_novelty, upsampling_stored, residual_upsampling_stored, residual_upsamplers_stored (repeat; default all)."),
    epochs: int = typer.Option(3, help="Epochs per detector."),
    train_per_class: Optional[int] = typer.Option(None, help="At most N train images per class (real, fake) per detector (default: all)."),
    workers: int = typer.Option(1, "--workers", help="Ray Train workers per detector."),
    freq_baseline: bool = typer.Option(True, "--freq-baseline/--no-freq-baseline", help="Also the frequency baseline, fitted leave-one-out."),
    n_boot: int = N_BOOT,
    seed: int = typer.Option(0, help="Seed of the detectors and the bootstrap."),
    overwrite: bool = OVERWRITE_OUT,
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Leave-one-family-out: detectors trained on some generator families, tested on the ones they never saw."""
    names, tables = parse_families(family)

    def build():
        from cxr_ray.generalise import DESIGNS, GeneraliseConfig, run_generalise

        cfg = GeneraliseConfig(
            real=real, families=names, fakes=tables, runs=runs, dest=dest, benign=benign,
            benign_designs=tuple(benign_design) if benign_design else None, model=model,
            designs=tuple(design) if design else tuple(DESIGNS), epochs=epochs, train_per_class=train_per_class, num_workers=workers,
            freq_baseline=freq_baseline, n_boot=n_boot, seed=seed, overwrite=overwrite,
        )  # fmt: skip
        return cfg, run_generalise

    summary = run_stage(build, s3_endpoint, s3_region, address)
    held = [e for e in summary["held_out"] if e["held_out"]]
    for e in held:
        typer.echo(
            f"{e['design']:>16} on {e['trained_on']:<18} -> {e['test_family']:<8} AUC {e['auc']:.3f}  "
            f"caught {100 * e['tpr']:.1f}% at 1% FPR  target {VERDICT[e['meets_target']]}"
        )
    typer.echo(f"generalise: report at {dest}/lofo.md")
