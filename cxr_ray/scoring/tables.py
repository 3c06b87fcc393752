"""Per-image scores -> the tidy metrics table: one row per run x evaluation set x perturbation x operating point x metric.

Thresholds are the ones each run fixed on its validation split (cxr_ray.operating);
intervals are 95% bootstrap intervals over patients, and a rate without errors
(0 false alarms, every fake caught) reports the exact one-sided 95% bound.

Evaluation sets (a row's `table` column says which table it came from):
- pneumonia models: `real_test` (the real table) and `fake_test` (the fakes; a
  fake's class is the class its GAN was trained on); metrics at the Youden point,
  AUC threshold-free.
- deepfake detectors (target: fake): `real+fake_test` (reals vs the `fakes`
  table, archive-format fakes in the study) and `real+raw_fake_test` (reals vs
  the `raw_fakes` table), under every perturbation: auc, ap, ece, brier
  (threshold-free; ece and brier of the temperature-scaled probabilities) and
  per operating point tpr, fpr, accuracy, ppv@0.001, ppv@0.01; and
  `benign_real` (the benign table's re-processed reals, perturbation = their
  condition): fpr per operating point.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from cxr_ray.config import ConfigError
from cxr_ray.operating import BENIGN_ROBUST, BENIGN_ROBUST_FPR, POINT_METRICS, YOUDEN, benign_robust_threshold, point_name, rates_at
from cxr_ray.perturb import DEFAULT_PERTURBATIONS
from cxr_ray.scoring.runs import ModelRun

REAL_TEST, FAKE_TEST, DETECTION_TEST = "real_test", "fake_test", "real+fake_test"
RAW_DETECTION_TEST, BENIGN_TEST = "real+raw_fake_test", "benign_real"
# Which tables (row tags, see pipeline.eval_dataset) make up each evaluation set.
EVAL_SETS = {
    "pneumonia": {REAL_TEST: ("real",), FAKE_TEST: ("fakes",)},
    "deepfake": {DETECTION_TEST: ("real", "fakes"), RAW_DETECTION_TEST: ("real", "raw_fakes"), BENIGN_TEST: ("benign",)},
}
PNEUMONIA_METRICS = ("accuracy", "auc", "sensitivity", "specificity")  # auc threshold-free, the others at Youden
DETECTOR_METRICS = ("auc", "ap", "ece", "brier")  # threshold-free (operating_point "")
DETECTOR_POINT_METRICS = POINT_METRICS  # tpr, fpr, accuracy, ppv@0.001, ppv@0.01 at each operating point
BENIGN_METRICS = ("fpr",)
DIFFERENCE_METRICS = ("auc", "tpr@fpr_0.01")
METRIC_COLUMNS = (
    "model", "run", "task", "train_source", "eval_set", "perturbation", "operating_point", "metric", "value", "ci_low",
    "ci_high", "n",
)
DIFFERENCE_COLUMNS = ("run_a", "run_b", "eval_set", "metric", "diff", "ci_low", "ci_high", "n")


def _row(operating_point: str, metric: str, cell: tuple[float, float, float], n: int) -> dict[str, Any]:
    value, low, high = cell
    return {"operating_point": operating_point, "metric": metric, "value": float(value), "ci_low": float(low), "ci_high": float(high), "n": int(n)}


def pneumonia_rows(y: np.ndarray, score: np.ndarray, threshold: float, *, groups: Any, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """accuracy, sensitivity, specificity at the Youden threshold and threshold-free auc."""
    from cxr_ray import metrics as M

    s = M.summarize(y, score, threshold, n_boot=n_boot, seed=seed, groups=groups)
    n_pos, n_neg = int(s["n_pos"]), int(s["n"]) - int(s["n_pos"])
    correct = {"accuracy": (s["tp"] + s["tn"], int(s["n"])), "sensitivity": (s["tp"], n_pos), "specificity": (s["tn"], n_neg)}
    rows = []
    for name in PNEUMONIA_METRICS:
        cell = (s[name], s[f"{name}_ci_low"], s[f"{name}_ci_high"])
        if name in correct and correct[name][1] > 0:
            cell = (s[name], *M.rate_interval(int(correct[name][0]), correct[name][1], cell[1], cell[2]))
        rows.append(_row("" if name == "auc" else YOUDEN, name, cell, len(y)))
    return rows


def detector_rows(
    y: np.ndarray, score: np.ndarray, points: dict[str, float], temperature: float, *, groups: Any, n_boot: int, seed: int
) -> list[dict[str, Any]]:
    """Threshold-free auc, ap, ece, brier (operating_point ""), then the POINT_METRICS at every operating point."""
    from cxr_ray import calibration as C
    from cxr_ray import metrics as M

    calibrated = C.apply_temperature(score, temperature)
    free = (("auc", M.roc_auc, score), ("ap", M.average_precision, score),
            ("ece", C.expected_calibration_error, calibrated), ("brier", C.brier_score, calibrated))
    rows = []
    for name, fn, values in free:
        low, high = M.bootstrap_ci(y, values, fn, n_boot=n_boot, seed=seed, groups=groups)
        rows.append(_row("", name, (fn(y, values), low, high), len(y)))
    for point, threshold in points.items():
        cells = rates_at(y, score, threshold, groups=groups, n_boot=n_boot, seed=seed)
        rows.extend(_row(point, name, cells[name], len(y)) for name in POINT_METRICS)
    return rows


def benign_fpr_rows(score: np.ndarray, points: dict[str, float], *, groups: Any, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """False-positive rate of re-processed reals at every operating point (exact bound when no false alarm)."""
    y = np.zeros(len(score), np.int64)
    return [
        _row(point, "fpr", rates_at(y, score, threshold, groups=groups, n_boot=n_boot, seed=seed)["fpr"], len(y))
        for point, threshold in points.items()
    ]


def metric_rows(
    y: np.ndarray,
    score: np.ndarray,
    task: str,
    points: dict[str, float],
    *,
    temperature: float = 1.0,
    groups: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """(operating_point, metric, value, ci_low, ci_high, n) rows of one run on one set of images (reals and fakes)."""
    if task == "deepfake":
        return detector_rows(y, score, points, temperature, groups=groups, n_boot=n_boot, seed=seed)
    return pneumonia_rows(y, score, points[YOUDEN], groups=groups, n_boot=n_boot, seed=seed)


def eval_sets_for(task: str) -> dict[str, tuple[str, ...]]:
    """Evaluation set -> the tables (row tags) in it."""
    return EVAL_SETS["deepfake" if task == "deepfake" else "pneumonia"]


def targets_for(task: str, table: pa.Table) -> np.ndarray:
    """What a run of `task` should predict for each row: fake-ness for detectors, the class otherwise."""
    if task == "deepfake":
        return (np.asarray(table.column("source").to_pylist()) == "fake").astype(np.int64)
    return np.asarray(table.column("label").to_pylist(), dtype=np.int64)


def _where(table: pa.Table, column: str, values: Sequence[str]) -> pa.Table:
    import pyarrow.compute as pc

    return table.filter(pc.is_in(table.column(column), value_set=pa.array(list(values), pa.string())))


def _set_rows(run: ModelRun, eval_set: str, part: pa.Table, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """The metric rows of one run on one evaluation set at one perturbation ([] when the set cannot be scored)."""
    y = targets_for(run.task, part)
    score = np.asarray(part.column("score").to_pylist(), dtype=np.float64)
    groups = np.asarray(part.column("patient_id").to_pylist(), dtype=object)
    if not np.isfinite(score).all():
        perturbation = part.column("perturbation")[0].as_py() if part.num_rows else "?"
        raise ConfigError(f"{run.run}: {int((~np.isfinite(score)).sum())} non-finite score(s) on {eval_set}/{perturbation}")
    if eval_set == BENIGN_TEST:
        return benign_fpr_rows(score, run.operating_points, groups=groups, n_boot=n_boot, seed=seed)
    if run.task == "deepfake" and len(np.unique(y)) < 2:
        return []
    return metric_rows(y, score, run.task, run.operating_points, temperature=run.temperature, groups=groups, n_boot=n_boot, seed=seed)


def benign_val_scores(predictions: pa.Table, run: str) -> dict[str, np.ndarray]:
    """condition -> the run's scores on its re-processed validation reals ("benign_val" rows); {} without any."""
    from cxr_ray.scoring.pipeline import BENIGN_VAL_TABLE

    if predictions.num_rows == 0:
        return {}
    mine = _where(_where(predictions, "table", [BENIGN_VAL_TABLE]), "run", [run])
    conditions = np.asarray(mine.column("perturbation").to_pylist(), dtype=object)
    scores = np.asarray(mine.column("score").to_pylist(), dtype=np.float64)
    return {c: scores[conditions == c] for c in sorted(set(conditions))}


