"""Which detector a study deployed: what `cxr-ray scan --detector STUDY_ROOT` scans with."""

from __future__ import annotations

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.filenames import TEST_METRICS_FILE
from cxr_ray.manifest import MANIFEST_FILE, Manifest
from cxr_ray.storage import S3Settings
from cxr_ray.study.layout import StudyLayout


def study_detector(root: str, s3: S3Settings | None) -> str | None:
    """The detector run the study at `root` deployed (its generalise stage's), None when `root` is no study root.

    ConfigError, saying why, for a study that has none yet. A study folder that was moved still resolves:
    the run is looked for under the root's own generalise-runs folder when its recorded path is gone.
    """
    from cxr_ray.generalise import DEPLOYED_DESIGN, deployed_run

    if not storage.exists(storage.join(root, MANIFEST_FILE), s3):
        return None
    stage = Manifest.load(root, s3).stages.get("generalise", {})
    if stage.get("status") != "done":
        raise ConfigError(f"{root}: the study's generalise stage has not finished, so it has no deployed detector yet; "
                          "run the study, or give a detector run folder")  # fmt: skip
    run = deployed_run(stage.get("outputs") or {})
    if run is None:
        raise ConfigError(f"{root}: this study deployed no detector (no generator families, or designs without "
                          f"{DEPLOYED_DESIGN!r}); give a detector run folder")  # fmt: skip
    if storage.exists(storage.join(run, TEST_METRICS_FILE), s3):
        return run
    moved = storage.join(StudyLayout(root).generalise_runs, run.rstrip("/").split("/")[-1])
    if storage.exists(storage.join(moved, TEST_METRICS_FILE), s3):
        return moved
    raise ConfigError(f"{root}: its deployed detector {run} is missing")
