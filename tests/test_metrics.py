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


# ---- issue 14: operating points, exact bounds, patient bootstrap, paired differences ----------


def test_threshold_at_fpr_hand_computed():
    # Negatives 0.1 .. 1.0 (10 of them), positives 0.95 and 0.85. Thresholds in decreasing order and the
    # negatives each flags: 1.0 -> 1, 0.95 -> 1, 0.9 -> 2, 0.85 -> 2, 0.8 -> 3, ...
    neg = np.round(np.arange(1, 11) / 10, 1)
    y = np.r_[np.zeros(10, int), 1, 1]
    s = np.r_[neg, 0.95, 0.85]
    # max_fpr 0.1 allows one negative: the lowest such threshold is 0.95 (0.9 would flag two).
    assert M.threshold_at_fpr(y, s, 0.1) == 0.95
    # max_fpr 0.25 allows two: down to 0.85.
    assert M.threshold_at_fpr(y, s, 0.25) == 0.85
    # Everything allowed: the lowest score.
    assert M.threshold_at_fpr(y, s, 1.0) == 0.1
    # No false alarm allowed but a negative holds the top score: nothing may be flagged.
    t = M.threshold_at_fpr(y, s, 0.0)
    assert t > 1.0 and t == np.nextafter(1.0, np.inf)
    assert M.threshold_metrics(y, s, t)["specificity"] == 1.0
    # Without positives it still works (only negatives decide); without negatives it cannot.
    assert M.threshold_at_fpr(np.zeros(10, int), neg, 0.1) == 1.0
    with pytest.raises(ValueError, match="negatives"):
        M.threshold_at_fpr([1, 1], [0.2, 0.4], 0.1)
    with pytest.raises(ValueError, match="max_fpr"):
        M.threshold_at_fpr(y, s, 1.5)


def test_ppv_hand_computed():
    # 0.9 * 0.001 / (0.9 * 0.001 + 0.01 * 0.999) = 0.0009 / 0.01089
    assert M.ppv(0.9, 0.01, 1e-3) == pytest.approx(0.0009 / 0.01089)
    assert M.ppv(0.9, 0.01, 1e-3) == pytest.approx(0.0826446, abs=1e-7)
    # 0.9 * 0.01 / (0.009 + 0.0099) = 0.009 / 0.0189 = 0.476190...
    assert M.ppv(0.9, 0.01, 1e-2) == pytest.approx(0.4761905, abs=1e-7)
    assert M.ppv(1.0, 0.0, 1e-3) == 1.0
    assert math.isnan(M.ppv(0.0, 0.0, 0.5))
    with pytest.raises(ValueError, match="prevalence"):
        M.ppv(0.5, 0.5, 2.0)