def with_benign_robust_points(predictions: pa.Table, runs: Sequence[ModelRun]) -> list[ModelRun]:
    """Each detector run with its benign-robust 1% point (operating.BENIGN_ROBUST) added, fixed on the scores of
    its re-processed validation reals ("benign_val" rows); runs without such rows are returned unchanged."""
    from dataclasses import replace

    out = []
    for run in runs:
        clean = run.operating_points.get(point_name(BENIGN_ROBUST_FPR))
        by_condition = benign_val_scores(predictions, run.run) if run.task == "deepfake" and clean is not None else {}
        if not by_condition:
            out.append(run)
            continue
        robust = benign_robust_threshold(clean, by_condition)
        out.append(replace(run, operating_points={**run.operating_points, BENIGN_ROBUST: robust}))
    return out


def metrics_table(predictions: pa.Table, runs: Sequence[ModelRun], n_boot: int, seed: int) -> pa.Table:
    """The tidy table (METRIC_COLUMNS) for every run x evaluation set x perturbation present in `predictions`."""
    rows = []
    for run in runs:
        mine = _where(predictions, "run", [run.run])
        for eval_set, tables in eval_sets_for(run.task).items():
            part = _where(mine, "table", tables)
            for perturbation in sorted(set(part.column("perturbation").to_pylist()), key=_perturbation_order):
                base = {
                    "model": run.model, "run": run.run, "task": run.task, "train_source": run.train_source,
                    "eval_set": eval_set, "perturbation": perturbation,
                }
                at = _where(part, "perturbation", [perturbation])
                rows.extend({**base, **r} for r in _set_rows(run, eval_set, at, n_boot, seed))
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


