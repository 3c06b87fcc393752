"""Every option of the study's command line, once: argparse (jobs/full_study.py, cxr_ray/study/args.py) and the
typer command `cxr-ray study` are both built from STUDY_OPTIONS.

Standard library only, so `cxr-ray --help` imports nothing heavy; the profile names and resolutions written
here are checked against cxr_ray.study.profile.PROFILES and cxr_ray.data.decode by a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STUDY_EPILOG = (
    "Examples:\n\n"
    "  python jobs/full_study.py                                   # quick study, embedded sample, runs/study\n"
    "  cxr-ray study --profile full --data ../shared/data/chest_xray --storage s3://bucket/study\n"
    "  ray job submit --working-dir . -- python jobs/full_study.py --profile full --data s3://bucket/chest_xray \\\n"
    "      --storage s3://bucket/study --epochs 5 --models cnn,resnet18\n"
    "Re-running the same command skips finished stages and resumes an interrupted one."
)

PROFILE_NAMES = ("full", "quick")
RESOLUTIONS = (64, 128, 224)


@dataclass(frozen=True)
class StudyOption:
    flag: str  # "--gan-epochs"
    kind: type  # str, int, float, or bool for an on/off flag
    help: str = ""
    default: Any = None
    choices: tuple[Any, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


def _comma(what: str) -> str:
    return f"comma-separated {what}"


STUDY_OPTIONS: tuple[StudyOption, ...] = (
    StudyOption("--profile", str, "quick: CPU minutes on the embedded sample; full: the GPU defaults (needs --data)", "quick", PROFILE_NAMES),
    StudyOption("--data", str, "Kaggle-layout source folder, path or s3:// (quick default: embedded sample)"),
    StudyOption("--storage", str, "study root, path or s3:// (default runs/study)", "runs/study"),
    StudyOption("--resolution", int, "image size the study works at", None, RESOLUTIONS),
    StudyOption("--gan-epochs", int, "epochs of every generator"),
    StudyOption("--gan-width", int, "DCGAN ngf = ndf"),
    StudyOption("--fakes-per-class", int, "detector train+val fakes per class"),
    StudyOption("--test-fakes-per-class", int, "held-out test fakes per class"),
    StudyOption("--models", str, _comma("registered model names (default: every registered model)")),
    StudyOption("--epochs", int, "classifier/detector epochs (when not tuned)"),
    StudyOption("--batch-size", int, "classifier/detector batch size per worker"),
    StudyOption("--workers", int, "Ray Train workers per training"),
    StudyOption("--accelerator", str, "what each training worker and Ray Data actor asks for: gpu (full), cpu, or auto "
                "(quick: what the local node has; not for an autoscaling cluster)", None, ("auto", "cpu", "gpu")),
    StudyOption("--gpus-per-worker", float, "GPUs per training worker and Ray Data actor, with --accelerator gpu (default 1)"),
    StudyOption("--cpus-per-worker", float, "CPUs per training worker and Ray Data actor (full default 4; 0: 1, shared on CPU nodes)"),
    StudyOption("--custom-resources", str, _comma("NAME=AMOUNT resources each worker and actor also asks for (a node type's own)")),
    StudyOption("--pool-min", int, "Ray Data actor pools start at this many actors (default 1)"),
    StudyOption("--pool-max", int, "...and grow to this many; also the most trainings side by side (full default 4; 0: what fits)"),
    StudyOption("--tune-models", str, _comma("models to tune ('' for none)")),
    StudyOption("--robust-models", str, _comma("models whose detector is also trained with blur/JPEG and window/level augmentation ('' for none)")),
    StudyOption("--robust-aug", float, "per-image probability of the blur/JPEG augmentation"),
    StudyOption("--window-aug", float, "per-image probability of the window/level augmentation (robust detectors)"),
    StudyOption("--raw-models", str, _comma("models whose detector is also trained on raw (not archive-format) fakes ('' for none)")),
    StudyOption("--benign-conditions", str, _comma("benign re-processings of the real val and test images (default: all)")),
    StudyOption("--perturbations", str, _comma("perturbations applied to both classes at evaluation (default: all)")),
    StudyOption("--claim-models", str, _comma("models for the seed's transfer claim ('' for none)")),
    StudyOption("--claim-per-class", int, "train images per class of each transfer-claim training (default 250: the seed's 500 fakes)"),
    StudyOption("--claim-seeds", int, "seeds per model for the transfer claim (at least 3 for a result)"),
    StudyOption("--claim-epochs", int, "epochs of each transfer-claim training (best epoch by val AUC is kept)"),
    StudyOption("--families", str, _comma("generator families trained beside the DCGAN (default sngan,vae; '' for none)")),
    StudyOption("--generalise-designs", str, _comma("leave-one-family-out designs (default plain,generalising,upsampling)")),
    StudyOption("--generalise-model", str, "architecture of the leave-one-family-out detectors (default resnet18)"),
    StudyOption("--tamper-epochs", int, "epochs of the tamper model that injects and removes findings (0 skips local tampering)"),
    StudyOption("--tamper-width", int, "tamper model width, ngf = ndf (a multiple of 8)"),
    StudyOption("--localiser-epochs", int, "epochs of the localiser that finds the edits"),
    StudyOption("--localiser-width", int, "localiser U-Net width (a multiple of 8)"),
    StudyOption("--tune-samples", int, "trials per Tune search"),
    StudyOption("--tune-max-epochs", int, "epochs of the longest Tune trial"),
    StudyOption("--n-boot", int, "bootstrap replicates for the 95% intervals"),
    StudyOption("--seed", int, "seed of every split, generator, training and bootstrap"),
    StudyOption("--sequential", bool, "run trainings one after another (for timing)"),
    StudyOption("--dry-run", bool, "print the plan from the study's manifest (each stage: run, resume or skip, and why) "
                "without starting Ray"),
    StudyOption("--overwrite", bool, "redo every stage"),
    StudyOption("--verbose", bool, "print every line (stage detail, Ray's worker and internal logs) here; by default "
                "they go to the study's log file (ROOT/logs/, named on the console) and the console shows one line "
                "per stage start and end"),
    StudyOption("--s3-endpoint", str, "S3-compatible endpoint URL (else CXR_RAY_S3_ENDPOINT / AWS_ENDPOINT_URL)"),
    StudyOption("--s3-region", str, "S3 region (else AWS_REGION)"),
    StudyOption("--address", str, "Ray address (else RAY_ADDRESS, else a local Ray)"),
)


def to_argv(values: dict[str, Any]) -> list[str]:
    """Keyword values (dest -> value; None or False: not given) as the command line argparse reads."""
    argv: list[str] = []
    for option in STUDY_OPTIONS:
        value = values.get(option.dest)
        if value is None or value is False:
            continue
        argv.extend([option.flag] if option.kind is bool else [option.flag, str(value)])
    return argv
