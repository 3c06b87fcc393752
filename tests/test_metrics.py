"""Metrics checked against small hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr_ray import metrics as M

# sklearn's documentation example: AUC 0.75, AP 0.8333.
Y4 = np.array([0, 0, 1, 1])
S4 = np.array([0.1, 0.4, 0.35, 0.8])


def test_roc_auc_simple_and_with_ties():
    assert M.roc_auc(Y4, S4) == pytest.approx(0.75)
    # pos {0.5, 0.9} vs neg {0.5, 0.2}: 0.5 (tie) + 1 + 1 + 1 = 3.5 of 4 pairs.
    assert M.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    assert M.roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)
    assert M.roc_auc([0, 1], [0.9, 0.1]) == pytest.approx(0.0)


def test_roc_auc_matches_pairwise_definition_on_random_data():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounding creates many ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert M.roc_auc(y, s) == pytest.approx(pairwise)


def test_roc_auc_is_nan_with_one_class():
    assert math.isnan(M.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(M.roc_auc([0, 0], [0.1, 0.2]))


def test_input_validation():
    with pytest.raises(ValueError, match="0/1"):
        M.roc_auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="3 values"):
        M.roc_auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        M.roc_auc([0, 1], [0.1, float("nan")])


def test_roc_curve_points():
    fpr, tpr, thresholds = M.roc_curve(Y4, S4)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])
    # Tied scores form one point.
    fpr, tpr, thresholds = M.roc_curve([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9])
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.5, 0.2])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    # Trapezoid area under the curve equals the rank AUC.
    assert np.trapezoid(tpr, fpr) == pytest.approx(M.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]))


def test_average_precision():
    # Descending: 0.8 (P=1, R=.5), 0.4 (P=.5, R=.5), 0.35 (P=2/3, R=1) -> .5*1 + .5*2/3.
    assert M.average_precision(Y4, S4) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # Tie at 0.5 admits one positive and one negative together: .5*.5 + .5*(2/3).
    assert M.average_precision([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(0.25 + 1 / 3)
    assert M.average_precision([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(1.0)
    assert math.isnan(M.average_precision([0, 0], [0.1, 0.2]))


def test_confusion_counts():
    assert M.confusion([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == {"tn": 1, "fp": 1, "fn": 1, "tp": 2}
    with pytest.raises(ValueError, match="0/1 predictions"):
        M.confusion([0, 1], [0.2, 0.7])


def test_threshold_metrics_counts_equal_scores_as_positive():
    # threshold 0.35 -> predictions [0, 1, 1, 1]: tp 2, fp 1, tn 1, fn 0.
    m = M.threshold_metrics(Y4, S4, 0.35)
    assert m == pytest.approx({"accuracy": 0.75, "sensitivity": 1.0, "specificity": 0.5, "precision": 2 / 3, "f1": 0.8})
    # Nothing called positive: precision is undefined, not 0.
    m = M.threshold_metrics(Y4, S4, 0.9)
    assert m["sensitivity"] == 0.0 and m["specificity"] == 1.0 and math.isnan(m["precision"])


def test_choose_threshold_youden():
    y = [0, 0, 0, 0, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.9]
    # J at 0.9: .33, 0.7: .67, 0.6: .42, 0.5: .75 (best), 0.3: .5
    assert M.choose_threshold(y, s) == pytest.approx(0.5)
    # Tie (J = .5 at 0.8 and at 0.35): the higher threshold wins.
    assert M.choose_threshold(Y4, S4) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="both classes"):
        M.choose_threshold([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="youden"):
        M.choose_threshold(y, s, rule="f1")


def test_tpr_at_fpr():
    y = [0, 0, 0, 0, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.9]
    assert M.tpr_at_fpr(y, s, max_fpr=0.0) == pytest.approx(2 / 3)
    assert M.tpr_at_fpr(y, s, max_fpr=0.2) == pytest.approx(2 / 3)
    assert M.tpr_at_fpr(y, s, max_fpr=0.25) == pytest.approx(1.0)
    assert math.isnan(M.tpr_at_fpr([1, 1], [0.1, 0.2]))


def _noisy_scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)  # unbalanced, like pneumonia vs normal reversed
    return y, rng.normal(size=n) + 1.2 * y


def test_bootstrap_ci_contains_estimate_and_shrinks_with_more_data():
    y, s = _noisy_scores(150)
    low, high = M.bootstrap_ci(y, s, M.roc_auc, n_boot=500, seed=1)
    assert low < M.roc_auc(y, s) < high
    # Nine copies of the same data: same AUC, about a third of the width.
    big_low, big_high = M.bootstrap_ci(np.tile(y, 9), np.tile(s, 9), M.roc_auc, n_boot=500, seed=1)
    assert big_low < M.roc_auc(y, s) < big_high
    assert (big_high - big_low) < 0.5 * (high - low)


def test_bootstrap_ci_is_reproducible_with_a_seed():
    y, s = _noisy_scores(120)
    assert M.bootstrap_ci(y, s, M.roc_auc, n_boot=200, seed=7) == M.bootstrap_ci(y, s, M.roc_auc, n_boot=200, seed=7)
    assert M.bootstrap_ci(y, s, M.roc_auc, n_boot=200, seed=7) != M.bootstrap_ci(y, s, M.roc_auc, n_boot=200, seed=8)


def test_bootstrap_is_stratified():
    y, s = _noisy_scores(60)
    seen = []

    def record(labels, scores):
        seen.append((int(labels.sum()), labels.size))
        return M.roc_auc(labels, scores)

    M.bootstrap_ci(y, s, record, n_boot=50, seed=0)
    assert len(seen) == 50
    assert set(seen) == {(int(y.sum()), y.size)}  # every replicate keeps the class counts


def test_vectorised_auc_bootstrap_equals_per_replicate_loop():
    y, s = _noisy_scores(90)
    s = np.round(s, 1)  # ties exercise the 0.5 credit
    fast = M.bootstrap_ci(y, s, M.roc_auc, n_boot=300, seed=4)
    loop = M.bootstrap_ci(y, s, lambda a, b: M.roc_auc(a, b), n_boot=300, seed=4)
    assert fast == pytest.approx(loop, abs=1e-12)


def test_summarize_reports_points_cis_and_counts():
    y, s = _noisy_scores(200)
    threshold = 0.6
    summary = M.summarize(y, s, threshold, n_boot=300, seed=2)
    point = M.threshold_metrics(y, s, threshold)
    assert summary["auc"] == pytest.approx(M.roc_auc(y, s))
    for name in ("accuracy", "sensitivity", "specificity"):
        assert summary[name] == pytest.approx(point[name])
    for name in ("accuracy", "auc", "sensitivity", "specificity"):
        assert summary[f"{name}_ci_low"] <= summary[name] <= summary[f"{name}_ci_high"]
    assert {k: summary[k] for k in ("tn", "fp", "fn", "tp")} == M.confusion(y, (s >= threshold).astype(int))
    assert summary["n"] == 200 and summary["n_pos"] == int(y.sum())
    # Same replicates as bootstrap_ci with the same seed, computed in closed form.
    assert (summary["auc_ci_low"], summary["auc_ci_high"]) == pytest.approx(
        M.bootstrap_ci(y, s, M.roc_auc, n_boot=300, seed=2)
    )
    sens_ci = M.bootstrap_ci(y, s, lambda a, b: M.threshold_metrics(a, b, threshold)["sensitivity"], n_boot=300, seed=2)
    assert (summary["sensitivity_ci_low"], summary["sensitivity_ci_high"]) == pytest.approx(sens_ci)
    acc_ci = M.bootstrap_ci(y, s, lambda a, b: M.threshold_metrics(a, b, threshold)["accuracy"], n_boot=300, seed=2)
    assert (summary["accuracy_ci_low"], summary["accuracy_ci_high"]) == pytest.approx(acc_ci)