# ---------------------------------------------------------------- paired differences between detectors


def _tpr_above_zero(y: np.ndarray, shifted: np.ndarray) -> float:
    """TPR of the calls `shifted >= 0` (scores minus the model's own threshold)."""
    positives = shifted[np.asarray(y) == 1]
    return float(np.mean(positives >= 0)) if positives.size else float("nan")


def _aligned(predictions: pa.Table, run: str, tables: Sequence[str], perturbation: str) -> dict[tuple[str, str], tuple]:
    part = _where(_where(_where(predictions, "run", [run]), "table", tables), "perturbation", [perturbation])
    cols = [part.column(c).to_pylist() for c in ("table", "path", "source", "patient_id", "score")]
    return {(t, p): (src, pid, s) for t, p, src, pid, s in zip(*cols)}


def difference_rows(
    predictions: pa.Table, a: ModelRun, b: ModelRun, n_boot: int, seed: int, eval_set: str = DETECTION_TEST
) -> list[dict[str, Any]]:
    """AUC and TPR at each one's own FPR-1% threshold, a - b, with paired patient-bootstrap intervals (same images)."""
    from cxr_ray import metrics as M

    tables = EVAL_SETS["deepfake"][eval_set]
    left, right = _aligned(predictions, a.run, tables, "none"), _aligned(predictions, b.run, tables, "none")
    keys = sorted(k for k in left if k in right and left[k][2] is not None and right[k][2] is not None)
    y = np.array([left[k][0] == "fake" for k in keys], np.int64)
    if len(np.unique(y)) < 2:
        return []
    groups = np.array([left[k][1] for k in keys], dtype=object)
    sa, sb = np.array([left[k][2] for k in keys]), np.array([right[k][2] for k in keys])
    pairs = [("auc", M.roc_auc, sa, sb)]
    point = "fpr_0.01"
    if point in a.operating_points and point in b.operating_points:
        # s >= t exactly when s - t >= 0 (IEEE subtraction), so each model keeps its own threshold.
        pairs.append((f"tpr@{point}", _tpr_above_zero, sa - a.operating_points[point], sb - b.operating_points[point]))
    rows = []
    for metric, fn, xa, xb in pairs:
        diff, low, high = M.paired_difference_ci(y, xa, xb, fn, groups=groups, n_boot=n_boot, seed=seed)
        rows.append({"run_a": a.run, "run_b": b.run, "eval_set": eval_set, "metric": metric, "diff": diff, "ci_low": low, "ci_high": high, "n": len(keys)})
    return rows


def differences_table(predictions: pa.Table, runs: Sequence[ModelRun], n_boot: int, seed: int) -> pa.Table:
    """DIFFERENCE_COLUMNS for every pair of detectors on the clean `real+fake_test` set."""
    detectors = sorted((r for r in runs if r.task == "deepfake"), key=lambda r: r.run)
    rows = [row for a, b in combinations(detectors, 2) for row in difference_rows(predictions, a, b, n_boot, seed)]
    schema = pa.schema(
        [(c, pa.float64() if c in ("diff", "ci_low", "ci_high") else pa.int64() if c == "n" else pa.string()) for c in DIFFERENCE_COLUMNS]
    )
    return pa.Table.from_pylist(rows, schema=schema)
