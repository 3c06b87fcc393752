"""Binary-classification metrics in plain numpy (no sklearn), with stratified bootstrap CIs.

Bootstrap replicates resample within each class; with ``groups`` (patient ids)
they resample patients, not images, so correlated images of one patient move
together. Rates with no errors get exact one-sided binomial bounds instead of
a degenerate bootstrap interval (`rate_interval`).

Conventions: ``y_true`` holds 0/1 (1 = positive: PNEUMONIA for the classifiers,
fake for the detectors); ``score`` is higher for "more positive"; a sample is
predicted positive when ``score >= threshold``. Rates whose denominator is 0
(e.g. sensitivity without positives) are NaN rather than a made-up 0.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def as_arrays(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(0/1 int labels, finite float scores), flattened; ValueError naming what is wrong otherwise."""
    y = np.asarray(y_true).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but score has {s.size}")
    if y.size == 0:
        raise ValueError("no samples")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"y_true must be 0/1, got values {np.unique(y)[:10].tolist()}")
    if not np.isfinite(s).all():
        raise ValueError("score contains NaN or infinite values")
    return y.astype(np.int64), s


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else float("nan")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks (as scipy.stats.rankdata's default)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, and the run each sorted element belongs to.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    run_of = np.cumsum(np.r_[True, sorted_values[1:] != sorted_values[:-1]]) - 1
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = mean_rank[run_of]
    return ranks


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + 0.5 P(tie) (Mann–Whitney U); NaN if a class is absent."""
    y, s = as_arrays(y_true, score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _average_ranks(s)[y == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _counts_by_threshold(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores in decreasing order and the (tp, fp) counts when each is the threshold."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # Last index of each run of equal scores: a threshold admits the whole run at once.
    last_of_run = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s.size - 1]
    tps = np.cumsum(y_sorted)[last_of_run]
    fps = (last_of_run + 1) - tps
    return s_sorted[last_of_run], tps, fps


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, plus the (0, 0) point at threshold +inf.

    Thresholds decrease; point i is the rate of ``score >= thresholds[i]``.
    A rate whose class is absent is NaN.
    """
    y, s = as_arrays(y_true, score)
    thresholds, tps, fps = _counts_by_threshold(y, s)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    tps, fps = np.r_[0, tps], np.r_[0, fps]
    tpr = tps / n_pos if n_pos else np.full(tps.shape, np.nan)
    fpr = fps / n_neg if n_neg else np.full(fps.shape, np.nan)
    return fpr.astype(np.float64), tpr.astype(np.float64), np.r_[np.inf, thresholds]


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Sum over distinct thresholds of (recall_n - recall_{n-1}) * precision_n (sklearn's definition,
    no interpolation); NaN without positives."""
    y, s = as_arrays(y_true, score)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    _, tps, fps = _counts_by_threshold(y, s)
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, int]:
    """Counts ``tn``, ``fp``, ``fn``, ``tp`` for 0/1 labels and 0/1 predictions."""
    y, p = as_arrays(y_true, y_pred)
    if not np.isin(p, (0, 1)).all():
        raise ValueError("y_pred must be 0/1 predictions; use threshold_metrics for scores")
    p = p.astype(np.int64)
    return {
        "tn": int(np.sum((y == 0) & (p == 0))),
        "fp": int(np.sum((y == 0) & (p == 1))),
        "fn": int(np.sum((y == 1) & (p == 0))),
        "tp": int(np.sum((y == 1) & (p == 1))),
    }


def _rates(tn: float, fp: float, fn: float, tp: float) -> dict[str, float]:
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def threshold_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """accuracy, sensitivity (recall), specificity, precision, f1 of the predictions ``score >= threshold``."""
    y, s = as_arrays(y_true, score)
    counts = confusion(y, (s >= threshold).astype(np.int64))
    return _rates(counts["tn"], counts["fp"], counts["fn"], counts["tp"])


def choose_threshold(y_true: np.ndarray, score: np.ndarray, rule: str = "youden") -> float:
    """The operating threshold picked on validation data (never on test data).

    ``rule="youden"``: the score maximising sensitivity + specificity - 1; among
    equally good thresholds the highest one (fewest positive calls).
    """
    if rule != "youden":
        raise ValueError(f"unknown threshold rule {rule!r}; supported: 'youden'")
    y, s = as_arrays(y_true, score)
    if y.min() == y.max():
        raise ValueError("choosing a threshold needs both classes in y_true")
    fpr, tpr, thresholds = roc_curve(y, s)
    # Drop the +inf point: "predict nothing positive" is not a usable operating threshold.
    youden = (tpr - fpr)[1:]
    return float(thresholds[1:][int(np.argmax(youden))])


def tpr_at_fpr(y_true: np.ndarray, score: np.ndarray, max_fpr: float = 0.01) -> float:
    """Highest sensitivity reachable with false-positive rate <= ``max_fpr``.

    Only actual operating points count (no interpolation); NaN if a class is absent.
    """
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in [0, 1], got {max_fpr}")
    fpr, tpr, _ = roc_curve(y_true, score)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan")
    return float(tpr[fpr <= max_fpr].max())


def threshold_at_fpr(y_true: np.ndarray, score: np.ndarray, max_fpr: float) -> float:
    """The lowest threshold among the distinct scores whose false-positive rate on (y, score) is <= ``max_fpr``.

    Lowest = most sensitive point that still respects the limit. When even the
    highest score gives FPR > ``max_fpr`` (a negative holds the top score), the
    result is the next float above the highest score: nothing is flagged.
    Only the negatives decide the threshold, so positives are not required.
    """
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in [0, 1], got {max_fpr}")
    y, s = as_arrays(y_true, score)
    n_neg = int(y.size - y.sum())
    if n_neg == 0:
        raise ValueError("a threshold at a false-positive rate needs negatives in y_true")
    thresholds, _, fps = _counts_by_threshold(y, s)
    # fps grows as the threshold falls, so the allowed thresholds are a prefix of the decreasing list.
    allowed = np.flatnonzero(fps / n_neg <= max_fpr)
    if allowed.size == 0:
        return float(np.nextafter(thresholds[0], np.inf))
    return float(thresholds[allowed[-1]])


def ppv(tpr: float, fpr: float, prevalence: float) -> float:
    """Positive predictive value at a prevalence: tpr p / (tpr p + fpr (1 - p)); NaN when nothing is flagged."""
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"prevalence must be in [0, 1], got {prevalence}")
    flagged = tpr * prevalence + fpr * (1.0 - prevalence)
    return float(tpr * prevalence / flagged) if flagged else float("nan")


# ---- exact binomial bounds ------------------------------------------------------------------


def _check_binomial(k: int, n: int, alpha: float) -> None:
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _log_binomial_coefficients(k: int, n: int) -> np.ndarray:
    return np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)])


def _binomial_cdf(log_coef: np.ndarray, n: int, p: float) -> float:
    """P(X <= k | n, p) for k = len(log_coef) - 1, summed in logs (no overflow for n up to 1e5 and beyond)."""
    i = np.arange(log_coef.size)
    terms = log_coef + i * math.log(p) + (n - i) * math.log1p(-p)
    top = terms.max()
    return float(min(1.0, math.exp(top) * np.exp(terms - top).sum()))


def exact_upper_bound(k: int, n: int, alpha: float = 0.05) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound on a binomial rate seen as k of n.

    The p with P(X <= k | n, p) = alpha: k = 0 gives 1 - alpha**(1/n) (0 false
    alarms in 618 -> FPR <= 0.48% at 95%); k = n gives 1. Otherwise bisection
    on the CDF, which falls monotonically in p.
    """
    _check_binomial(k, n, alpha)
    if k == n:
        return 1.0
    if k == 0:
        return float(1.0 - alpha ** (1.0 / n))
    log_coef = _log_binomial_coefficients(k, n)
    low, high = k / n, 1.0  # the CDF at p = k/n is about 1/2 > alpha, at p -> 1 it is 0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        if _binomial_cdf(log_coef, n, mid) > alpha:
            low = mid
        else:
            high = mid
    return float(0.5 * (low + high))


def exact_lower_bound(k: int, n: int, alpha: float = 0.05) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound: 1 - upper bound of the complementary rate."""
    _check_binomial(k, n, alpha)
    return float(1.0 - exact_upper_bound(n - k, n, alpha))


def rate_interval(k: int, n: int, boot_low: float, boot_high: float, alpha: float = 0.05) -> tuple[float, float]:
    """The interval to report for a rate of k in n.

    k == 0 or k == n: every bootstrap replicate repeats the point (e.g. [0, 0]),
    which says nothing, so the exact one-sided (1 - alpha) bound replaces it:
    (0, upper) or (lower, 1). Otherwise the (two-sided) bootstrap interval as given.
    """
    _check_binomial(k, n, alpha)
    if k == 0:
        return 0.0, exact_upper_bound(0, n, alpha)
    if k == n:
        return exact_lower_bound(n, n, alpha), 1.0
    return float(boot_low), float(boot_high)


# ---- stratified bootstrap -------------------------------------------------------------------


def _stratified_indices(y: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per replicate, indices into the positives and into the negatives, each drawn with replacement
    within its class, so every replicate keeps the original class counts."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    pos_draw = rng.integers(0, pos.size, size=(n_boot, pos.size)) if pos.size else np.empty((n_boot, 0), np.int64)
    neg_draw = rng.integers(0, neg.size, size=(n_boot, neg.size)) if neg.size else np.empty((n_boot, 0), np.int64)
    return pos, neg, pos_draw, neg_draw


def _draw_counts(draw: np.ndarray, n: int) -> np.ndarray:
    """(n_boot, n) matrix: how often each original sample appears in each replicate."""
    n_boot = draw.shape[0]
    flat = (draw + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


Groups = Sequence[Any] | np.ndarray | None  # one patient id per image; None: each image its own patient


def patient_weights(y_true: np.ndarray, groups: Groups, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, N) image multiplicities of patient bootstrap replicates, stratified by class.

    Each distinct value of ``groups`` is a patient; patients are drawn with
    replacement within their class (positives first, then negatives, each in
    sorted id order), so every replicate keeps the number of patients per class,
    and all images of a patient share its multiplicity. A patient's class is the
    label of its first image (a patient with images of both labels is drawn in
    that stratum; its images keep their own labels). ``groups=None``: each image
    is its own patient, which gives exactly the image bootstrap of `bootstrap_ci`
    with the same seed (and the same as ``groups=np.arange(N)``).
    """
    y = np.asarray(y_true).ravel().astype(np.int64)
    if groups is None:
        pos, neg, pos_draw, neg_draw = _stratified_indices(y, n_boot, seed)
        weights = np.zeros((n_boot, y.size))
        weights[:, pos] = _draw_counts(pos_draw, pos.size)
        weights[:, neg] = _draw_counts(neg_draw, neg.size)
        return weights
    g = np.asarray(groups).ravel()
    if g.size != y.size:
        raise ValueError(f"groups has {g.size} values but y_true has {y.size}")
    if g.dtype == object and any(v is None for v in g):
        raise ValueError("groups has missing patient ids (None)")
    _, first, patient_of = np.unique(g, return_index=True, return_inverse=True)
    patient_label = y[first]
    # The same draws as the image bootstrap when every image is its own patient.
    _, _, pos_draw, neg_draw = _stratified_indices(patient_label, n_boot, seed)
    per_patient = np.zeros((n_boot, first.size))
    for stratum, draw in ((1, pos_draw), (0, neg_draw)):
        members = np.flatnonzero(patient_label == stratum)
        per_patient[:, members] = _draw_counts(draw, members.size)
    return per_patient[:, patient_of.ravel()]


def _bootstrap_auc(s_pos: np.ndarray, s_neg: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
    """Mann–Whitney AUC of every replicate at once, from per-sample multiplicities.

    AUC* = sum_i w_i * (#neg* below x_i + 0.5 #neg* tied with x_i) / (m* n*): sorting the
    negatives once, cumulative weights give each positive's count for all replicates.
    m*, n* are the replicate's class sizes (fixed for the image bootstrap; they vary
    when patients with different numbers of images are drawn).
    """
    if s_pos.size == 0 or s_neg.size == 0:
        return np.full(w_pos.shape[0], np.nan)
    order = np.argsort(s_neg, kind="mergesort")
    neg_sorted = s_neg[order]
    cum = np.concatenate([np.zeros((w_neg.shape[0], 1)), np.cumsum(w_neg[:, order], axis=1)], axis=1)
    below = np.searchsorted(neg_sorted, s_pos, side="left")
    up_to = np.searchsorted(neg_sorted, s_pos, side="right")
    wins = cum[:, below] + 0.5 * (cum[:, up_to] - cum[:, below])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w_pos * wins).sum(axis=1) / (w_pos.sum(axis=1) * w_neg.sum(axis=1))


def percentile_interval(replicates: np.ndarray, alpha: float) -> tuple[float, float]:
    # NaN replicates (e.g. precision with no positive calls) are left out rather than
    # poisoning the interval; all-NaN gives (nan, nan).
    finite = replicates[~np.isnan(replicates)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def _check_bootstrap_args(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _weighted_replicates(y: np.ndarray, s: np.ndarray, metric_fn: MetricFn, weights: np.ndarray) -> np.ndarray:
    """``metric_fn`` on every replicate given as image multiplicities: roc_auc all at once, others per replicate."""
    if metric_fn is roc_auc:
        pos, neg = y == 1, y == 0
        return _bootstrap_auc(s[pos], s[neg], weights[:, pos], weights[:, neg])
    index = np.arange(y.size)
    out = np.empty(weights.shape[0])
    for b, row in enumerate(weights):
        picked = np.repeat(index, row.astype(np.int64))
        out[b] = metric_fn(y[picked], s[picked])
    return out


def bootstrap_ci(
    y_true: np.ndarray,
    score: np.ndarray,
    metric_fn: MetricFn,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: Groups = None,
) -> tuple[float, float]:
    """Percentile (1 - alpha) interval of ``metric_fn(y, score)`` over stratified bootstrap replicates.

    Positives and negatives are resampled separately, so each replicate has the
    original class counts and class-conditional metrics (AUC, sensitivity) are
    always defined. With ``groups`` (one patient id per image) patients are
    resampled instead of images (`patient_weights`). ``roc_auc`` is computed for
    all replicates at once; other metrics are called once per replicate.
    """
    _check_bootstrap_args(n_boot, alpha)
    y, s = as_arrays(y_true, score)
    if groups is not None or metric_fn is roc_auc:
        # groups=None gives the image draws below, as multiplicities.
        weights = patient_weights(y, groups, n_boot, seed)
        return percentile_interval(_weighted_replicates(y, s, metric_fn, weights), alpha)
    pos, neg, pos_draw, neg_draw = _stratified_indices(y, n_boot, seed)
    labels = np.r_[np.ones(pos.size, np.int64), np.zeros(neg.size, np.int64)]
    replicates = np.array(
        [metric_fn(labels, np.r_[s[pos][p], s[neg][q]]) for p, q in zip(pos_draw, neg_draw)], dtype=np.float64
    )
    return percentile_interval(replicates, alpha)


def summary_replicates(y: np.ndarray, s: np.ndarray, threshold: float, weights: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, auc, sensitivity, specificity of every replicate: weighted sums of per-image calls."""
    pos, neg = y == 1, y == 0
    w_pos, w_neg = weights[:, pos], weights[:, neg]
    tp = w_pos @ (s[pos] >= threshold).astype(np.float64)
    tn = w_neg @ (s[neg] < threshold).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": (tp + tn) / weights.sum(axis=1),
            "auc": _bootstrap_auc(s[pos], s[neg], w_pos, w_neg),
            "sensitivity": tp / w_pos.sum(axis=1),
            "specificity": tn / w_neg.sum(axis=1),
        }


def summarize(
    y_true: np.ndarray,
    score: np.ndarray,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: Groups = None,
) -> dict[str, float | int]:
    """Report-ready metrics at ``threshold``: accuracy, auc, sensitivity, specificity, each with
    ``_ci_low`` / ``_ci_high`` (stratified bootstrap, same replicates as ``bootstrap_ci`` with
    this seed and ``groups``: patients resampled when given), plus precision, f1, tn/fp/fn/tp,
    n, n_pos and the threshold."""
    _check_bootstrap_args(n_boot, alpha)
    y, s = as_arrays(y_true, score)
    counts = confusion(y, (s >= threshold).astype(np.int64))
    point = {"auc": roc_auc(y, s), **_rates(counts["tn"], counts["fp"], counts["fn"], counts["tp"])}
    replicates = summary_replicates(y, s, threshold, patient_weights(y, groups, n_boot, seed))

    summary: dict[str, float | int] = {}
    for name in ("accuracy", "auc", "sensitivity", "specificity"):
        low, high = percentile_interval(replicates[name], alpha)
        summary[name] = float(point[name])
        summary[f"{name}_ci_low"] = low
        summary[f"{name}_ci_high"] = high
    summary["precision"] = float(point["precision"])
    summary["f1"] = float(point["f1"])
    summary.update(counts)
    summary.update({"n": int(y.size), "n_pos": int(y.sum()), "threshold": float(threshold)})
    return summary


def patient_mean_interval(values: np.ndarray, groups: Groups, n_boot: int = 1000, seed: int = 0,
                          alpha: float = 0.05, rate: bool = False) -> tuple[float, float, float]:  # fmt: skip
    """(mean, low, high) of per-image values, patients resampled with replacement, each with all its images
    (`patient_weights` with one stratum). `rate`: the values are 0/1 hits, and with none or all of them hits the
    exact one-sided bound (`rate_interval`) replaces the degenerate bootstrap interval."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    weights = patient_weights(np.zeros(v.size, np.int64), groups, n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        replicates = (weights @ v) / weights.sum(axis=1)
    low, high = percentile_interval(replicates, alpha)
    if rate:
        low, high = rate_interval(int(v.sum()), int(v.size), low, high, alpha)
    return float(v.mean()), low, high


# ---- differences between models -------------------------------------------------------------


def paired_difference_ci(
    y_true: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    metric_fn: MetricFn,
    groups: Groups = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """(metric(a) - metric(b), low, high): two models scored on the same images.

    Both models see the same patient draws in every replicate, so what the
    images have in common cancels and the interval is that of the difference
    (narrower than comparing two separate intervals). Identical models give (0, 0, 0).
    """
    _check_bootstrap_args(n_boot, alpha)
    y, s_a = as_arrays(y_true, score_a)
    _, s_b = as_arrays(y, score_b)
    weights = patient_weights(y, groups, n_boot, seed)
    diff = _weighted_replicates(y, s_a, metric_fn, weights) - _weighted_replicates(y, s_b, metric_fn, weights)
    low, high = percentile_interval(diff, alpha)
    return float(metric_fn(y, s_a) - metric_fn(y, s_b)), low, high


def difference_ci_independent(
    y1: np.ndarray,
    s1: np.ndarray,
    g1: Groups,
    y2: np.ndarray,
    s2: np.ndarray,
    g2: Groups,
    metric_fn: MetricFn,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """(metric(set 1) - metric(set 2), low, high) for two independent test sets (e.g. one model's
    AUC on fakes vs on real test images): each set's patients are resampled on its own stream."""
    _check_bootstrap_args(n_boot, alpha)
    y1, s1 = as_arrays(y1, s1)
    y2, s2 = as_arrays(y2, s2)
    seed1, seed2 = (int(x) for x in np.random.SeedSequence(seed).generate_state(2))
    rep1 = _weighted_replicates(y1, s1, metric_fn, patient_weights(y1, g1, n_boot, seed1))
    rep2 = _weighted_replicates(y2, s2, metric_fn, patient_weights(y2, g2, n_boot, seed2))
    low, high = percentile_interval(rep1 - rep2, alpha)
    return float(metric_fn(y1, s1) - metric_fn(y2, s2)), low, high