def _binomial_cdf_bruteforce(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def test_exact_bounds_hand_computed():
    # k = 0: P(X = 0) = (1 - p)^n = alpha  ->  p = 1 - alpha^(1/n); 0 in 618 -> 0.4836%.
    assert M.exact_upper_bound(0, 618) == pytest.approx(1 - 0.05 ** (1 / 618), rel=1e-12)
    assert M.exact_upper_bound(0, 618) == pytest.approx(0.004836, abs=1e-6)
    # k > 0: the returned p solves CDF(k; n, p) = alpha, checked by summing the pmf directly.
    for k, n in ((3, 100), (1, 618), (5, 100_000), (40, 60)):
        p = M.exact_upper_bound(k, n)
        assert k / n < p < 1
        assert _binomial_cdf_bruteforce(k, n, p) == pytest.approx(0.05, abs=1e-9)
    # The textbook value for 3 in 100 (one-sided 95%): 0.0757.
    assert M.exact_upper_bound(3, 100) == pytest.approx(0.0757, abs=1e-4)
    assert M.exact_upper_bound(7, 7) == 1.0
    # Lower bound by symmetry: 97 of 100 -> 1 - upper(3 of 100); all n of n -> alpha^(1/n).
    assert M.exact_lower_bound(97, 100) == pytest.approx(1 - M.exact_upper_bound(3, 100), abs=1e-15)
    assert M.exact_lower_bound(618, 618) == pytest.approx(0.05 ** (1 / 618), rel=1e-12)
    assert M.exact_lower_bound(0, 10) == 0.0
    with pytest.raises(ValueError, match="k <= n"):
        M.exact_upper_bound(5, 4)


def test_rate_interval_uses_exact_bound_only_without_errors():
    assert M.rate_interval(0, 618, 0.0, 0.0) == (0.0, pytest.approx(1 - 0.05 ** (1 / 618)))
    low, high = M.rate_interval(618, 618, 1.0, 1.0)
    assert high == 1.0 and low == pytest.approx(0.05 ** (1 / 618))
    assert M.rate_interval(3, 100, 0.01, 0.07) == (0.01, 0.07)


# Five patients, two images each (interleaved on purpose): A, B positive; C, D, E negative.
GROUPS = np.array(["C", "A", "D", "A", "B", "E", "C", "B", "D", "E"])
GROUPS_Y = np.array([0, 1, 0, 1, 1, 0, 0, 1, 0, 0])


def test_patient_weights_hand_made():
    w = M.patient_weights(GROUPS_Y, GROUPS, n_boot=200, seed=0)
    assert w.shape == (200, 10)
    assert np.array_equal(w, np.round(w))
    # Every patient has two images and the strata keep 2 and 3 patients: rows sum to 10, 4 positive images.
    assert (w.sum(axis=1) == 10).all()
    assert (w[:, GROUPS_Y == 1].sum(axis=1) == 4).all()
    for patient in "ABCDE":
        cols = w[:, GROUPS == patient]
        assert (cols[:, 0] == cols[:, 1]).all()  # a patient's images share its multiplicity
    # Patients, not images, are drawn: A's multiplicity is 0, 1 or 2 (one of two positive patients).
    assert set(np.unique(w[:, 1])) <= {0.0, 1.0, 2.0} and len(set(np.unique(w[:, 1]))) > 1
    # Same seed, same draws; each image its own patient is the image bootstrap.
    assert np.array_equal(w, M.patient_weights(GROUPS_Y, GROUPS, n_boot=200, seed=0))
    assert np.array_equal(
        M.patient_weights(GROUPS_Y, None, n_boot=50, seed=3),
        M.patient_weights(GROUPS_Y, np.arange(10), n_boot=50, seed=3),
    )


def test_patient_weights_mixed_patient_and_unequal_sizes():
    # X has a positive then a negative image: its stratum is positive, where it is the only patient,
    # so both its images have weight 1 in every replicate. Y (1 image) and Z (3 images) are negative.
    y = np.array([1, 0, 0, 0, 0, 0])
    g = np.array(["X", "X", "Y", "Z", "Z", "Z"])
    w = M.patient_weights(y, g, n_boot=300, seed=1)
    assert (w[:, :2] == 1).all()
    neg_patients = w[:, 2] + w[:, 3]  # Y's multiplicity + Z's
    assert (neg_patients == 2).all()
    assert set(w.sum(axis=1)) == {1 + 1 + 2, 1 + 1 + 1 + 3, 1 + 1 + 6}  # YY, YZ, ZZ
    with pytest.raises(ValueError, match="groups has 2 values"):
        M.patient_weights(y, ["a", "b"], n_boot=2, seed=0)


def test_patient_bootstrap_of_copied_images_is_the_image_bootstrap_of_the_patients():
    # Every patient holds 5 identical copies of one image: resampling patients is the image bootstrap of
    # the originals, whereas resampling the 5x images pretends to 5x the data (a much narrower interval).
    y, s = _noisy_scores(90)
    y5, s5, g5 = np.repeat(y, 5), np.repeat(s, 5), np.repeat(np.arange(90), 5)
    image = M.bootstrap_ci(y, s, M.roc_auc, n_boot=400, seed=2)
    assert M.bootstrap_ci(y5, s5, M.roc_auc, n_boot=400, seed=2, groups=g5) == pytest.approx(image, abs=1e-12)
    naive = M.bootstrap_ci(y5, s5, M.roc_auc, n_boot=400, seed=2)
    assert naive[1] - naive[0] < 0.6 * (image[1] - image[0])
    # Generic metrics (indices expanded from the weights) and summarize follow the same rule.
    ap = M.bootstrap_ci(y, s, M.average_precision, n_boot=100, seed=2)
    assert M.bootstrap_ci(y5, s5, M.average_precision, n_boot=100, seed=2, groups=g5) == pytest.approx(ap, abs=1e-12)
    summary = M.summarize(y, s, 0.6, n_boot=300, seed=2)
    summary5 = M.summarize(y5, s5, 0.6, n_boot=300, seed=2, groups=g5)
    for key in ("accuracy", "auc", "sensitivity", "specificity"):
        for part in ("", "_ci_low", "_ci_high"):
            assert summary5[key + part] == pytest.approx(summary[key + part], abs=1e-12)


def test_paired_difference_identical_models_is_exactly_zero():
    y, s = _noisy_scores(80)
    g = np.arange(80) // 2
    assert M.paired_difference_ci(y, s, s, M.roc_auc, groups=g, n_boot=200) == (0.0, 0.0, 0.0)
    assert M.paired_difference_ci(y, s, s, M.average_precision, n_boot=50) == (0.0, 0.0, 0.0)


def test_paired_difference_perfect_against_random_is_positive():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(60, int), np.zeros(60, int)]
    perfect = y + 0.1 * rng.random(120)
    random = rng.random(120)
    g = np.arange(120) // 3  # three images per patient, each patient one class
    diff, low, high = M.paired_difference_ci(y, perfect, random, M.roc_auc, groups=g, n_boot=500, seed=1)
    assert diff == pytest.approx(1.0 - M.roc_auc(y, random))
    assert 0.0 < low <= diff <= high
    # Paired: its interval is narrower than that of two independent sets with the same data.
    ind = M.difference_ci_independent(y, perfect, g, y, random, g, M.roc_auc, n_boot=500, seed=1)
    assert ind[0] == pytest.approx(diff) and 0.0 < ind[1] <= diff <= ind[2]


def test_difference_ci_independent_sets():
    y, s = _noisy_scores(150, seed=1)
    y2, s2 = _noisy_scores(90, seed=2)
    diff, low, high = M.difference_ci_independent(y, s, None, y2, s2, None, M.roc_auc, n_boot=400, seed=0)
    assert diff == pytest.approx(M.roc_auc(y, s) - M.roc_auc(y2, s2))
    assert low < diff < high
    # The same set twice: point 0, but the two resamplings are independent, so the interval is not degenerate.
    diff, low, high = M.difference_ci_independent(y, s, None, y, s, None, M.roc_auc, n_boot=400, seed=0)
    assert diff == 0.0 and low < 0.0 < high
