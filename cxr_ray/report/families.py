"""Report sections of issue 15: the generator families (quality, samples) and leave-one-family-out detection."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from cxr_ray import storage
from cxr_ray.data.layout import CLASS_NAMES
from cxr_ray.report import plots
from cxr_ray.report.doc import Doc
from cxr_ray.storage import S3Settings

SampleReader = Callable[[str, str, str, int], np.ndarray]  # (table, class, split, n) -> uint8 images


def families_section(doc: Doc, families: dict[str, Any], sample: SampleReader) -> None:
    """Per family: how it generates, FD/KID against the real test split (untrained generator beside it), samples."""
    from cxr_ray.models import generators

    doc.heading("Generator families beside the DCGAN")
    if not families:
        doc.para("No further generator families in this study (--families '').")
        return
    doc.para(
        "Each family is trained per class with Ray Train on the train split only, at the DCGAN's epochs and width, "
        "with its family's usual optimiser; its fakes use the DCGAN's seeds and are stored in the archive's format "
        "(what the detectors see) and raw. " + " ".join(f"{name}: {text}." for name, text in generators.DESCRIPTIONS.items())
    )
    rows = []
    for family, out in sorted(families.items()):
        for cls, q in sorted((out.get("quality") or {}).items()):
            for r in q.get("rows", []):
                rows.append([family, cls, r["comparison"], r["n_reference"], r["n_other"], r["fd"], r["kid"]])
    if rows:
        doc.table(["family", "class", "comparison", "n real", "n other", "FD", "KID"], rows)
    for family, out in sorted(families.items()):
        table = out.get("table")
        for cls in CLASS_NAMES:
            images = sample(table, cls, "test", 16) if table else np.zeros((0, 1, 1), np.uint8)
            if len(images):
                doc.image(f"fake_{family}_{cls.lower()}.png", plots.image_grid(images, f"{family} fakes {cls}, archive format"),
                          f"{family} fakes of class {cls} as the archive stores them (held-out test seeds, {table}).")


def generalise_section(doc: Doc, generalise: dict[str, Any], generalise_dir: str, s3: S3Settings | None) -> None:
    """The leave-one-family-out table as the generalise stage wrote it, and the deployed detector for `cxr-ray scan`."""
    from cxr_ray.generalise import DEPLOYED_DESIGN, REPORT_FILE, deployed_run

    doc.heading("Fakes from generator families a detector never saw")
    uri = storage.join(storage.published(generalise_dir, s3), REPORT_FILE)
    if not storage.exists(uri, s3):
        doc.para("No leave-one-family-out result found.")
        return
    deployed = deployed_run(generalise)
    if deployed:
        doc.para(
            f"Deployed detector (the {DEPLOYED_DESIGN} design on every family): `{deployed}`; `cxr-ray scan SRC "
            "--detector STUDY_ROOT --out OUT` uses it (a study root stands for its deployed detector)."
        )
    text = storage.read_bytes(uri, s3).decode()
    lines = [("#" + line if line.startswith("##") else line) for line in text.splitlines() if not line.startswith("# ")]
    doc.markdown("\n".join(lines))
