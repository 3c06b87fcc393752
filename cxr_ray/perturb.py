"""Deterministic image perturbations for robustness checks, and a blur/JPEG training augmentation.

Every perturbation maps uint8 (N, H, W) to uint8 (N, H, W) and depends only on
an image's pixels (and a global seed), never on its label, source or batch:
the same perturbation is applied to reals and fakes alike, and an image gives
the same output whichever batch or worker it lands in. The random one
(additive noise) seeds each image's noise from a hash of its own pixels.

The perturbations model what happens to an image on its way through a
hospital's systems: lossy re-encoding (JPEG at several qualities), smoothing
(Gaussian blur), rescaling (down then up) and sensor/transfer noise.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from functools import partial
from typing import Any, Callable

import numpy as np
from PIL import Image

from cxr_ray.config import ConfigError
from cxr_ray.storage import S3Settings

Perturbation = Callable[[np.ndarray, int], np.ndarray]

AUGMENT_SUMMARY_KEY = "augmentation"


def _check_images(images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"perturbations take uint8 (N, H, W) arrays, got {images.dtype} with shape {images.shape}")
    return images


def image_key(image: np.ndarray) -> int:
    """A 64-bit key from an image's pixel bytes: seeds per-image randomness by content."""
    return int.from_bytes(hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()[:8], "little")


def identity(images: np.ndarray, seed: int = 0) -> np.ndarray:
    return _check_images(images).copy()


