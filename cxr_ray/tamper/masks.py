"""Where an edit goes: a random blob inside the lung fields, of varied size and position, drawn from a seed.

A blob is an ellipse (random radii and angle) whose edge is roughened by
low-frequency noise, as an opacity's outline is, then cut to the lung fields
(cxr_ray.tamper.lungs), so every mask lies inside them by construction. Sizes
are a share of the image side, so a mask means the same at 64 or 224 px.
"""

from __future__ import annotations

import numpy as np

RADIUS_RANGE = (0.06, 0.16)  # ellipse radii, as a share of the image side
MIN_AREA = 0.005  # a mask smaller than this share of the image is drawn again
TRIES = 20


def _smooth_noise(rng: np.random.Generator, size: int, cells: int = 4) -> np.ndarray:
    """Noise in [-1, 1] that varies over about size / cells pixels (bilinear over a coarse grid)."""
    coarse = rng.uniform(-1, 1, (cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def blob(rng: np.random.Generator, size: int, center: tuple[float, float], radii: tuple[float, float], angle: float) -> np.ndarray:
    """A rough ellipse at `center` (row, col in px) with `radii` (px) turned by `angle` (radians)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - center[0], xx - center[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    r = (u / radii[1]) ** 2 + (v / radii[0]) ** 2
    return r <= 1 + 0.35 * _smooth_noise(rng, size)


def sample_mask(lungs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A blob inside `lungs` ((S, S) bool) centred on a lung pixel; ValueError when the lungs hold none big enough."""
    size = lungs.shape[0]
    if lungs.shape != (size, size) or not lungs.any():
        raise ValueError(f"need a square, non-empty lung mask, got shape {lungs.shape} with {int(lungs.sum())} pixels")
    ys, xs = np.nonzero(lungs)
    largest = np.zeros_like(lungs)
    for _ in range(TRIES):
        k = int(rng.integers(len(ys)))
        radii = tuple(float(r) * size for r in rng.uniform(*RADIUS_RANGE, size=2))
        mask = blob(rng, size, (float(ys[k]), float(xs[k])), radii, float(rng.uniform(0, np.pi))) & lungs
        if mask.mean() >= MIN_AREA:
            return mask
        largest = mask if mask.sum() > largest.sum() else largest
    # Lung fields too small for MIN_AREA (a rare failed segmentation): the largest draw, not a failed job.
    return largest if largest.any() else lungs.copy()


def mask_seed(seed: int, image_id: str) -> np.random.Generator:
    """The generator of one image's mask: the study's seed and the image's id, so a re-run draws the same mask."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
