"""Lung fields of a frontal chest X-ray, found from the pixels alone (no outside weights).

Tampering edits a finding into or out of a lung, so its masks must lie inside
the lung fields. The method is classical and works at WORK_SIZE px whatever
the input size:

1. Smooth (5 px box) and stretch the 2nd-98th percentiles to [0, 1].
2. The thorax: columns between each chest wall (the brightest column of the
   outer 30% on each side, over the middle rows) and rows 10-88%; the
   mediastinum (the brightest column of the middle 24%) splits it in two.
3. Lungs hold air: pixels darker than Otsu's threshold over the thorax.
   Eroded once (cuts thin bridges to the outside air), the largest connected
   piece on each side is a lung, grown back into the dark pixels and its
   holes (rib shadows) filled.
4. A side whose lung is under MIN_SIDE_AREA of the image (an opaque,
   consolidated lung is not dark: pneumonia is exactly what hides it) takes
   the other side's mirror image across the mediastinum ("mirrored"); with
   neither side found, a fixed template of two ellipses ("template").

How well it works is measured, not assumed: `lung_field_stats` counts each
method over a table (docs/results.md, issue 16).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import pyarrow as pa

WORK_SIZE = 64  # pixels: lung fields need no finer grid, and labelling stays cheap
MIN_SIDE_AREA = 0.02  # a lung smaller than this share of the image is not found
METHODS = ("found", "mirrored", "template")


def box_blur(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over a k x k window (edges repeated)."""
    pad = np.pad(x.astype(np.float64), k // 2, mode="edge")
    c = pad.cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0)))
    h, w = x.shape
    return (c[k : k + h, k : k + w] - c[:h, k : k + w] - c[k : k + h, :w] + c[:h, :w]) / (k * k)


def otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold of values in [0, 1]."""
    hist, _ = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist / max(1, hist.sum())
    w = np.cumsum(p)
    m = np.cumsum(p * np.arange(bins))
    between = (m[-1] * w - m) ** 2 / (w * (1 - w) + 1e-12)
    return (int(np.argmax(between)) + 0.5) / bins


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean mask: (labels 1..n, 0 outside; n)."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    n = 0
    for i, j in zip(*np.nonzero(mask)):
        if labels[i, j]:
            continue
        n += 1
        labels[i, j] = n
        queue = deque([(i, j)])
        while queue:
            a, b = queue.popleft()
            for c, d in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                if 0 <= c < h and 0 <= d < w and mask[c, d] and not labels[c, d]:
                    labels[c, d] = n
                    queue.append((c, d))
    return labels, n


def erode(mask: np.ndarray) -> np.ndarray:
    return box_blur(mask.astype(np.float64), 3) > 0.999


def dilate(mask: np.ndarray) -> np.ndarray:
    return box_blur(mask.astype(np.float64), 3) > 0.001


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` with every background piece that does not reach the border added."""
    labels, n = components(~mask)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))) - {0}
    holes = np.isin(labels, [k for k in range(1, n + 1) if k not in border])
    return mask | holes


def template(size: int) -> np.ndarray:
    """Two upright ellipses where the lungs of a centred frontal chest X-ray lie."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((size, size), bool)
    for cx in (0.3, 0.7):
        out |= ((xx - cx) / 0.14) ** 2 + ((yy - 0.47) / 0.3) ** 2 <= 1
    return out


def _work_image(gray: np.ndarray) -> np.ndarray:
    if gray.shape == (WORK_SIZE, WORK_SIZE):
        return gray.astype(np.float64)
    return np.asarray(Image.fromarray(gray).resize((WORK_SIZE, WORK_SIZE), Image.Resampling.BILINEAR), np.float64)


def lung_fields(gray: np.ndarray) -> tuple[np.ndarray, str]:
    """The lung-field mask of a gray (H, W) uint8 X-ray, at its size, and the method that found it (METHODS)."""
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a gray (H, W) uint8 image, got shape {gray.shape} dtype {gray.dtype}")
    s = WORK_SIZE
    x = box_blur(_work_image(gray), 5)
    lo, hi = np.percentile(x, (2, 98))
    x = np.clip((x - lo) / (hi - lo + 1e-6), 0, 1)
    middle_rows = x[int(0.3 * s) : int(0.7 * s)].mean(0)
    outer = int(0.3 * s)
    left_wall = int(np.argmax(middle_rows[:outer])) + 1
    right_wall = s - outer + int(np.argmax(middle_rows[s - outer :]))
    a, b = int(0.38 * s), int(0.62 * s)
    mid = a + int(np.argmax(middle_rows[a:b]))
    thorax = np.zeros((s, s), bool)
    thorax[int(0.1 * s) : int(0.88 * s), left_wall:right_wall] = True
    half_band = max(1, s // 20)
    thorax[:, max(0, mid - half_band) : mid + half_band + 1] = False
    if not thorax.any():
        return _at_size(template(s), gray.shape), "template"
    dark = (x < otsu_threshold(x[thorax])) & thorax
    core = erode(dark)
    sides = []
    for lo_col, hi_col in ((0, mid), (mid, s)):
        side = np.zeros_like(core)
        side[:, lo_col:hi_col] = core[:, lo_col:hi_col]
        labels, n = components(side)
        lung = np.zeros_like(core)
        if n:
            largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
            lung = fill_holes(dilate(labels == largest) & dark)
        sides.append(lung if lung.mean() >= MIN_SIDE_AREA else None)
    if sides[0] is None and sides[1] is None:
        return _at_size(template(s), gray.shape), "template"
    method = "found"
    for i in (0, 1):
        if sides[i] is None:
            sides[i] = mirror(sides[1 - i], mid)
            method = "mirrored"
    return _at_size(sides[0] | sides[1], gray.shape), method


def mirror(mask: np.ndarray, column: int) -> np.ndarray:
    """`mask` reflected across `column` (what falls outside the image is dropped)."""
    out = np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    xs = 2 * column - xs
    keep = (xs >= 0) & (xs < mask.shape[1])
    out[ys[keep], xs[keep]] = True
    return out


def _at_size(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(img) > 127


def lung_field_stats(images: np.ndarray) -> dict[str, object]:
    """How the lung fields of (N, H, W) uint8 images were found: count per method and mask area percentiles."""
    counts = dict.fromkeys(METHODS, 0)
    areas = []
    for image in images:
        mask, method = lung_fields(image)
        counts[method] += 1
        areas.append(float(mask.mean()))
    q = np.percentile(areas, (5, 50, 95)) if areas else [float("nan")] * 3
    return {"n": len(areas), "methods": counts, "area_p5": float(q[0]), "area_p50": float(q[1]), "area_p95": float(q[2])}


LUNGS_COLUMN = "lungs"  # the lung-field mask, one byte (0/1) per pixel, row by row
LUNG_METHOD_COLUMN = "lung_method"


def with_lung_fields(batch: "pa.Table") -> "pa.Table":
    """Ray Data UDF (pyarrow batches of `image` rows): the lung-field mask and its method appended to each row."""
    import pyarrow as pa

    masks, methods = [], []
    for blob in batch.column("image").to_pylist():
        side = int(round(len(blob) ** 0.5))
        mask, method = lung_fields(np.frombuffer(blob, np.uint8).reshape(side, side))
        masks.append(mask.astype(np.uint8).tobytes())
        methods.append(method)
    return batch.append_column(LUNGS_COLUMN, pa.array(masks, pa.binary())).append_column(
        LUNG_METHOD_COLUMN, pa.array(methods, pa.string())
    )
