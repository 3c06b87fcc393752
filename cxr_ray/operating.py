"""Operating points: decision thresholds chosen on a run's validation predictions only, and the rates at them.

A hospital runs a detector at a false-positive rate it can live with, not at
the Youden point of a nearly separable validation set. Each finished run keeps
its best checkpoint's validation scores (val_predictions.parquet), so every
threshold here -- Youden, FPR 1%, FPR 0.1% -- is fixed on validation and only
then applied to test images or to a scan.

The benign-robust 1% point (BENIGN_ROBUST) is fixed on validation too: the
lowest threshold that keeps the validation reals at <= 1% false alarms both as
stored and after every benign re-processing a hospital's software does
(cxr_ray.benign re-processes the val split for it). A threshold chosen on the
clean reals alone lets re-encoded or re-windowed reals through at several
times the rate; the hospital knows its own software, so its threshold may.

Rates at a threshold get patient-bootstrap intervals; a cell without errors
(no false alarm among the reals, every fake caught) gets the exact one-sided
95% bound instead of a degenerate [x, x].
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from cxr_ray import metrics as M
from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.filenames import VAL_PREDICTIONS_FILE
from cxr_ray.storage import S3Settings

YOUDEN = "youden"
OPERATING_POINTS: dict[str, float | None] = {YOUDEN: None, "fpr_0.01": 0.01, "fpr_0.001": 0.001}  # name -> target FPR
PREVALENCES = (0.001, 0.01)  # share of fakes in an archive, for PPV
POINT_METRICS = ("tpr", "fpr", "accuracy") + tuple(f"ppv@{p:g}" for p in PREVALENCES)
VAL_COLUMNS = ("path", "patient_id", "target", "score")
BENIGN_ROBUST_FPR = 0.01

Rate = tuple[float, float, float]  # value, ci_low, ci_high


def point_name(fpr: float) -> str:
    """The operating point's name for a target FPR: 0.01 -> "fpr_0.01"."""
    return f"fpr_{fpr:g}"


def benign_point_name(fpr: float) -> str:
    """The benign-robust point's name for a target FPR: 0.01 -> "fpr_0.01_benign"."""
    return f"{point_name(fpr)}_benign"


BENIGN_ROBUST = benign_point_name(BENIGN_ROBUST_FPR)  # set at evaluation (or scan), not by training


def threshold_for_fpr(y_val: np.ndarray, score_val: np.ndarray, fpr: float) -> float:
    """The threshold whose false-positive rate on the validation reals is at most `fpr`."""
    return float(M.threshold_at_fpr(y_val, score_val, fpr))


def operating_points(y_val: np.ndarray, score_val: np.ndarray) -> dict[str, float]:
    """Every OPERATING_POINTS threshold, chosen on validation (ValueError without both classes)."""
    return {
        name: float(M.choose_threshold(y_val, score_val)) if fpr is None else threshold_for_fpr(y_val, score_val, fpr)
        for name, fpr in OPERATING_POINTS.items()
    }


def benign_robust_threshold(clean: float, benign_val_scores: Mapping[str, np.ndarray], fpr: float = BENIGN_ROBUST_FPR) -> float:
    """The lowest threshold with validation FPR <= `fpr` on the clean reals and under every benign condition.

    `clean`: the run's own threshold at `fpr` on its validation reals;
    `benign_val_scores`: condition -> scores of the re-processed validation
    reals. Each condition's FPR falls as the threshold rises, so the answer
    is the highest of the per-condition thresholds.
    """
    per_condition = [threshold_for_fpr(np.zeros(len(s), np.int64), np.asarray(s, np.float64), fpr)
                     for s in benign_val_scores.values() if len(s)]
    return float(max([float(clean), *per_condition]))


def val_selection(y_val: np.ndarray, score_val: np.ndarray, youden: float | None = None) -> dict[str, Any]:
    """What a run fixes on validation: operating_points, temperature, val_calibration {ece, brier}.

    `youden`: the threshold the run already chose on val (kept, so the run's
    "threshold" and its "youden" point are one number). A val split with one
    class has no usable points but that one.
    """
    from cxr_ray import calibration as C

    y, s = np.asarray(y_val, np.int64), np.asarray(score_val, np.float64)
    both = y.size > 0 and len(np.unique(y)) == 2
    points = operating_points(y, s) if both else {}
    if youden is not None:
        points[YOUDEN] = float(youden)
    temperature = float(C.fit_temperature(y, s)) if both else 1.0
    calibrated = C.apply_temperature(s, temperature)
    calibration = {"ece": float(C.expected_calibration_error(y, calibrated)), "brier": float(C.brier_score(y, calibrated))} if y.size else {}
    return {"operating_points": points, "temperature": temperature, "val_calibration": calibration}


