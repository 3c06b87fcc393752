"""Per-image scores -> the tidy metrics table: one row per run x evaluation set x perturbation x metric.

Metrics are computed on the driver at the threshold each run chose on its
validation split, with 95% stratified bootstrap intervals. Evaluation sets:
`real_test` and `fake_test` for pneumonia models (target: the class; a fake's
class is the class its GAN was trained on), and `real+fake_test` for deepfake
detectors (target: fake).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from cxr_ray.perturb import DEFAULT_PERTURBATIONS
from cxr_ray.scoring.runs import ModelRun

REAL_TEST, FAKE_TEST, DETECTION_TEST = "real_test", "fake_test", "real+fake_test"
PNEUMONIA_METRICS = ("accuracy", "auc", "sensitivity", "specificity")
# sensitivity = fakes caught, specificity = reals passed: the two halves of the detector's accuracy.
DETECTOR_METRICS = ("auc", "ap", "accuracy", "tpr_at_1pct_fpr", "sensitivity", "specificity")
METRIC_COLUMNS = (
    "model", "run", "task", "train_source", "eval_set", "perturbation", "metric", "value", "ci_low", "ci_high", "n",
)


def metric_rows(y: np.ndarray, score: np.ndarray, threshold: float, task: str, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """(metric, value, ci_low, ci_high) rows at the val-chosen threshold, 95% stratified bootstrap intervals."""
    from cxr_ray import metrics as M

    summary = M.summarize(y, score, threshold, n_boot=n_boot, seed=seed)
    rows = {
        name: (summary[name], summary[f"{name}_ci_low"], summary[f"{name}_ci_high"])
        for name in ("accuracy", "auc", "sensitivity", "specificity")
    }
    if task == "deepfake":
        tpr = lambda yy, ss: M.tpr_at_fpr(yy, ss, 0.01)  # noqa: E731
        for name, fn in (("ap", M.average_precision), ("tpr_at_1pct_fpr", tpr)):
            low, high = M.bootstrap_ci(y, score, fn, n_boot=n_boot, seed=seed)
            rows[name] = (fn(y, score), low, high)
    names = DETECTOR_METRICS if task == "deepfake" else PNEUMONIA_METRICS
    return [
        {"metric": name, "value": float(rows[name][0]), "ci_low": float(rows[name][1]), "ci_high": float(rows[name][2]), "n": int(len(y))}
        for name in names
    ]


def eval_sets_for(task: str) -> dict[str, tuple[str, ...]]:
    """Evaluation set -> the image sources in it."""
    if task == "deepfake":
        return {DETECTION_TEST: ("real", "fake")}
    return {REAL_TEST: ("real",), FAKE_TEST: ("fake",)}


def targets_for(task: str, table: pa.Table) -> np.ndarray:
    """What a run of `task` should predict for each row: fake-ness for detectors, the class otherwise."""
    if task == "deepfake":
        return (np.asarray(table.column("source").to_pylist()) == "fake").astype(np.int64)
    return np.asarray(table.column("label").to_pylist(), dtype=np.int64)


def metrics_table(predictions: pa.Table, runs: Sequence[ModelRun], n_boot: int, seed: int) -> pa.Table:
    """The tidy table (METRIC_COLUMNS) for every run x evaluation set x perturbation present in `predictions`."""
    import pyarrow.compute as pc

    rows = []
    for run in runs:
        mine = predictions.filter(pc.equal(predictions.column("run"), run.run))
        for perturbation in sorted(set(mine.column("perturbation").to_pylist()), key=_perturbation_order):
            at = mine.filter(pc.equal(mine.column("perturbation"), perturbation))
            for eval_set, sources in eval_sets_for(run.task).items():
                part = at.filter(pc.is_in(at.column("source"), value_set=pa.array(sources)))
                if part.num_rows == 0 or (run.task == "deepfake" and len(set(part.column("source").to_pylist())) < 2):
                    continue
                y = targets_for(run.task, part)
                score = np.asarray(part.column("score").to_pylist(), dtype=np.float64)
                base = {
                    "model": run.model, "run": run.run, "task": run.task, "train_source": run.train_source,
                    "eval_set": eval_set, "perturbation": perturbation,
                }
                rows.extend({**base, **r} for r in metric_rows(y, score, run.threshold, run.task, n_boot, seed))
    return rows_to_table(rows)


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Metric rows (dicts with every METRIC_COLUMNS key) as the table's Arrow schema."""
    schema = pa.schema(
        [(c, pa.float64() if c in ("value", "ci_low", "ci_high") else pa.int64() if c == "n" else pa.string()) for c in METRIC_COLUMNS]
    )
    return pa.Table.from_pylist([{c: r[c] for c in METRIC_COLUMNS} for r in rows], schema=schema)


def _perturbation_order(name: str) -> int:
    order = list(DEFAULT_PERTURBATIONS)
    return order.index(name) if name in order else len(order)
