"""The full study as one job: stages run in order against one study root.

Shared by `jobs/full_study.py` (for `ray job submit`) and `cxr-ray study`.
Each stage writes a complete, marker-carrying output under the study root;
a re-run skips a stage whose output is already complete.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from cxr_ray import storage
from cxr_ray.storage import S3Settings

SAMPLE_DATA = str(Path(__file__).resolve().parent / "sample" / "chest_xray")


@dataclass(frozen=True)
class Profile:
    """Defaults a profile sets; every one can be overridden on the command line."""

    name: str
    resolution: int
    data: str | None  # None: must be given with --data


PROFILES = {
    "quick": Profile(name="quick", resolution=64, data=SAMPLE_DATA),
    "full": Profile(name="full", resolution=64, data=None),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="full_study.py",
        description="Run the chest X-ray deepfake study on Ray (local or cluster, local or S3 storage).",
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    p.add_argument("--data", help="Kaggle-layout source folder, path or s3:// (quick default: embedded sample)")
    p.add_argument("--storage", default="runs/study", help="study root, path or s3:// (default runs/study)")
    p.add_argument("--resolution", type=int, choices=(64, 128, 224), help="study resolution (profile default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="redo finished stages")
    p.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (else CXR_RAY_S3_ENDPOINT / AWS_ENDPOINT_URL)")
    p.add_argument("--s3-region", help="S3 region (else AWS_REGION)")
    p.add_argument("--address", help="Ray address (else RAY_ADDRESS, else a local Ray)")
    return p


def run_study(args: argparse.Namespace, log=print) -> dict:
    from cxr_ray.config import IngestConfig
    from cxr_ray.data.ingest import format_summary, run_ingest
    from cxr_ray.runtime import init_ray

    profile = PROFILES[args.profile]
    data = args.data or profile.data
    if data is None:
        raise SystemExit(f"profile {profile.name!r} needs --data (a Kaggle-layout folder or s3:// prefix)")
    resolution = args.resolution or profile.resolution
    s3 = S3Settings.from_env()
    if args.s3_endpoint:
        s3 = replace(s3, endpoint_url=args.s3_endpoint)
    if args.s3_region:
        s3 = replace(s3, region=args.s3_region)

    init_ray(args.address)
    outputs: dict[str, str] = {}
    ingest_uri = storage.join(args.storage, "data", f"real-{resolution}")
    if storage.is_complete(ingest_uri, s3) and not args.overwrite:
        log(f"[ingest] already complete at {ingest_uri}; skipping")
    else:
        summary = run_ingest(
            IngestConfig(src=data, dest=ingest_uri, resolution=resolution, seed=args.seed, overwrite=True, s3=s3),
            log=log,
        )
        log(format_summary(summary))
    outputs["ingest"] = ingest_uri
    log(f"study outputs under {args.storage}")
    return outputs


def run_study_cli(argv: Sequence[str] | None = None) -> int:
    from cxr_ray.config import ConfigError
    from cxr_ray.data.ingest import IngestError
    from cxr_ray.storage import StorageError

    args = build_parser().parse_args(argv)
    try:
        run_study(args)
    except (ConfigError, IngestError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