def rates_at(
    y: np.ndarray, score: np.ndarray, threshold: float, *, groups: Sequence | None = None, n_boot: int = 1000, seed: int = 0
) -> dict[str, Rate]:
    """tpr, fpr, accuracy and ppv@prevalence at `threshold`, each (value, ci_low, ci_high).

    Intervals: 95% patient bootstrap; a rate of 0/n or n/n gets the exact
    one-sided bound. PPV comes from the cell's tpr and fpr; it rises with tpr
    and falls with fpr, so their interval ends bound it.
    """
    s = M.summarize(y, score, threshold, n_boot=n_boot, seed=seed, groups=groups)
    n_pos, n_neg = int(s["n_pos"]), int(s["n"]) - int(s["n_pos"])
    out = {
        "tpr": _rate(s["tp"], n_pos, s["sensitivity"], s["sensitivity_ci_low"], s["sensitivity_ci_high"]),
        "fpr": _rate(s["fp"], n_neg, 1.0 - s["specificity"], 1.0 - s["specificity_ci_high"], 1.0 - s["specificity_ci_low"]),
        "accuracy": _rate(s["tp"] + s["tn"], int(s["n"]), s["accuracy"], s["accuracy_ci_low"], s["accuracy_ci_high"]),
    }
    (tpr, tpr_low, tpr_high), (fpr, fpr_low, fpr_high) = out["tpr"], out["fpr"]
    for prevalence in PREVALENCES:
        out[f"ppv@{prevalence:g}"] = (
            _ppv(tpr, fpr, prevalence), _ppv(tpr_low, fpr_high, prevalence), _ppv(tpr_high, fpr_low, prevalence)
        )
    return out


def _rate(k: int, n: int, value: float, boot_low: float, boot_high: float) -> Rate:
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    low, high = M.rate_interval(int(k), int(n), float(boot_low), float(boot_high))
    return float(value), float(low), float(high)


def _ppv(tpr: float, fpr: float, prevalence: float) -> float:
    if not (np.isfinite(tpr) and np.isfinite(fpr)):
        return float("nan")
    return float(M.ppv(tpr, fpr, prevalence))


def at_points(
    y: np.ndarray, score: np.ndarray, points: dict[str, float], *, groups: Sequence | None, n_boot: int, seed: int
) -> dict[str, dict[str, float]]:
    """{point: {threshold, metric, metric_ci_low, metric_ci_high, ...}}: the rates at every operating point."""
    out = {}
    for name, threshold in points.items():
        cell: dict[str, float] = {"threshold": float(threshold)}
        for metric, (value, low, high) in rates_at(y, score, threshold, groups=groups, n_boot=n_boot, seed=seed).items():
            cell.update({metric: value, f"{metric}_ci_low": low, f"{metric}_ci_high": high})
        out[name] = cell
    return out


# ---------------------------------------------------------------- a run's validation predictions


def read_val_predictions(run_dir: str, s3: S3Settings | None) -> Any | None:
    """The run's val_predictions.parquet (path, patient_id, target, score); None for runs trained before it existed."""
    import pyarrow.parquet as pq

    uri = storage.join(run_dir, VAL_PREDICTIONS_FILE)
    if not storage.exists(uri, s3):
        return None
    fs, path = storage.resolve(uri, s3)
    try:
        table = pq.read_table(path, filesystem=fs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{uri}: unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    missing = [c for c in VAL_COLUMNS if c not in table.column_names]
    if missing:
        raise ConfigError(f"{uri}: lacks column(s) {', '.join(missing)}")
    return table.select(list(VAL_COLUMNS))


def val_arrays(run_dir: str, s3: S3Settings | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(target, score) of the run's validation predictions; None when the run has none."""
    table = read_val_predictions(run_dir, s3)
    if table is None:
        return None
    return (
        np.asarray(table.column("target").to_pylist(), dtype=np.int64),
        np.asarray(table.column("score").to_pylist(), dtype=np.float64),
    )
