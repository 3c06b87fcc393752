"""A frequency-domain deepfake baseline: radially averaged log power spectrum + logistic regression.

Transposed-convolution generators (DCGAN) leave periodic up-sampling traces
and a high-frequency power profile unlike a radiograph's; a linear model on
the spectrum measures how much of a CNN detector's skill such global
spectral cues alone explain. Features: pixels mapped to [-1, 1] (the models'
input mapping), 2-D FFT, fftshift, log1p |F|^2, averaged over rings of equal
radial frequency. The logistic regression (numpy, Newton's method with L2
and class-balanced weights) is fitted on the train split, its threshold is
chosen on val, and it is scored once on test. `band_report` says which
frequency bands carry the weight, and which way the fakes differ there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from cxr_ray.storage import S3Settings

MODEL_NAME = "freq_logreg"
RUN_NAME = "freq_baseline"
# Band edges in cycles per pixel; 0.5 is the Nyquist frequency along an axis,
# radii above it exist only towards the corners (diagonal frequencies).
BAND_EDGES = (0.0, 0.125, 0.25, 0.375, 0.5, 0.71)
BAND_NAMES = ("low", "mid-low", "mid-high", "high", "corner (diagonal)")


def log_power_spectrum(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> float64 (N, H, W) log1p |FFT|^2, zero frequency at the centre."""
    if images.ndim != 3:
        raise ValueError(f"expected (N, H, W) images, got shape {images.shape}")
    x = images.astype(np.float64) / 127.5 - 1.0
    spectrum = np.fft.fftshift(np.fft.fft2(x), axes=(-2, -1))
    return np.log1p(np.abs(spectrum) ** 2)


