"""The study's command line (jobs/full_study.py and `cxr-ray study`): argv in, typed StudyOptions out.

The only place that sees an argparse Namespace; everything after it takes StudyOptions.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from cxr_ray.data.decode import SUPPORTED_RESOLUTIONS
from cxr_ray.study.profile import MODEL_FIELDS, PROFILES, StudyOptions

# Profile knobs given as plain values on the command line (model lists are MODEL_FIELDS).
VALUE_FIELDS: tuple[str, ...] = (
    "data", "resolution", "gan_epochs", "gan_width", "fakes_per_class", "test_fakes_per_class", "epochs",
    "batch_size", "workers", "tune_samples", "tune_max_epochs", "robust_aug", "window_aug", "claim_per_class",
    "claim_seeds", "claim_epochs", "generalise_model", "n_boot", "seed",
)

EPILOG = (
    "Examples:\n"
    "  python jobs/full_study.py                                   # quick study, embedded sample, runs/study\n"
    "  cxr-ray study --profile full --data ../shared/data/chest_xray --storage s3://bucket/study\n"
    "  ray job submit --working-dir . -- python jobs/full_study.py --profile full --data s3://bucket/chest_xray \\\n"
    "      --storage s3://bucket/study --epochs 5 --models cnn,resnet18\n"
    "Re-running the same command skips finished stages and resumes an interrupted one."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="full_study.py",
        description="Run the chest X-ray deepfake study on Ray (local or cluster, local or S3 storage).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    p.add_argument("--data", help="Kaggle-layout source folder, path or s3:// (quick default: embedded sample)")
    p.add_argument("--storage", default="runs/study", help="study root, path or s3:// (default runs/study)")
    p.add_argument("--resolution", type=int, choices=SUPPORTED_RESOLUTIONS)
    p.add_argument("--gan-epochs", type=int)
    p.add_argument("--gan-width", type=int, help="DCGAN ngf = ndf")
    p.add_argument("--fakes-per-class", type=int)
    p.add_argument("--test-fakes-per-class", type=int)
    p.add_argument("--models", help="comma-separated registered model names (default: every registered model)")
    p.add_argument("--epochs", type=int, help="classifier/detector epochs (when not tuned)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int, help="Ray Train workers per training")
    p.add_argument("--tune-models", help="comma-separated models to tune ('' for none)")
    p.add_argument("--robust-models", help="comma-separated models whose detector is also trained with blur/JPEG and window/level augmentation ('' for none)")
    p.add_argument("--robust-aug", type=float, help="per-image probability of the blur/JPEG augmentation")
    p.add_argument("--window-aug", type=float, help="per-image probability of the window/level augmentation (robust detectors)")
    p.add_argument("--raw-models", help="comma-separated models whose detector is also trained on raw (not archive-format) fakes ('' for none)")
    p.add_argument("--benign-conditions", help="comma-separated benign re-processings of the real val and test images (default: all)")
    p.add_argument("--perturbations", help="comma-separated perturbations applied to both classes at evaluation (default: all)")
    p.add_argument("--claim-models", help="comma-separated models for the seed's transfer claim ('' for none)")
    p.add_argument("--claim-per-class", type=int, help="train images per class of each transfer-claim training (default 250: the seed's 500 fakes)")
    p.add_argument("--claim-seeds", type=int, help="seeds per model for the transfer claim (at least 3 for a result)")
    p.add_argument("--claim-epochs", type=int, help="epochs of each transfer-claim training (best epoch by val AUC is kept)")
    p.add_argument("--families", help="comma-separated generator families trained beside the DCGAN (default sngan,vae; '' for none)")
    p.add_argument("--generalise-designs", help="comma-separated leave-one-family-out designs (default plain,generalising,upsampling)")
    p.add_argument("--generalise-model", help="architecture of the leave-one-family-out detectors (default resnet18)")
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


def comma_list(value: str) -> tuple[str, ...]:
    """'cnn,resnet18' -> ('cnn', 'resnet18'); '' -> () (none). Names are checked later (models against the registry)."""
    return tuple(m for m in value.split(",") if m)


def study_options(args: argparse.Namespace) -> StudyOptions:
    """The chosen profile with every option that was given on top."""
    overrides: dict[str, Any] = {key: getattr(args, key) for key in VALUE_FIELDS if getattr(args, key) is not None}
    overrides.update({key: comma_list(getattr(args, key)) for key in MODEL_FIELDS if getattr(args, key) is not None})
    for key in ("benign_conditions", "perturbations", "families", "generalise_designs"):
        if getattr(args, key) is not None:
            overrides[key] = comma_list(getattr(args, key))
    return StudyOptions(
        profile=replace(PROFILES[args.profile], **overrides),
        storage=args.storage,
        sequential=args.sequential,
        overwrite=args.overwrite,
    )
