"""The transfer experiment: pneumonia classifiers across real and generated X-rays.

For every architecture, classifiers trained on real images and on fakes are
both tested on the real test split and on the held-out fakes (a fake's label
is the class its GAN learnt), giving the matrix {train real, train fake} x
{test real, test fake} with accuracy and AUC and 95% bootstrap intervals at
each run's val-chosen threshold. Per fake class it also reports how often a
model calls the fakes pneumonia and how confident it is. The Markdown
explanation is generated from these numbers; it states comparisons, not
conclusions fixed in advance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxr_ray.config import ConfigError
from cxr_ray.scoring import (
    FAKE_TEST,
    PREDICTIONS_NAME,
    REAL_TEST,
    ModelRun,
    ScoringConfig,
    check_inputs,
    load_runs,
    metrics_table,
    score_runs,
    write_output_folder,
)
from cxr_ray.storage import S3Settings

MATRIX_NAME = "transfer"
PER_CLASS_NAME = "per_class"
MARKDOWN_FILE = "transfer.md"
SET_LABELS = {REAL_TEST: "real test", FAKE_TEST: "fakes (held-out seeds)"}


@dataclass(frozen=True)
class TransferConfig(ScoringConfig):
    """Pneumonia runs scored on the real test split and on held-out fakes (no perturbation)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.fakes:
            raise ConfigError("fakes: the transfer experiment needs a generated fake table")


def per_class_table(predictions: pa.Table, runs: Sequence[ModelRun]) -> pa.Table:
    """Per run, evaluation set and class: share called PNEUMONIA (at the val threshold), mean P(PNEUMONIA),
    and mean confidence max(P, 1 - P)."""
    rows = []
    for run in runs:
        mine = predictions.filter(pc.equal(predictions.column("run"), run.run))
        for eval_set, source in ((REAL_TEST, "real"), (FAKE_TEST, "fake")):
            part = mine.filter(pc.equal(mine.column("source"), source))
            for class_name in sorted(set(part.column("class_name").to_pylist())):
                score = np.asarray(part.filter(pc.equal(part.column("class_name"), class_name)).column("score").to_pylist(), dtype=np.float64)
                called = score >= run.threshold
                rows.append(
                    {
                        "model": run.model, "run": run.run, "train_source": run.train_source, "eval_set": eval_set,
                        "class_name": class_name, "n": int(len(score)),
                        "called_pneumonia": float(called.mean()),
                        "mean_p_pneumonia": float(score.mean()),
                        # The model's own confidence in its more likely class, whatever the threshold.
                        "mean_confidence": float(np.maximum(score, 1.0 - score).mean()),
                        "threshold": run.threshold,
                    }
                )
    return pa.Table.from_pylist(rows)


# ---------------------------------------------------------------- the Markdown explanation


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "n/a"
    if np.isnan(row["value"]):
        return "undefined"
    return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def _index(matrix: pa.Table) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["run"], r["eval_set"], r["metric"]): r for r in matrix.to_pylist()}


def matrix_lines(matrix: pa.Table, runs: Sequence[ModelRun]) -> list[str]:
    index = _index(matrix)
    lines = ["| model | trained on | tested on | n | accuracy [95% CI] | AUC [95% CI] |", "|---|---|---|---:|---|---|"]
    for run in sorted(runs, key=lambda r: (r.model, r.train_source, r.run)):
        for eval_set in (REAL_TEST, FAKE_TEST):
            acc, auc = index.get((run.run, eval_set, "accuracy")), index.get((run.run, eval_set, "auc"))
            n = acc["n"] if acc else 0
            lines.append(f"| {run.model} | {run.train_source} | {SET_LABELS[eval_set]} | {n} | {_cell(acc)} | {_cell(auc)} |")
    return lines


def comparison_sentences(matrix: pa.Table, runs: Sequence[ModelRun], majority_share: float) -> list[str]:
    """One line per run: how accuracy and AUC move from the data it was trained on to the other kind."""
    index = _index(matrix)
    lines = []
    for run in sorted(runs, key=lambda r: (r.model, r.train_source, r.run)):
        home, away = (REAL_TEST, FAKE_TEST) if run.train_source != "fake" else (FAKE_TEST, REAL_TEST)
        acc_home, acc_away = index.get((run.run, home, "accuracy")), index.get((run.run, away, "accuracy"))
        auc_away = index.get((run.run, away, "auc"))
        if not (acc_home and acc_away):
            continue
        change = acc_away["value"] - acc_home["value"]
        # Descriptive only: whether a change is real is tested against matched controls with paired intervals
        # (cxr_ray/claim.py), never by whether two intervals overlap.
        text = (
            f"- **{run.model}, trained on {run.train_source}** ({run.run}): accuracy {acc_home['value']:.3f} on "
            f"{SET_LABELS[home]} and {acc_away['value']:.3f} on {SET_LABELS[away]} ({change:+.3f})."
        )
        if auc_away and not np.isnan(auc_away["value"]):
            chance = "includes" if auc_away["ci_low"] <= 0.5 <= auc_away["ci_high"] else "excludes"
            text += f" AUC on {SET_LABELS[away]} {_cell(auc_away)}: the interval {chance} 0.5 (chance ranking)."
        lines.append(text)
    if lines:
        lines.append(
            f"- For reference, always answering the more frequent fake class would score {majority_share:.3f} "
            "accuracy on the fakes. These runs differ in training-set size as well as source; the seed's claim is "
            "tested with size-matched controls and paired intervals in the transfer-claim section."
        )
    return lines


