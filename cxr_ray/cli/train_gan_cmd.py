"""`cxr-ray train-gan`, `gan-quality` and `gan-curve`: thin typer wrappers over cxr_ray.train.gan,
cxr_ray.gan_quality and cxr_ray.gan_curve.

Registered in cxr_ray/cli/app.py as
``app.command(name="train-gan", epilog=EPILOG)(train_gan)``,
``app.command(name="gan-quality", epilog=EPILOG_QUALITY)(quality)`` and
``app.command(name="gan-curve", epilog=EPILOG_CURVE)(curve)``.
Nothing heavy is imported at module level: torch and ray load inside the commands.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from cxr_ray.cli.common import RAY_ADDRESS, S3_ENDPOINT, S3_REGION, echo_err, guarded, s3_settings

EPILOG = (
    "Examples:\n\n"
    "  cxr-ray train-gan runs/data/ingest-64                      # one DCGAN per class, 25 epochs, runs/gan\n\n"
    "  cxr-ray train-gan runs/data/ingest-64 --class NORMAL --epochs 60 --ngf 32 --ndf 32 --workers 2\n\n"
    "  cxr-ray train-gan runs/data/ingest-64 --conditional        # one class-conditional GAN for both classes\n\n"
    "  cxr-ray train-gan runs/data/ingest-64 --family sngan --beta1 0.0   # hinge-loss SNGAN per class\n\n"
    "  cxr-ray train-gan runs/data/ingest-64 --family vae --conditional   # one conditional VAE\n\n"
    "  cxr-ray train-gan s3://bucket/study/ingest-64 --storage s3://bucket/study/gan --gpu --workers 8 "
    "--s3-endpoint http://127.0.0.1:9000\n\n"
    "Re-running the same command resumes the run from its last checkpoint (a larger --epochs extends it)."
)

EPILOG_QUALITY = (
    "Examples:\n\n"
    "  cxr-ray gan-quality runs/gan/dcgan-normal-64px-0123456789ab          # run folder, its table's test split\n\n"
    "  cxr-ray gan-quality runs/gan/dcgan-normal-64px-0123456789ab --n-fake 1000 --out quality.json\n\n"
    "  cxr-ray gan-quality RUN --encoder runs/classifier/cnn/best.pt --inception-weights inception_v3.pth"
)


def optimiser(family: str, lr: Optional[float], beta1: Optional[float]) -> tuple[float, float]:
    """The Adam settings given, else the family's usual ones (an unknown family: GanConfig names it)."""
    from cxr_ray.models.generators import OPTIMISER

    usual_lr, usual_beta1 = OPTIMISER.get(family, OPTIMISER["dcgan"])
    return (usual_lr if lr is None else lr), (usual_beta1 if beta1 is None else beta1)