def jpeg(images: np.ndarray, seed: int = 0, quality: int = 75) -> np.ndarray:
    """Encode and decode each image as a grayscale JPEG at ``quality`` (PIL / libjpeg)."""
    out = np.empty_like(_check_images(images))
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="JPEG", quality=int(quality))
        out[i] = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"), dtype=np.uint8)
    return out


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian, truncated at 3 sigma."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(images: np.ndarray, seed: int = 0, sigma: float = 1.0) -> np.ndarray:
    """Separable Gaussian blur with reflected borders (exact sigma, unlike PIL's box approximation)."""
    images = _check_images(images)
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    x = images.astype(np.float64)
    for axis in (1, 2):
        pad = [(0, 0), (0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="reflect")
        size = x.shape[axis]
        x = sum(
            w * np.take(padded, np.arange(k, k + size), axis=axis) for k, w in enumerate(kernel)
        )
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def down_up(images: np.ndarray, seed: int = 0, factor: float = 0.5) -> np.ndarray:
    """Bilinear resize to ``factor`` of the size and back: loses the highest frequencies."""
    images = _check_images(images)
    out = np.empty_like(images)
    h, w = images.shape[1:]
    small = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
    for i, image in enumerate(images):
        down = Image.fromarray(image, mode="L").resize(small, Image.Resampling.BILINEAR)
        out[i] = np.asarray(down.resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)
    return out


def gaussian_noise(images: np.ndarray, seed: int = 0, sigma: float = 5.0) -> np.ndarray:
    """Additive N(0, sigma^2) noise in gray levels, rounded and clipped.

    Each image's noise comes from (seed, hash of its pixels), so identical
    images get identical noise whatever their class, batch or worker.
    """
    images = _check_images(images)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        rng = np.random.default_rng([seed, image_key(image)])
        noisy = image.astype(np.float64) + rng.normal(0.0, sigma, size=image.shape)
        out[i] = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    return out


PERTURBATIONS: dict[str, Perturbation] = {
    "none": identity,
    "jpeg95": partial(jpeg, quality=95),
    "jpeg75": partial(jpeg, quality=75),
    "jpeg50": partial(jpeg, quality=50),
    "jpeg30": partial(jpeg, quality=30),
    "blur1": partial(gaussian_blur, sigma=1.0),
    "resize0.5": partial(down_up, factor=0.5),
    "noise5": partial(gaussian_noise, sigma=5.0),
}
DEFAULT_PERTURBATIONS: tuple[str, ...] = tuple(PERTURBATIONS)


def check_perturbations(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate perturbation names; 'none' (the clean images) always comes first."""
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise ConfigError(f"unknown perturbation(s) {', '.join(unknown)}; known: {', '.join(PERTURBATIONS)}")
    ordered = ["none"] + [n for n in dict.fromkeys(names) if n != "none"]
    return tuple(ordered)


def apply_perturbation(name: str, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """``PERTURBATIONS[name](images, seed)`` with a clear error for unknown names."""
    if name not in PERTURBATIONS:
        raise ConfigError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")
    if len(images) == 0:
        return images.copy()
    return PERTURBATIONS[name](images, seed)


# ---------------------------------------------------------------- window/level (a viewer's or PACS export's display change)


def apply_gamma(gray: np.ndarray, gamma: float) -> np.ndarray:
    """A window/level change: out = 255 * (in / 255) ** gamma, rounded; gamma < 1 brightens."""
    lut = np.round(255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)
    return lut[np.asarray(gray, dtype=np.uint8)]


def contrast_stretch(gray: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """The `percentiles` window stretched linearly to 0..255 (clipped, rounded); a flat image is kept."""
    gray = np.asarray(gray, dtype=np.uint8)
    lo, hi = np.percentile(gray, percentiles)
    if hi <= lo:
        return gray.copy()
    return np.clip(np.round((gray.astype(np.float64) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- training augmentation


def _check_probability(probability: float) -> None:
    if not 0.0 <= probability <= 1.0:
        raise ConfigError(f"augmentation probability must be in [0, 1], got {probability}")


def random_blur_jpeg(images: np.ndarray, probability: float, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Robustness augmentation: each image, with ``probability``, gets a random blur or JPEG round trip.

    Blur sigma ~ U(0.5, 1.5); JPEG quality ~ U{30..95}: the ranges the robustness
    evaluation probes. Randomness per image comes from (seed, hash of its
    pixels), so an augmented table is reproducible. Returns the images and a
    description per image ("" when untouched), e.g. "blur0.83" or "jpeg47".
    """
    images = _check_images(images)
    _check_probability(probability)
    out = images.copy()
    applied: list[str] = []
    for i, image in enumerate(images):
        rng = np.random.default_rng([seed, image_key(image), 1])
        if rng.random() >= probability:
            applied.append("")
            continue
        if rng.random() < 0.5:
            sigma = float(rng.uniform(0.5, 1.5))
            out[i] = gaussian_blur(image[None], sigma=sigma)[0]
            applied.append(f"blur{sigma:.2f}")
        else:
            quality = int(rng.integers(30, 96))
            out[i] = jpeg(image[None], quality=quality)[0]
            applied.append(f"jpeg{quality}")
    return out, applied


def random_window_level(images: np.ndarray, probability: float, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Window/level augmentation: each image, with ``probability``, gets a random gamma or contrast stretch.

    Gamma ~ log-uniform on [0.7, 1.4]; stretch window from the U(0, 3)th to the
    U(97, 100)th percentile: around the benign conditions the false-alarm table
    probes (gamma 0.8 / 1.2, a 1-99% stretch), so a detector learns that a
    display change is not a fake. Randomness per image as in `random_blur_jpeg`.
    """
    images = _check_images(images)
    _check_probability(probability)
    out = images.copy()
    applied: list[str] = []
    for i, image in enumerate(images):
        rng = np.random.default_rng([seed, image_key(image), 2])
        if rng.random() >= probability:
            applied.append("")
            continue
        if rng.random() < 0.5:
            gamma = float(np.exp(rng.uniform(math.log(0.7), math.log(1.4))))
            out[i] = apply_gamma(image, gamma)
            applied.append(f"gamma{gamma:.2f}")
        else:
            window = (float(rng.uniform(0.0, 3.0)), float(rng.uniform(97.0, 100.0)))
            out[i] = contrast_stretch(image, window)
            applied.append(f"stretch{window[0]:.1f}-{window[1]:.1f}")
    return out, applied


def augment_batch(batch: Any, probability: float, seed: int) -> Any:
    """Ray Data UDF (pyarrow, image schema): augment train/val rows, leave test rows untouched."""
    import pyarrow as pa

    from cxr_ray.data.datasets import images_from_column
    from cxr_ray.data.schema import IMAGE_SCHEMA

    if batch.num_rows == 0:
        return batch
    images = images_from_column(batch)
    trainable = np.isin(np.asarray(batch.column("split").to_pylist()), ["train", "val"])
    augmented, _ = random_blur_jpeg(images[trainable], probability, seed)
    images = images.copy()
    images[trainable] = augmented
    column = pa.array([img.tobytes() for img in images], pa.binary())
    batch = batch.set_column(batch.schema.get_field_index("image"), "image", column)
    return batch.select(IMAGE_SCHEMA.names).cast(IMAGE_SCHEMA)


def augment_table(
    src_uri: str,
    dest_uri: str,
    s3: S3Settings | None = None,
    probability: float = 0.5,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    address: str | None = None,
) -> dict[str, Any]:
    """Write a copy of an image table whose train/val rows are blur/JPEG-augmented at random.

    Test rows are copied untouched, so a detector trained on the copy is still
    tested on clean images (and by `cxr-ray evaluate` on perturbed ones). Point
    `ClassifierConfig.data` / `.fakes` at augmented copies of both tables to
    train a detector "with robustness augmentation". Returns the new summary.
    """
    import pyarrow.parquet as pq

    from cxr_ray import storage
    from cxr_ray.data import schema
    from cxr_ray.data.datasets import images_uri, require_complete
    from cxr_ray.runtime import init_ray

    s3 = s3 or S3Settings.from_env()
    _check_probability(probability)
    storage.check_separate(dest_uri, [src_uri], "source table")
    src_folder = require_complete(src_uri, s3)  # where the table is published (storage.published)
    storage.check_destination(dest_uri, s3, overwrite)
    ray = init_ray(address)
    t0 = time.perf_counter()
    fs, src_path = storage.resolve(images_uri(src_folder), s3)
    ds = ray.data.read_parquet(src_path, filesystem=fs)
    ds = ds.map_batches(augment_batch, batch_format="pyarrow", fn_kwargs={"probability": probability, "seed": seed})
    with storage.staged_output(dest_uri, s3, overwrite) as staging:
        out_fs, out_path = storage.resolve(images_uri(staging), s3)
        ds.write_parquet(out_path, filesystem=out_fs)
        rows = pq.read_table(out_path, filesystem=out_fs, columns=["split"]).num_rows
        summary = dict(storage.read_json(storage.join(src_folder, schema.SUMMARY_FILE), s3))
        summary[AUGMENT_SUMMARY_KEY] = {
            "source_table": src_uri,
            "probability": probability,
            "seed": seed,
            "kinds": "blur sigma U(0.5,1.5) or JPEG quality U{30..95}, train/val rows only",
            "rows": rows,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        summary["dest"] = dest_uri
        storage.write_json_atomic(storage.join(staging, schema.SUMMARY_FILE), summary, s3)
    log(f"augment: {rows} rows of {src_uri} -> {dest_uri} (train/val augmented with p={probability})")
    return summary
