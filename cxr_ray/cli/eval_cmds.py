"""`cxr-ray evaluate`, `cxr-ray transfer`, `cxr-ray scan`: thin typer wrappers over the stage functions.

Only typer is imported here; torch, ray and pyarrow load inside the commands.
Register with `app.command(epilog=EPILOG_EVALUATE)(evaluate)` and so on.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from cxr_ray.cli.common import (
    MAX_SCORING_ACTORS,
    N_BOOT,
    OVERWRITE_OUT,
    RAY_ADDRESS,
    RUNS,
    S3_ENDPOINT,
    S3_REGION,
    run_stage,
)

EPILOG_EVALUATE = (
    "Examples:\n\n"
    "  cxr-ray evaluate --runs runs/train --real runs/study/data/real-64 --fakes runs/study/data/fake-archive-64 "
    "--out runs/eval\n\n"
    "  cxr-ray evaluate --runs s3://bucket/runs --real s3://bucket/study/data/real-64 --fakes s3://bucket/study/data/fake-archive-64 "
    "--out s3://bucket/study/eval --perturbation none --perturbation jpeg50 --perturbation blur1 --overwrite\n\n"
    "  cxr-ray evaluate --runs runs/train --real runs/study/data/real-64 --fakes runs/study/data/fake-archive-64 "
    "--raw-fakes runs/study/data/fake-raw-64 --benign runs/study/data/benign-64 --out runs/eval\n\n"
    "Perturbations: none, jpeg95, jpeg75, jpeg50, jpeg30, blur1, resize0.5, noise5 (default: all)."
)

EPILOG_TRANSFER = (
    "Examples:\n\n"
    "  cxr-ray transfer --runs runs/train --real runs/study/data/real-64 --fakes runs/study/data/fake-archive-64 "
    "--out runs/study/transfer\n\n"
    "  cxr-ray transfer --runs runs/train/pneumonia-cnn-real-1a2b3c --runs runs/train/pneumonia-cnn-fake-4d5e6f "
    "--real runs/study/data/real-64 --fakes runs/study/data/fake-archive-64 --out runs/transfer-cnn --n-boot 2000"
)

EPILOG_SCAN = (
    "Examples:\n\n"
    "  cxr-ray scan /mnt/pacs/export --detector runs/study --out scan-2024-06-01   # the study's deployed detector\n\n"
    "  cxr-ray scan /mnt/pacs/export --detector runs/train/deepfake-resnet18-real-1a2b3c --out scan-2024-06-01\n\n"
    "  cxr-ray scan s3://hospital-archive/incoming/ --detector s3://bucket/runs/deepfake-cnn-real-4d5e6f "
    "--out s3://bucket/scans/incoming --s3-endpoint http://127.0.0.1:9000\n\n"
    "Writes OUT/results.csv and OUT/results.parquet (path, size_bytes, sha256, fake_probability, verdict, reason) "
    "and OUT/summary.json. Verdicts use the threshold chosen on the detector's validation split for --fpr "
    "(default 0.01: at most 1% of its validation reals flagged); with --benign (a study root's own by default) "
    "also at most 1% of them after each benign re-processing."
)


def evaluate(
    runs: List[str] = RUNS,
    real: str = typer.Option(..., "--real", help="Ingested real image table (its test split is scored)."),
    out: str = typer.Option(..., "--out", help="Output folder: metrics.parquet/.csv, predictions.parquet, summary.json."),
    fakes: Optional[str] = typer.Option(None, "--fakes", help="Generated fake table (its held-out test split); needed for detectors."),
    raw_fakes: Optional[str] = typer.Option(
        None, "--raw-fakes", help="A second fake table, fakes as the generator wrote them: detectors' eval set real+raw_fake_test."
    ),
    benign: Optional[str] = typer.Option(
        None, "--benign", help="Re-processed reals (cxr-ray benign): detectors' false-positive rate per condition on its test rows (benign_real); its val rows fix each detector's benign-robust point (fpr_0.01_benign)."
    ),
    perturbation: Optional[List[str]] = typer.Option(None, "--perturbation", help="Perturbation to apply (repeatable; default all)."),
    freq_baseline: bool = typer.Option(True, "--freq-baseline/--no-freq-baseline", help="Also fit and score the frequency baseline."),
    n_boot: int = N_BOOT,
    seed: int = typer.Option(0, help="Seed of the bootstrap and of the noise perturbation."),
    batch_size: int = typer.Option(256, help="Images per actor call."),
    max_actors: Optional[int] = MAX_SCORING_ACTORS,
    overwrite: bool = OVERWRITE_OUT,
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Score every finished model on real/fake test data, clean and perturbed, into one metrics table (Ray Data)."""

    def build():
        from cxr_ray.evaluate import EvaluateConfig, run_evaluate
        from cxr_ray.perturb import DEFAULT_PERTURBATIONS

        cfg = EvaluateConfig(
            runs=tuple(runs), real=real, dest=out, fakes=fakes, raw_fakes=raw_fakes, benign=benign,
            perturbations=tuple(perturbation) if perturbation else DEFAULT_PERTURBATIONS, freq_baseline=freq_baseline,
            n_boot=n_boot, seed=seed, batch_size=batch_size, max_actors=max_actors, overwrite=overwrite,
        )
        return cfg, run_evaluate

    summary = run_stage(build, s3_endpoint, s3_region, address)
    from cxr_ray.evaluate import format_summary

    typer.echo(format_summary(summary))


