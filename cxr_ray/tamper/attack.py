"""Attack success: how often an edit flips the project's pneumonia classifiers (issue 16).

Each classifier scores the real test images and their edits (cxr-ray tamper)
in one Ray Data scoring pass (cxr_ray.scoring.pipeline) and calls each image
at its own validation threshold. Per classifier and direction:

* inject (NORMAL images with an opacity painted in): the share called
  PNEUMONIA, unedited and edited;
* remove (PNEUMONIA images with normal lung painted over part of one): the
  share called NORMAL, unedited and edited;

the paired difference (edited - unedited, the same images) and the share of
the images the classifier called right unedited that the edit flipped, each
with a patient-bootstrap interval (patients resampled, every image of a
patient with it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from cxr_ray.config import ConfigError
from cxr_ray.storage import S3Settings

ATTACK_NAME = "attack"  # DEST/attack.parquet (+ .csv) and attack.md
TARGET_CLASS = {"inject": 1, "remove": 0}  # the class an edit in each direction wants the classifier to say


@dataclass(frozen=True)
class AttackConfig:
    tampered: str  # the edits (cxr-ray tamper output; test rows are used)
    real: str  # the real table they were made from
    runs: tuple[str, ...]  # pneumonia classifier run folders, or roots holding them
    dest: str
    n_boot: int = 1000
    seed: int = 0
    resources: dict | None = None  # what each scoring actor asks of a node, and the pool's bounds (cxr_ray.resources)
    overwrite: bool = False

    def __post_init__(self) -> None:
        from cxr_ray.config import at_least, check_fields

        check_fields(self)
        object.__setattr__(self, "runs", tuple(self.runs))
        if not self.runs:
            raise ConfigError("runs: give at least one pneumonia classifier run or runs root")
        at_least(self, 1, "n_boot")
        at_least(self, 0, "seed")


def paired_calls(predictions: pa.Table, run: str, threshold: float) -> dict[str, dict[str, np.ndarray]]:
    """Per direction: each edited test image's call and its original's (1 = PNEUMONIA), and the patient ids."""
    from cxr_ray.tamper.job import DIRECTIONS, original_of

    rows = [r for r in predictions.to_pylist() if r["run"] == run]
    originals = {r["path"]: r for r in rows if r["table"] == "real"}
    out: dict[str, dict[str, list[Any]]] = {d: {"edited": [], "original": [], "patient": [], "label": []} for d in DIRECTIONS.values()}
    for r in rows:
        if r["table"] != "tampered":
            continue
        original = originals.get(original_of(r["path"]))
        if original is None:
            raise ConfigError(f"{r['path']}: its original is not among the real table's test rows")
        cell = out[DIRECTIONS[int(original["label"])]]
        cell["edited"].append(int(r["score"] >= threshold))
        cell["original"].append(int(original["score"] >= threshold))
        cell["patient"].append(original["patient_id"])
        cell["label"].append(int(original["label"]))
    return {d: {k: np.asarray(v) for k, v in cell.items()} for d, cell in out.items()}


def attack_rows(run: Any, calls: dict[str, dict[str, np.ndarray]], n_boot: int, seed: int) -> list[dict[str, Any]]:
    """One row per direction: unedited and edited rate of the class the edit wants, their difference, flips."""
    from cxr_ray.metrics import patient_mean_interval

    rows = []
    for direction, cell in calls.items():
        if not len(cell["edited"]):
            continue
        wanted = TARGET_CLASS[direction]
        said_edited = (cell["edited"] == wanted).astype(np.float64)
        said_original = (cell["original"] == wanted).astype(np.float64)
        right = cell["original"] == cell["label"]  # the unedited image called right: the edit can flip it
        edited = patient_mean_interval(said_edited, cell["patient"], n_boot, seed, rate=True)
        original = patient_mean_interval(said_original, cell["patient"], n_boot, seed, rate=True)
        difference = patient_mean_interval(said_edited - said_original, cell["patient"], n_boot, seed)
        flipped = patient_mean_interval(said_edited[right], cell["patient"][right], n_boot, seed, rate=True)
        rows.append({
            "run": run.run, "model": run.model, "train_source": run.train_source, "direction": direction,
            "n": int(len(said_edited)), "threshold": float(run.threshold),
            "unedited_rate": original[0], "unedited_low": original[1], "unedited_high": original[2],
            "edited_rate": edited[0], "edited_low": edited[1], "edited_high": edited[2],
            "difference": difference[0], "difference_low": difference[1], "difference_high": difference[2],
            "n_right_unedited": int(right.sum()),
            "flipped": flipped[0], "flipped_low": flipped[1], "flipped_high": flipped[2],
        })  # fmt: skip
    return rows


def format_report(table: pa.Table, cfg: AttackConfig) -> str:
    lines = [
        "# Attack success: edits that flip the pneumonia classifiers",
        "",
        f"Edits: `{cfg.tampered}` (test rows); originals: `{cfg.real}`. Each classifier calls an image at its own "
        f"validation threshold. Rates are of the class the edit wants (inject: PNEUMONIA, remove: NORMAL); "
        f"flipped: of the images called right unedited, the share the edit turned. 95% patient-bootstrap intervals "
        f"({cfg.n_boot} resamples, seed {cfg.seed}).",
        "",
        "| classifier | direction | n | unedited | edited | edited - unedited | flipped (of n right) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    pct = lambda v, lo, hi: f"{v:.1%} [{lo:.1%}, {hi:.1%}]"  # noqa: E731
    for r in table.to_pylist():
        lines.append(
            f"| {r['run']} | {r['direction']} | {r['n']} | {pct(r['unedited_rate'], r['unedited_low'], r['unedited_high'])} "
            f"| {pct(r['edited_rate'], r['edited_low'], r['edited_high'])} "
            f"| {pct(r['difference'], r['difference_low'], r['difference_high'])} "
            f"| {pct(r['flipped'], r['flipped_low'], r['flipped_high'])} ({r['n_right_unedited']}) |"
        )
    return "\n".join(lines) + "\n"


def run_attack(
    cfg: AttackConfig, *, s3: S3Settings | None = None, log: Callable[[str], None] = print, address: str | None = None
) -> dict[str, Any]:
    """Score originals and edits with every pneumonia classifier; write DEST/attack.{parquet,csv,md}, summary.json."""
    from cxr_ray import storage
    from cxr_ray.runtime import init_ray
    from cxr_ray.scoring.output import write_output_folder
    from cxr_ray.scoring.pipeline import score_runs
    from cxr_ray.scoring.runs import load_runs

    t0 = time.perf_counter()
    s3 = s3 or S3Settings.from_env()
    storage.check_separate(cfg.dest, (cfg.tampered, cfg.real, *cfg.runs), "input")
    storage.check_destination(cfg.dest, s3, cfg.overwrite)
    runs = [r for r in load_runs(cfg.runs, s3) if r.task == "pneumonia"]
    if not runs:
        raise ConfigError(f"no pneumonia classifier runs under {', '.join(cfg.runs)}")
    init_ray(address)
    log(f"attack: {len(runs)} classifier(s) on the test edits of {cfg.tampered} and their originals")
    predictions = score_runs(runs, {"real": cfg.real, "tampered": cfg.tampered}, ("none",), s3, seed=cfg.seed,
                             resources=cfg.resources)
    rows = [row for run in runs for row in attack_rows(run, paired_calls(predictions, run.run, run.threshold), cfg.n_boot, cfg.seed)]
    if not rows:
        raise ConfigError(f"{cfg.tampered}: no test edits to score")
    table = pa.Table.from_pylist(rows)
    summary = {"tampered": cfg.tampered, "real": cfg.real, "runs": [r.run_dir for r in runs], "rows": rows,
               "n_boot": cfg.n_boot, "seed": cfg.seed, "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
    write_output_folder(cfg.dest, {ATTACK_NAME: table}, summary, s3, cfg.overwrite,
                        texts={f"{ATTACK_NAME}.md": format_report(table, cfg)}, csv=(ATTACK_NAME,))  # fmt: skip
    return summary
