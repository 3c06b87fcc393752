"""The Kaggle chest-X-ray folder layout: which file is which split, class and patient.

Pure Python (no Ray, no image decoding) so the rules are easy to test and the
driver can plan a whole ingest from file names alone.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
KAGGLE_SPLITS: tuple[str, ...] = ("train", "val", "test")

# PNEUMONIA: person1234_bacteria_5678.jpeg, person447_virus_921_1.jpeg
_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
# NORMAL: IM-0115-0001.jpeg, NORMAL2-IM-0173-0001-0002.jpeg (trailing -0002 = same patient)
_IM = re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)


@dataclass(frozen=True)
class SourceFile:
    """One file found under the source folder, with what its place says about it."""

    path: str  # full path for the filesystem (no s3:// prefix)
    rel: str  # path relative to the source root, '/'-separated
    size: int
    kaggle_split: str | None  # train / val / test, or None when misplaced
    class_name: str | None  # NORMAL / PNEUMONIA, or None
    problem: str | None  # why the file cannot be used, decided from its place alone


def cohort(kaggle_split: str) -> str:
    """Patient-id namespace.

    Kaggle's test folder numbers its patients independently of train: e.g.
    train's person100 has a viral pneumonia, test's person100 a bacterial one.
    The 16-image val folder continues train's numbering, so it joins train.
    """
    return "test" if kaggle_split == "test" else "train"


def patient_id(file_name: str, kaggle_split: str) -> tuple[str, bool]:
    """(patient id, parsed?) from a file name. Unparsed names become their own patient."""
    name = file_name.replace(os.sep, "/").rpartition("/")[2]
    stem = name.rpartition(".")[0] or name  # os.path.splitext's stem, at a third of its cost
    for pattern in (_PERSON, _IM):
        m = pattern.match(stem)
        if m:
            return f"{cohort(kaggle_split)}/{m.group(1)}", True
    return f"{cohort(kaggle_split)}/{stem}", False


def classify_path(rel: str) -> tuple[str | None, str | None, str | None]:
    """(kaggle_split, class_name, problem) for a path relative to the source root."""
    parts = [p for p in rel.split("/") if p]
    name = parts[-1] if parts else rel
    if name.startswith("."):
        return None, None, "hidden file"
    if len(parts) != 3:
        return None, None, "not inside a {split}/{class}/ folder"
    split, cls, _ = parts
    if split not in KAGGLE_SPLITS:
        return None, None, f"unknown split folder {split!r} (expected one of {', '.join(KAGGLE_SPLITS)})"
    if cls not in CLASS_NAMES:
        return split, None, f"unknown class folder {cls!r} (expected one of {', '.join(CLASS_NAMES)})"
    return split, cls, None


class LayoutError(ValueError):
    """The source folder is not a Kaggle chest-X-ray layout; nothing was written."""


def check_layout(src_uri: str, files: list[SourceFile]) -> None:
    """Stop early, with one clear message, when the tree cannot be a Kaggle layout."""
    if not files:
        raise LayoutError(f"{src_uri}: no files found (empty folder?)")
    usable = [f for f in files if f.class_name is not None]
    if usable:
        return
    splits = sorted({f.rel.split("/")[0] for f in files if "/" in f.rel})
    known = [s for s in splits if s in KAGGLE_SPLITS]
    if not known:
        raise LayoutError(
            f"{src_uri}: no split folders; expected {'/'.join(KAGGLE_SPLITS)} folders each holding "
            f"{' and '.join(CLASS_NAMES)} folders (found: {', '.join(splits) or 'only loose files'})"
        )
    raise LayoutError(
        f"{src_uri}: no class folders; expected {known[0]}/NORMAL/ and {known[0]}/PNEUMONIA/ "
        f"holding images"
    )


def carve_validation(
    patients_by_class: dict[str, list[str]], val_fraction: float, seed: int
) -> set[str]:
    """Pick whole patients for validation, stratified by class, reproducibly.

    Sorting before the seeded permutation makes the choice independent of
    listing order (S3 and local listings differ).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for cls in sorted(patients_by_class):
        patients = sorted(set(patients_by_class[cls]))
        n_val = int(round(val_fraction * len(patients)))
        if val_fraction > 0 and len(patients) >= 2:
            n_val = max(1, n_val)
        order = rng.permutation(len(patients))
        chosen.update(patients[i] for i in order[:n_val])
    return chosen


@dataclass(frozen=True)
class PlannedImage:
    path: str
    rel: str
    split: str  # train / val / test (study split)
    kaggle_split: str
    class_name: str
    label: int
    patient_id: str
    patient_parsed: bool


def plan_splits(files: list[SourceFile], val_fraction: float, seed: int) -> list[PlannedImage]:
    """Assign every usable file a study split: Kaggle test stays test; train+val pool is re-split by patient."""
    planned: list[PlannedImage] = []
    pool: dict[str, list[str]] = defaultdict(list)
    rows = []
    for f in files:
        if f.problem is not None or f.class_name is None or f.kaggle_split is None:
            continue
        pid, parsed = patient_id(f.rel, f.kaggle_split)
        rows.append((f, pid, parsed))
        if f.kaggle_split != "test":
            pool[f.class_name].append(pid)
    val_patients = carve_validation(pool, val_fraction, seed)
    for f, pid, parsed in rows:
        if f.kaggle_split == "test":
            split = "test"
        else:
            split = "val" if pid in val_patients else "train"
        planned.append(
            PlannedImage(
                path=f.path,
                rel=f.rel,
                split=split,
                kaggle_split=f.kaggle_split,  # type: ignore[arg-type]
                class_name=f.class_name,  # type: ignore[arg-type]
                label=CLASS_NAMES.index(f.class_name),  # type: ignore[arg-type]
                patient_id=pid,
                patient_parsed=parsed,
            )
        )
    return planned


def relative(root_path: str, path: str) -> str:
    """`path` relative to `root_path`, '/'-separated."""
    path, root = path.replace(os.sep, "/"), root_path.replace(os.sep, "/").rstrip("/")
    # Listings return paths under the root: a prefix cut, not relpath's
    # normalisation, which cost more than the listing itself on 6k files.
    if root and path.startswith(root + "/"):
        return path[len(root) + 1 :]
    return posixpath.relpath(path, root or "/")
