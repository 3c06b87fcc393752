"""The tampering commands (issue 16), thin typer wrappers: `train-tamper` (cxr_ray.train.tamper_model), `tamper`
(cxr_ray.tamper.job), `attack` (cxr_ray.tamper.attack) and `train-localiser` (cxr_ray.train.localiser).

Registered in cxr_ray/cli/app.py. Nothing heavy is imported at module level: torch and ray load inside the commands.
"""

from __future__ import annotations

from typing import Optional

import typer

from cxr_ray.cli.common import RAY_ADDRESS, S3_ENDPOINT, S3_REGION, run_stage

EPILOG_TRAIN = (
    "Examples:\n\n"
    "  cxr-ray train-tamper runs/data/ingest-64                     # 20 epochs on 2 workers -> runs/tamper\n\n"
    "  cxr-ray train-tamper runs/data/ingest-64 --epochs 40 --ngf 64 --ndf 64 --gpu --workers 4\n\n"
    "Re-running the same command resumes the run from its last checkpoint (a larger --epochs extends it)."
)


def train_tamper(
    data: str = typer.Argument(..., help="Ingested real image table (cxr-ray ingest output): path or s3://."),
    storage: str = typer.Option("runs/tamper", help="Runs root: the run lives in STORAGE/NAME (path or s3://)."),
    epochs: int = typer.Option(20, help="Epochs over the train split (a re-run with more extends the run)."),
    batch_size: int = typer.Option(64, help="Batch size per worker."),
    lr: float = typer.Option(2e-4, help="Adam learning rate of both networks."),
    beta1: float = typer.Option(0.5, help="Adam beta1."),
    ngf: int = typer.Option(32, help="In-painter width (a multiple of 8)."),
    ndf: int = typer.Option(32, help="Critic width."),
    rec_weight: float = typer.Option(10.0, help="Weight of the masked-pixel L1 of fills asked for the image's own class."),
    swap: float = typer.Option(0.5, help="Share of fills asked for the other class (the edits an attacker makes)."),
    workers: int = typer.Option(2, "--workers", help="Ray Train workers (DDP processes)."),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="Train on GPUs or CPUs (default: GPUs if the cluster has them)."),
    name: Optional[str] = typer.Option(None, help="Run name (default: tamper-CONFIGHASH; stable, so re-runs resume)."),
    seed: int = typer.Option(0, help="Seed of initialisation, masks and batch order."),
    max_failures: int = typer.Option(2, help="Worker-group restarts from the last checkpoint before giving up."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Train the tamper model with Ray Train DDP on the train split: an in-painter that fills a region inside the
    lung fields with the class wanted there (opacity into a NORMAL lung, normal lung over a PNEUMONIA one).

    Every epoch writes a checkpoint (both networks and optimizers), a sample grid of validation images, their
    masked regions and the edits to the other class (STORAGE/NAME/samples/epoch_NNN.png), and the validation
    L1 of same-class fills; the summary goes to STORAGE/NAME/tamper_summary.json.
    """

    def build():
        from cxr_ray.train.tamper_model import TamperModelConfig, train_tamper_model

        cfg = TamperModelConfig(
            data=data, storage=storage, epochs=epochs, batch_size=batch_size, lr=lr, beta1=beta1, ngf=ngf, ndf=ndf,
            rec_weight=rec_weight, swap=swap, num_workers=workers, use_gpu=gpu, name=name, seed=seed,
            max_failures=max_failures,
        )
        return cfg, train_tamper_model

    summary = run_stage(build, s3_endpoint, s3_region, address)
    last = summary["history"][-1] if summary["history"] else {}
    typer.echo(f"{summary['run']}: {summary['epochs']} epochs, val L1 of same-class fills {summary['val_l1']:.4f} "
               f"(loss D {last.get('loss_d', float('nan')):.3f}, loss G {last.get('loss_g', float('nan')):.3f}); "
               f"checkpoint {summary['checkpoint']}")
    typer.echo(f"  samples: {summary['samples']}")


EPILOG_TAMPER = (
    "Examples:\n\n"
    "  cxr-ray tamper runs/data/ingest-64 --model runs/tamper/tamper-0123456789ab --out runs/data/tampered-64\n\n"
    "  cxr-ray tamper runs/data/ingest-64 --model RUN --out runs/data/tampered-test-64 --split test --raw\n\n"
    "NORMAL images get an opacity injected, PNEUMONIA images normal lung over part of one; the mask, direction and\n"
    "original's path are columns of the output table. The real table is only read."
)


def tamper(
    real: str = typer.Argument(..., help="Ingested real image table whose rows are edited (only read)."),
    model: str = typer.Option(..., "--model", help="Tamper-model run folder (cxr-ray train-tamper), checkpoint folder or state.pt."),
    out: str = typer.Option(..., "--out", help="Output image table of the edits (path or s3://)."),
    split: Optional[list[str]] = typer.Option(None, "--split", help="Split(s) to edit: train, val, test (repeat; default all three)."),
    raw: bool = typer.Option(False, "--raw", help="Keep the model's pixels instead of storing edits in the archive's format."),
    seed: int = typer.Option(0, help="Seed of the masks (with each image's path: a re-run makes the same edits)."),
    batch_size: int = typer.Option(64, help="Rows per actor call."),
    max_actors: Optional[int] = typer.Option(None, help="At most this many actors (default: one per GPU, else CPUs - 1)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output table."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Edit real X-rays with the tamper model on Ray Data: inject a finding into NORMAL images, remove one from
    PNEUMONIA images, inside the lung fields; stored in the archive's format by default."""

    def build():
        from cxr_ray.tamper.job import SPLITS, TamperConfig, run_tamper

        cfg = TamperConfig(real=real, model=model, dest=out, splits=tuple(split or SPLITS),
                           storage_format="raw" if raw else "archive", seed=seed, batch_size=batch_size,
                           max_actors=max_actors, overwrite=overwrite)  # fmt: skip
        return cfg, run_tamper

    summary = run_stage(build, s3_endpoint, s3_region, address)
    from cxr_ray.tamper.job import format_summary

    typer.echo(format_summary(summary))


EPILOG_ATTACK = (
    "Examples:\n\n"
    "  cxr-ray attack runs/data/tampered-64 --real runs/data/ingest-64 --runs runs/train --out runs/attack\n\n"
    "Every finished pneumonia classifier under --runs calls the test edits and their originals at its own\n"
    "validation threshold; DEST/attack.md has the table."
)


def attack(
    tampered: str = typer.Argument(..., help="The edits (cxr-ray tamper output); their test rows are scored."),
    real: str = typer.Option(..., "--real", help="The real table the edits were made from."),
    runs: list[str] = typer.Option(..., "--runs", help="Pneumonia classifier run folder or runs root (repeat)."),
    out: str = typer.Option(..., "--out", help="Output folder: attack.parquet/.csv/.md and summary.json."),
    n_boot: int = typer.Option(1000, help="Patient-bootstrap resamples."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Attack success: how often an edit flips each pneumonia classifier (NORMAL called PNEUMONIA after an
    injection, PNEUMONIA called NORMAL after a removal), against the same images unedited."""

    def build():
        from cxr_ray.tamper.attack import AttackConfig, run_attack

        return AttackConfig(tampered=tampered, real=real, runs=tuple(runs), dest=out, n_boot=n_boot, seed=seed,
                            overwrite=overwrite), run_attack  # fmt: skip

    summary = run_stage(build, s3_endpoint, s3_region, address)
    for r in summary["rows"]:
        typer.echo(f"{r['run']} {r['direction']}: {r['edited_rate']:.1%} of {r['n']} edited images called as the edit "
                   f"wants (unedited {r['unedited_rate']:.1%}); flipped {r['flipped']:.1%} of {r['n_right_unedited']} called right")
    typer.echo(f"  table: {out}/attack.md")


EPILOG_LOCALISER = (
    "Examples:\n\n"
    "  cxr-ray train-localiser runs/data/ingest-64 --tampered runs/data/tampered-64 --epochs 10\n\n"
    "Trains on the train-split edits and reals, picks its epoch on val, and is scored once on the test split:\n"
    "image AUC, the share of edits caught at the 1%-of-val-reals threshold, pixel AUC and IoU with the true masks."
)


def train_localiser(
    data: str = typer.Argument(..., help="Ingested real image table."),
    tampered: str = typer.Option(..., "--tampered", help="Edits made from it (cxr-ray tamper; train, val and test splits)."),
    storage: str = typer.Option("runs/localiser", help="Runs root (path or s3://)."),
    epochs: int = typer.Option(10, help="Epochs."),
    batch_size: int = typer.Option(64, help="Batch size per worker."),
    lr: float = typer.Option(1e-3, help="AdamW learning rate."),
    width: int = typer.Option(16, help="U-Net width (a multiple of 8)."),
    workers: int = typer.Option(2, "--workers", help="Ray Train workers (DDP processes)."),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="Train on GPUs or CPUs (default: GPUs if the cluster has them)."),
    name: Optional[str] = typer.Option(None, help="Run name (default: localiser-CONFIGHASH)."),
    seed: int = typer.Option(0, help="Seed."),
    n_boot: int = typer.Option(1000, help="Patient-bootstrap resamples of the test metrics."),
    benign: Optional[str] = typer.Option(None, "--benign", help="Benignly re-processed reals (cxr-ray benign): false alarms per condition on their test rows, at the localiser's threshold (added to a finished run too)."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Train the tamper detector that localises (a per-pixel map of the edit) with Ray Train DDP; test it once."""

    def build():
        from cxr_ray.train.localiser import LocaliserConfig
        from cxr_ray.train.localiser import train_localiser as run

        return LocaliserConfig(data=data, tampered=tampered, storage=storage, epochs=epochs, batch_size=batch_size, lr=lr,
                               width=width, num_workers=workers, use_gpu=gpu, name=name, seed=seed, n_boot=n_boot, benign=benign), run  # fmt: skip

    t = run_stage(build, s3_endpoint, s3_region, address)["test"]
    for condition, (rate, _, high) in (t.get("benign_fpr") or {}).items():
        typer.echo(f"  benign {condition}: {rate:.1%} flagged (95% upper {high:.1%})")
    typer.echo(f"image AUC {t['image_auc']:.3f} [{t['image_auc_ci'][0]:.3f}, {t['image_auc_ci'][1]:.3f}]; "
               f"caught at 1% of val reals {t['tpr_at_1pct']:.1%} (test reals flagged {t['test_fpr']:.1%}); "
               f"pixel AUC {t['pixel_auc']:.3f}; IoU {t['iou']:.3f} [{t['iou_ci'][0]:.3f}, {t['iou_ci'][1]:.3f}]")