def per_class_lines(per_class: pa.Table) -> list[str]:
    lines = [
        "| model | trained on | tested on | class | n | called PNEUMONIA | mean P(PNEUMONIA) | mean confidence |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in sorted(per_class.to_pylist(), key=lambda r: (r["model"], r["train_source"], r["eval_set"], r["class_name"])):
        lines.append(
            f"| {r['model']} | {r['train_source']} | {SET_LABELS[r['eval_set']]} | {r['class_name']} | {r['n']} | "
            f"{100 * r['called_pneumonia']:.1f}% | {r['mean_p_pneumonia']:.3f} | {r['mean_confidence']:.3f} |"
        )
    return lines


def per_class_sentences(per_class: pa.Table) -> list[str]:
    """How real-trained models treat each class of fakes, next to the same class of reals."""
    rows = per_class.to_pylist()
    real_rows = {(r["run"], r["class_name"]): r for r in rows if r["eval_set"] == REAL_TEST}
    lines = []
    for r in sorted(rows, key=lambda r: (r["model"], r["run"], r["class_name"])):
        if r["eval_set"] != FAKE_TEST or r["train_source"] != "real":
            continue
        text = (
            f"- {r['model']} (trained on real) calls {100 * r['called_pneumonia']:.1f}% of the {r['class_name']} fakes "
            f"pneumonia, mean confidence {r['mean_confidence']:.3f}"
        )
        ref = real_rows.get((r["run"], r["class_name"]))
        if ref:
            text += f"; on real {r['class_name']} test images: {100 * ref['called_pneumonia']:.1f}%, confidence {ref['mean_confidence']:.3f}"
        lines.append(text + ".")
    return lines


def markdown_report(
    matrix: pa.Table, per_class: pa.Table, runs: Sequence[ModelRun], cfg: TransferConfig, majority_share: float
) -> str:
    parts = [
        "# Transfer between real and generated chest X-rays",
        "",
        f"Real data: test split of `{cfg.real}`. Fakes: test split of `{cfg.fakes}` (seeds no model trained on); "
        "a fake's label is the class its GAN learnt. Each model is scored at the threshold it chose on its own "
        f"validation split; intervals are 95% bootstrap intervals over patients (stratified by class) ({cfg.n_boot} replicates).",
        "",
        "## Accuracy and AUC",
        "",
        *matrix_lines(matrix, runs),
        "",
        "## What the numbers say",
        "",
        *(comparison_sentences(matrix, runs, majority_share) or ["- No run has results on both kinds of test data."]),
        "",
        "## Fakes per class",
        "",
        *per_class_lines(per_class),
        "",
        *per_class_sentences(per_class),
        "",
    ]
    return "\n".join(parts)


def majority_share_of_fakes(predictions: pa.Table) -> float:
    fakes = predictions.filter(pc.equal(predictions.column("source"), "fake"))
    first_run = fakes.column("run")[0].as_py() if fakes.num_rows else None
    labels = np.asarray(fakes.filter(pc.equal(fakes.column("run"), first_run)).column("label").to_pylist()) if first_run else np.zeros(0)
    return float(max(labels.mean(), 1 - labels.mean())) if labels.size else float("nan")


def run_transfer(
    cfg: TransferConfig,
    *,
    s3: S3Settings | None = None,
    log: Callable[[str], None] = print,
    address: str | None = None,
) -> dict[str, Any]:
    """Score the pneumonia runs on real and fake test data; write the matrix, per-class table and Markdown."""
    from cxr_ray.runtime import init_ray

    s3 = s3 or S3Settings.from_env()
    t0 = time.perf_counter()
    cfg.check_output(s3)
    runs = [r for r in load_runs(cfg.runs, s3) if r.task == "pneumonia"]
    if not runs:
        raise ConfigError(f"no finished pneumonia runs under {', '.join(cfg.runs)}")
    check_inputs(cfg.tables(), runs, s3)
    init_ray(address)
    log(f"transfer: {len(runs)} pneumonia run(s) on the real and fake test splits -> {cfg.dest}")
    predictions = score_runs(
        runs, cfg.tagged_tables(), ("none",), s3, seed=cfg.seed, batch_size=cfg.batch_size, max_actors=cfg.max_actors,
        resources=cfg.resources,
    )
    matrix = metrics_table(predictions, runs, cfg.n_boot, cfg.seed).drop_columns(["perturbation", "task"])
    per_class = per_class_table(predictions, runs)
    markdown = markdown_report(matrix, per_class, runs, cfg, majority_share_of_fakes(predictions))
    summary = {
        "dest": cfg.dest,
        "runs": [r.__dict__ for r in runs],
        "real": cfg.real,
        "fakes": cfg.fakes,
        "n_boot": cfg.n_boot,
        "matrix_rows": matrix.num_rows,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_output_folder(
        cfg.dest,
        {MATRIX_NAME: matrix, PER_CLASS_NAME: per_class, PREDICTIONS_NAME: predictions},
        summary,
        s3,
        cfg.overwrite,
        texts={MARKDOWN_FILE: markdown},
        csv=(MATRIX_NAME, PER_CLASS_NAME),
    )
    summary["markdown"] = markdown
    return summary
