"""Probability calibration in plain numpy: temperature scaling fitted on validation, ECE and Brier score.

A detector's sigmoid output is a score, not a probability; temperature
scaling rescales its logit by one number T (fitted on validation only, so the
ranking and every threshold-free metric are unchanged), and ECE / Brier say how
far the probabilities are from observed frequencies.
"""

from __future__ import annotations

import math

import numpy as np

PROB_CLIP = 1e-15  # keeps logits finite for saturated outputs (p = 0 or 1) without tying float64 scores
TEMPERATURE_RANGE = (0.05, 20.0)  # searched by fit_temperature; a fit at the low end means separable data
LOG_T_RANGE = (math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1]))


def _as_pair(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from cxr_ray.metrics import as_arrays

    y, p = as_arrays(y_true, prob)
    return y.astype(np.float64), _check_prob(p)


def _check_prob(p: np.ndarray) -> np.ndarray:
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("prob must hold finite probabilities in [0, 1]")
    return p


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, PROB_CLIP, 1.0 - PROB_CLIP)
    return np.log(p) - np.log1p(-p)


def _nll(y: np.ndarray, logits: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of sigmoid(logits / T): softplus(u) - y u, stable for any u."""
    u = logits / temperature
    return float(np.mean(np.logaddexp(0.0, u) - y * u))


def fit_temperature(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The T > 0 minimising the NLL of sigmoid(logit(p) / T) on (validation) labels.

    Golden-section search on log T in [log 0.05, log 20]: the NLL is convex in
    1/T, hence unimodal in log T, and the search is deterministic. Separable
    data pushes T to the lower bound (sharper is always better there).
    """
    y, p = _as_pair(y_true, prob)
    logits = _logit(p)
    invphi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = LOG_T_RANGE
    c, d = b - invphi * (b - a), a + invphi * (b - a)
    fc, fd = _nll(y, logits, math.exp(c)), _nll(y, logits, math.exp(d))
    while b - a > 1e-9:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - invphi * (b - a)
            fc = _nll(y, logits, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + invphi * (b - a)
            fd = _nll(y, logits, math.exp(d))
    return float(math.exp(0.5 * (a + b)))


def apply_temperature(prob: np.ndarray, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T), p clipped to [PROB_CLIP, 1 - PROB_CLIP] first (so T = 1 returns the clipped p)."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    p = _check_prob(np.asarray(prob, dtype=np.float64))
    # 0.5 (1 + tanh(u / 2)) is the sigmoid without overflow for large |u|.
    return 0.5 * (1.0 + np.tanh(_logit(p) / temperature / 2.0))


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, bins: int = 15) -> float:
    """Binary ECE: sum over equal-width bins of P(class 1) of |mean(y) - mean(p)| * n_bin / N.

    Bin b holds p in [b/bins, (b+1)/bins); p = 1 falls in the last bin. Empty bins add nothing.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    y, p = _as_pair(y_true, prob)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, weights=y, minlength=bins) - np.bincount(which, weights=p, minlength=bins))
    # |sum(y) - sum(p)| / N per bin equals |mean(y) - mean(p)| * n_bin / N.
    return float(gap[count > 0].sum() / y.size)


def brier_score(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Mean squared difference between the probability of class 1 and the 0/1 label."""
    y, p = _as_pair(y_true, prob)
    return float(np.mean((p - y) ** 2))
