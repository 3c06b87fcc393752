"""The study's command line (jobs/full_study.py and `cxr-ray study`): argv in, typed StudyOptions out.

The only place that sees an argparse Namespace; everything after it takes StudyOptions.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from cxr_ray.cli.study_options import STUDY_EPILOG, STUDY_OPTIONS
from cxr_ray.study.profile import MODEL_FIELDS, PROFILES, StudyOptions

# Profile knobs given as plain values on the command line (model lists are MODEL_FIELDS).
VALUE_FIELDS: tuple[str, ...] = (
    "data", "resolution", "gan_epochs", "gan_width", "fakes_per_class", "test_fakes_per_class", "epochs",
    "batch_size", "workers", "tune_samples", "tune_max_epochs", "robust_aug", "window_aug", "claim_per_class",
    "claim_seeds", "claim_epochs", "generalise_model", "tamper_epochs", "tamper_width", "localiser_epochs",
    "localiser_width", "n_boot", "seed", "accelerator", "gpus_per_worker", "cpus_per_worker", "pool_min", "pool_max",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="full_study.py",
        description="Run the chest X-ray deepfake study on Ray (local or cluster, local or S3 storage).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=STUDY_EPILOG,
    )
    for option in STUDY_OPTIONS:
        text = option.help.replace("%", "%%")  # argparse %-formats help ("95% intervals" broke --help)
        if option.kind is bool:
            p.add_argument(option.flag, action="store_true", help=text)
        else:
            p.add_argument(option.flag, type=option.kind, choices=option.choices, default=option.default, help=text)
    return p


def comma_list(value: str) -> tuple[str, ...]:
    """'cnn,resnet18' -> ('cnn', 'resnet18'); '' -> () (none). Names are checked later (models against the registry)."""
    return tuple(m for m in value.split(",") if m)


def study_options(args: argparse.Namespace) -> StudyOptions:
    """The chosen profile with every option that was given on top."""
    overrides: dict[str, Any] = {key: getattr(args, key) for key in VALUE_FIELDS if getattr(args, key) is not None}
    overrides.update({key: comma_list(getattr(args, key)) for key in MODEL_FIELDS if getattr(args, key) is not None})
    for key in ("benign_conditions", "perturbations", "families", "generalise_designs", "custom_resources"):
        if getattr(args, key) is not None:
            overrides[key] = comma_list(getattr(args, key))
    return StudyOptions(
        profile=replace(PROFILES[args.profile], **overrides),
        storage=args.storage,
        sequential=args.sequential,
        overwrite=args.overwrite,
    )