def transfer(
    runs: List[str] = RUNS,
    real: str = typer.Option(..., "--real", help="Ingested real image table (its test split)."),
    fakes: str = typer.Option(..., "--fakes", help="Generated fake table (its held-out test split)."),
    out: str = typer.Option(..., "--out", help="Output folder: transfer.md, transfer/per_class .parquet and .csv."),
    n_boot: int = N_BOOT,
    seed: int = typer.Option(0, help="Bootstrap seed."),
    batch_size: int = typer.Option(256, help="Images per actor call."),
    max_actors: Optional[int] = MAX_SCORING_ACTORS,
    overwrite: bool = OVERWRITE_OUT,
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Test pneumonia classifiers trained on real and on fake X-rays on both kinds of test data."""

    def build():
        from cxr_ray.transfer import TransferConfig, run_transfer

        cfg = TransferConfig(
            runs=tuple(runs), real=real, fakes=fakes, dest=out, n_boot=n_boot, seed=seed,
            batch_size=batch_size, max_actors=max_actors, overwrite=overwrite,
        )
        return cfg, run_transfer

    summary = run_stage(build, s3_endpoint, s3_region, address)
    typer.echo(summary["markdown"])


def scan(
    src: str = typer.Argument(..., help="Folder, S3 prefix or single file to scan (JPEG, PNG; DICOM with pydicom)."),
    detector: str = typer.Option(
        ..., "--detector", help="Finished deepfake detector run dir (or its checkpoint dir), or a study root: its deployed detector."
    ),
    out: str = typer.Option(..., "--out", help="Output folder for results.csv, results.parquet and summary.json."),
    batch_size: int = typer.Option(256, help="Files per read/score batch."),
    max_actors: Optional[int] = MAX_SCORING_ACTORS,
    fpr: float = typer.Option(
        0.01, "--fpr", help="Target false-positive rate (default 0.01): the verdict threshold is the one that flags at most "
        "this share of the detector's validation reals. Detectors trained before val predictions were kept use their Youden threshold."
    ),
    benign: Optional[str] = typer.Option(
        None, "--benign", help="Benign table with re-processed validation reals (`cxr-ray benign`): the threshold then flags at most "
        "--fpr of them under every condition too. Default: a study root's own benign table, else none."
    ),
    localiser: Optional[str] = typer.Option(
        None, "--localiser", help="Finished localiser run (`cxr-ray train-localiser`): per image the probability it was edited and "
        "the box of the suspected region; an overlay PNG (OUT/overlays/) for each image called edited or fake."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show Ray Data progress bars."),
    max_pixels: int = typer.Option(
        40_000_000, "--max-pixels", help="Larger images (width x height) are listed as unreadable, never decoded; X-ray detectors make at most ~18 MP."
    ),
    overwrite: bool = OVERWRITE_OUT,
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Score every image under SRC with a deepfake detector; unreadable files are listed, never fatal."""

    def build():
        from cxr_ray.scan import ScanConfig, run_scan

        cfg = ScanConfig(
            src=src, detector=detector, out=out, batch_size=batch_size, max_actors=max_actors,
            progress=progress, overwrite=overwrite, max_pixels=max_pixels, fpr=fpr, benign=benign, localiser=localiser,
        )
        return cfg, run_scan

    summary = run_stage(build, s3_endpoint, s3_region, address)
    from cxr_ray.scan import format_summary

    typer.echo(format_summary(summary))