def train_gan(
    data: str = typer.Argument(..., help="Ingested image table (cxr-ray ingest output): path or s3://."),
    storage: str = typer.Option("runs/gan", help="Runs root: each GAN lives in STORAGE/NAME (path or s3://)."),
    class_names: List[str] = typer.Option(["NORMAL", "PNEUMONIA"], "--class", help="Class to train a GAN for; repeat for several."),
    conditional: bool = typer.Option(False, "--conditional", help="Train one class-conditional GAN on both classes."),
    family: str = typer.Option("dcgan", help="Generator family: dcgan, sngan (hinge loss) or vae (ELBO)."),
    epochs: int = typer.Option(25, help="Epochs over the class's train split (a re-run with more extends the run)."),
    batch_size: int = typer.Option(128, help="Batch size per worker."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate (default: the family's usual one, 2e-4 for the GANs, 1e-3 for the VAE)."),
    beta1: Optional[float] = typer.Option(None, help="Adam beta1 (default: the family's usual one: dcgan 0.5, sngan 0.0, vae 0.9)."),
    nz: int = typer.Option(100, help="Noise vector length."),
    ngf: int = typer.Option(64, help="Generator width (64 is the paper's; smaller for CPU runs)."),
    ndf: int = typer.Option(64, help="Discriminator width."),
    workers: int = typer.Option(2, "--workers", help="Ray Train workers (DDP processes)."),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="Train on GPUs or CPUs (default: GPUs if the cluster has them)."),
    name: Optional[str] = typer.Option(None, help="Run name (default: FAMILY-CLASS-SIZEpx-CONFIGHASH; stable, so re-runs resume)."),
    seed: int = typer.Option(0, help="Seed of initialisation, noise and batch order."),
    max_failures: int = typer.Option(2, help="Worker-group restarts from the last checkpoint before giving up."),
    sync_bn: bool = typer.Option(False, "--sync-bn", help="SyncBatchNorm: BN statistics over the global batch (GPU only)."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Train a generator (DCGAN, SNGAN or VAE) per class, or one conditional one, with Ray Train DDP on the train split.

    Every epoch writes a checkpoint (both networks and optimizers), an 8x8
    fixed-noise sample grid (STORAGE/NAME/samples/epoch_NNN.png) and the loss
    history (losses.json); the summary goes to STORAGE/NAME/gan_summary.json.
    """

    def run() -> list:
        from cxr_ray.config import ConfigError

        classes = ["all"] if conditional else list(dict.fromkeys(class_names))
        if name and len(classes) > 1:
            raise ConfigError("--name names one run: give a single --class (or --conditional) with it")
        from cxr_ray.train.gan import GanConfig
        from cxr_ray.train.gan import train_gan as run_training

        lr_, beta1_ = optimiser(family, lr, beta1)

        def config(class_name: str) -> GanConfig:
            return GanConfig(
                data=data, storage=storage, class_name=class_name, conditional=conditional, family=family, epochs=epochs,
                batch_size=batch_size, lr=lr_, beta1=beta1_, nz=nz, ngf=ngf, ndf=ndf, num_workers=workers,
                use_gpu=gpu, name=name, seed=seed, max_failures=max_failures, sync_bn=sync_bn,
            )

        s3 = s3_settings(s3_endpoint, s3_region)
        return [run_training(config(class_name), s3=s3, log=echo_err, address=address) for class_name in classes]

    summaries = guarded(run)
    from cxr_ray.train.gan import format_losses

    for summary in summaries:
        typer.echo(f"{summary['run']}: {summary['epochs']} epochs in {summary['train_seconds']:.1f} s of training "
                   f"({summary['wall_seconds']:.1f} s wall), checkpoint {summary['checkpoint']}")
        typer.echo(f"  samples: {summary['samples']}")
        typer.echo(format_losses(summary["losses"][-5:]))


def quality(
    generator: str = typer.Argument(..., help="GAN run folder (with gan_summary.json), Ray checkpoint folder or state.pt."),
    data: Optional[str] = typer.Option(None, help="Image table with the real images (default: the one the GAN trained on)."),
    split: str = typer.Option("test", help="Real reference split: test (default) or val."),
    n_fake: Optional[int] = typer.Option(None, "--n-fake", help="Fakes to draw (default: as many as real reference images)."),
    encoder: Optional[str] = typer.Option(
        None, help="Feature encoder checkpoint (model_name/model_kwargs/model_state); trained and cached there if missing. "
        "Default: quality-encoder-SIZEpx.pt next to the run folder."
    ),
    inception_weights: Optional[str] = typer.Option(
        None, "--inception-weights", help="torchvision inception_v3 state dict file: adds standard 2048-d FID/KID."
    ),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip the real-vs-real and untrained-generator rows."),
    seed: int = typer.Option(0, help="Seed of the fakes' noise and of the KID subsets."),
    out: Optional[str] = typer.Option(None, help="Also write the result as JSON here (path or s3://)."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
) -> None:
    """Score a generator: Frechet distance and KID against real images in a chest X-ray encoder's feature space.

    Rows: two halves of the real reference (the floor), real train vs the
    reference, the generator, and an untrained generator of the same
    architecture (the ceiling).
    """

    def run() -> dict:
        from cxr_ray import gan_quality, storage

        s3 = s3_settings(s3_endpoint, s3_region)
        result = gan_quality.evaluate_generator(
            generator, data=data, split=split, n_fake=n_fake, encoder_uri=encoder,
            inception_weights=inception_weights, baselines=not no_baselines, seed=seed, s3=s3, log=echo_err,
        )
        if out:
            storage.write_json_atomic(out, result, s3)
        return result

    result = guarded(run)
    from cxr_ray.gan_quality import format_result

    typer.echo(format_result(result))


EPILOG_CURVE = (
    "Examples:\n\n"
    "  cxr-ray gan-curve runs/gan/dcgan-normal-64px-0123456789ab                   # val split, table on stdout\n\n"
    "  cxr-ray gan-curve RUN_NORMAL RUN_PNEUMONIA --out runs/gan/curve             # quality_curve.json + .png\n\n"
    "Reads each run's per-epoch fixed-noise sample grids (samples/epoch_NNN.png); no checkpoint is needed."
)


def curve(
    runs: List[str] = typer.Argument(..., help="GAN run folder(s) with samples/epoch_NNN.png: path or s3://."),
    split: str = typer.Option("val", help="Real reference split: val (default) or test."),
    encoder: Optional[str] = typer.Option(None, help="Feature encoder checkpoint (default: quality-encoder-SIZEpx.pt next to the run)."),
    seed: int = typer.Option(0, help="Seed of the floor's real sample and of the KID subsets."),
    out: Optional[str] = typer.Option(None, help="Folder for quality_curve.json and quality_curve.png (path or s3://)."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
) -> None:
    """The quality metric over training: KID (and FD) of every epoch's sample grid against real images."""

    def run() -> list:
        from cxr_ray import gan_curve, storage
        from cxr_ray.report.plots import quality_curves

        s3 = s3_settings(s3_endpoint, s3_region)
        results = [
            gan_curve.quality_curve(run_uri, split=split, encoder_uri=encoder, seed=seed, s3=s3, log=echo_err)
            for run_uri in runs
        ]
        if out:
            storage.write_json_atomic(storage.join(out, gan_curve.CURVE_FILE), {"curves": results}, s3)
            png = quality_curves(results, f"GAN quality over training ({results[0]['n_fake']} fixed-noise fakes per epoch)")
            storage.write_bytes_atomic(storage.join(out, gan_curve.CURVE_PLOT), png, s3)
        return results

    results = guarded(run)
    from cxr_ray.gan_curve import format_curve

    typer.echo("\n\n".join(format_curve(r) for r in results))