def radial_frequency(height: int, width: int) -> np.ndarray:
    """(H, W) radial frequency in cycles/pixel of each fftshifted bin."""
    fy = (np.arange(height) - height // 2) / height
    fx = (np.arange(width) - width // 2) / width
    return np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def ring_index(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) ring number of each bin (rings one frequency step wide) and each ring's mean radius."""
    radius = radial_frequency(height, width)
    rings = np.floor(radius * max(height, width) + 0.5).astype(np.int64)
    counts = np.bincount(rings.ravel())
    radii = np.bincount(rings.ravel(), weights=radius.ravel()) / np.maximum(counts, 1)
    return rings, radii


def radial_profile(spectra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) spectra -> (N, R) ring means, and the rings' radii in cycles/pixel."""
    n, h, w = spectra.shape
    rings, radii = ring_index(h, w)
    order = np.argsort(rings.ravel(), kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(rings.ravel()[order]) != 0])
    sums = np.add.reduceat(spectra.reshape(n, -1)[:, order], starts, axis=1)
    counts = np.bincount(rings.ravel())
    return sums / counts[None, :], radii


def spectral_features(images: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged log power spectrum per image (N, R), and the ring radii (R,)."""
    parts, radii = [], None
    for start in range(0, len(images), batch):
        features, radii = radial_profile(log_power_spectrum(images[start : start + batch]))
        parts.append(features)
    if radii is None:
        raise ValueError("no images to compute spectral features of")
    return np.concatenate(parts), radii


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, max_iter: int = 100, tol: float = 1e-9) -> tuple[np.ndarray, float]:
    """L2-regularised, class-balanced logistic regression by damped Newton steps; returns (weights, bias).

    `x` should be standardised. The bias is not penalised. Each class carries
    half the total sample weight, so a 1:3 real/fake mix is not learnt as a prior.
    """
    y = np.asarray(y, dtype=np.float64)
    if set(np.unique(y)) != {0.0, 1.0}:
        raise ValueError("fitting needs both classes (0 and 1) in y")
    weight = np.where(y == 1, 0.5 / y.sum(), 0.5 / (len(y) - y.sum()))
    xa = np.c_[x, np.ones(len(x))]
    penalty = np.r_[np.full(x.shape[1], l2), 0.0]
    theta = np.zeros(xa.shape[1])

    def loss(t: np.ndarray) -> float:
        z = xa @ t
        # log(1 + e^z) - y z, computed stably
        return float(np.sum(weight * (np.logaddexp(0.0, z) - y * z)) + 0.5 * np.sum(penalty * t * t))

    current = loss(theta)
    for _ in range(max_iter):
        p = _sigmoid(xa @ theta)
        grad = xa.T @ (weight * (p - y)) + penalty * theta
        hessian = (xa * (weight * p * (1 - p))[:, None]).T @ xa + np.diag(penalty + 1e-12)
        step = np.linalg.solve(hessian, grad)
        scale = 1.0
        while scale > 1e-6:  # backtracking keeps every step a descent step
            candidate = theta - scale * step
            new = loss(candidate)
            if new <= current:
                break
            scale *= 0.5
        theta, improvement, current = candidate, current - new, new
        if improvement < tol:
            break
    return theta[:-1], float(theta[-1])


@dataclass(frozen=True)
class FrequencyDetector:
    """A fitted baseline: standardisation, weights over the rings, and the val-chosen threshold."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray  # on standardised features: comparable across rings
    bias: float
    radii: np.ndarray  # cycles/pixel of each ring
    threshold: float = 0.5

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """P(fake) for uint8 (N, H, W) images."""
        features, _ = spectral_features(images)
        return _sigmoid(((features - self.mean) / self.std) @ self.weights + self.bias)


def train_frequency_detector(
    train_images: np.ndarray, train_y: np.ndarray, val_images: np.ndarray, val_y: np.ndarray, l2: float = 1e-2
) -> FrequencyDetector:
    """Fit on train, choose the (Youden) threshold on val."""
    from cxr_ray.metrics import choose_threshold

    features, radii = spectral_features(train_images)
    mean, std = features.mean(axis=0), features.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    weights, bias = fit_logistic((features - mean) / std, train_y, l2=l2)
    detector = FrequencyDetector(mean, std, weights, bias, radii)
    threshold = choose_threshold(val_y, detector.predict_proba(val_images))
    return FrequencyDetector(mean, std, weights, bias, radii, threshold)


def band_report(detector: FrequencyDetector, real_images: np.ndarray, fake_images: np.ndarray) -> list[dict[str, Any]]:
    """Per frequency band: share of the absolute weight, signed weight (+ = more log power means fake),
    and the mean log-power difference fake - real in that band (from the given images)."""
    real, _ = spectral_features(real_images)
    fake, _ = spectral_features(fake_images)
    gap = fake.mean(axis=0) - real.mean(axis=0)
    total = float(np.abs(detector.weights).sum()) or 1.0
    report = []
    for name, low, high in zip(BAND_NAMES, BAND_EDGES[:-1], BAND_EDGES[1:]):
        in_band = (detector.radii >= low) & (detector.radii < high if high < BAND_EDGES[-1] else detector.radii <= 1.0)
        if not in_band.any():
            continue
        report.append(
            {
                "band": name,
                "cycles_per_pixel": [low, min(high, float(detector.radii.max()))],
                "rings": int(in_band.sum()),
                "weight_share": float(np.abs(detector.weights[in_band]).sum() / total),
                "signed_weight": float(detector.weights[in_band].sum()),
                "log_power_gap_fake_minus_real": float(gap[in_band].mean()),
            }
        )
    return report


def describe_bands(report: list[dict[str, Any]]) -> str:
    """A sentence or two on where the weight lies, built from the numbers."""
    if not report:
        return "No frequency band information."
    ranked = sorted(report, key=lambda b: b["weight_share"], reverse=True)
    top = ranked[0]
    direction = "more" if top["log_power_gap_fake_minus_real"] > 0 else "less"
    text = (
        f"The {top['band']} band ({top['cycles_per_pixel'][0]:.3f}-{top['cycles_per_pixel'][1]:.3f} cycles/pixel) "
        f"carries {100 * top['weight_share']:.0f}% of the baseline's absolute weight; there the fakes have "
        f"{direction} log power than the reals (mean gap {top['log_power_gap_fake_minus_real']:+.2f})."
    )
    if len(ranked) > 1:
        second = ranked[1]
        text += f" Next: the {second['band']} band with {100 * second['weight_share']:.0f}%."
    return text


def run_freq_baseline(
    real: str,
    fakes: str | tuple[str, ...],
    s3: S3Settings | None = None,
    *,
    perturbations: Sequence[str] = ("none",),
    n_boot: int = 1000,
    seed: int = 0,
    test_fakes: str | None = None,
) -> dict[str, Any]:
    """Fit on the tables' train splits, threshold on val, score test (clean and perturbed).

    `fakes` may be several tables (generator families); `test_fakes`: score
    the test fakes of this table instead (a family the fit never saw).
    Returns metric rows in the cross-evaluation table's format, the band
    report, its description and the threshold.
    """
    from cxr_ray.data.datasets import DatasetError, TaskData, load_arrays
    from cxr_ray.operating import val_selection
    from cxr_ray.perturb import apply_perturbation
    from cxr_ray.scoring import DETECTION_TEST, metric_rows

    data = TaskData(task="deepfake", real=real, fake=fakes)
    train, val = (load_arrays(data, [split], s3, columns=("patient_id",)) for split in ("train", "val"))
    test_data = TaskData(task="deepfake", real=real, fake=test_fakes) if test_fakes else data
    test = load_arrays(test_data, ["test"], s3, columns=("patient_id",))
    for name, arrays in (("train", train), ("val", val), ("test", test)):
        if len(np.unique(arrays["target"])) < 2:
            raise DatasetError(f"the {name} split of {real} + {fakes} needs both reals and fakes")
    detector = train_frequency_detector(train["image"], train["target"], val["image"], val["target"])
    # Operating points and temperature fixed on val, as for the trained detectors.
    chosen = val_selection(val["target"], detector.predict_proba(val["image"]), youden=detector.threshold)
    rows = []
    for name in perturbations:
        score = detector.predict_proba(apply_perturbation(name, test["image"], seed))
        base = {
            "model": MODEL_NAME, "run": RUN_NAME, "task": "deepfake", "train_source": "real+fake",
            "eval_set": DETECTION_TEST, "perturbation": name,
        }
        rows.extend(
            {**base, **r}
            for r in metric_rows(
                test["target"], score, "deepfake", chosen["operating_points"], temperature=chosen["temperature"],
                groups=test["patient_id"], n_boot=n_boot, seed=seed,
            )
        )
    report = band_report(detector, train["image"][train["target"] == 0], train["image"][train["target"] == 1])
    return {
        "rows": rows,
        **chosen,
        "threshold": float(detector.threshold),
        "bands": report,
        "explanation": describe_bands(report),
        "rings": len(detector.radii),
        "n_train": int(len(train["target"])),
    }
