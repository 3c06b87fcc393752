"""Temperature scaling, ECE and Brier score against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr_ray import calibration as C


def _sigmoid(u: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-u))


@pytest.mark.parametrize("true_t", [2.5, 0.5])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    # Labels drawn from sigmoid(z); the model reports sigmoid(T z): dividing its logits by T restores z.
    rng = np.random.default_rng(0)
    z = 3.0 * rng.normal(size=20_000)
    y = (rng.random(z.size) < _sigmoid(z)).astype(int)
    prob = _sigmoid(z * true_t)
    t = C.fit_temperature(y, prob)
    assert t == pytest.approx(true_t, rel=0.05)
    assert C.fit_temperature(y, prob) == t  # deterministic
    assert C.expected_calibration_error(y, C.apply_temperature(prob, t)) < C.expected_calibration_error(y, prob)


def test_fit_temperature_on_separable_data_sharpens_to_the_bound():
    y = np.array([0, 0, 1, 1])
    assert C.fit_temperature(y, [0.3, 0.4, 0.6, 0.7]) == pytest.approx(0.05, rel=1e-6)


def test_apply_temperature_hand_computed():
    # logit(sigmoid(2)) = 2; / T = 2 -> sigmoid(1) = 0.7310585786; p = 0.5 stays 0.5 for any T.
    out = C.apply_temperature([1 / (1 + math.exp(-2)), 0.5], 2.0)
    np.testing.assert_allclose(out, [1 / (1 + math.exp(-1)), 0.5], rtol=1e-9)
    # Saturated outputs are clipped, never inf/NaN.
    assert np.isfinite(C.apply_temperature([0.0, 1.0], 0.05)).all()
    with pytest.raises(ValueError, match="temperature"):
        C.apply_temperature([0.5], 0.0)


def test_expected_calibration_error_hand_computed():
    # Bin of p = 0.25 with 1 positive in 4, bin of p = 0.75 with 3 in 4: perfectly calibrated.
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    p = [0.25] * 4 + [0.75] * 4
    assert C.expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-15)
    # p = 0.9 twice with y = 1, 0 (gap 0.4) and p = 0.1 twice with y = 0, 0 (gap 0.1): 0.4 * 2/4 + 0.1 * 2/4.
    assert C.expected_calibration_error([1, 0, 0, 0], [0.9, 0.9, 0.1, 0.1]) == pytest.approx(0.25)
    # One bin: |mean(y) - mean(p)| = |0.5 - 0.5| = 0 even though no single prediction is right.
    assert C.expected_calibration_error([1, 0], [0.9, 0.1], bins=1) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        C.expected_calibration_error([1], [1.5])


def test_brier_score_hand_computed():
    # (0.1^2 + 0.2^2 + 0.6^2) / 3 = 0.41 / 3
    assert C.brier_score([1, 0, 0], [0.9, 0.2, 0.6]) == pytest.approx(0.41 / 3)
    assert C.brier_score([1, 0], [1.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="0/1"):
        C.brier_score([2, 0], [0.5, 0.5])
