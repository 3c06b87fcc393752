"""The GAN quality metric over training: KID and FD of every epoch's fixed-noise sample grid against real images.

A run keeps only its last checkpoints, but it writes an 8 x 8 grid of the
same 64 noise vectors every epoch (`samples/epoch_NNN.png`, epoch 0 = the
untrained generator). Cut back into its 64 tiles, each grid is a fixed-size
set of fakes in the pipeline's pixel format (`cxr_ray.grids`' [-1, 1] -> [0, 255]
mapping equals `pixels.to_uint8` up to rounding), so the metric of
`cxr_ray.gan_quality` can be followed epoch by epoch without re-training.
64 fakes are fewer than the 128 feature dimensions: the Fréchet distance is
then rank-deficient and only indicative; KID is unbiased at any n and is
the curve to read. The floor is 64 real *train* images against the same
reference, scored the same way.
"""

from __future__ import annotations

import io
import re
from typing import Any, Callable

import numpy as np
import torch

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.filenames import GAN_CONFIG_FILE, SAMPLES_DIR
from cxr_ray.gan_state import GRID_SIDE
from cxr_ray.grids import GRID_PADDING
from cxr_ray.storage import S3Settings

CURVE_FILE = "quality_curve.json"
CURVE_PLOT = "quality_curve.png"


def grid_tiles(png: bytes, image_size: int, side: int = GRID_SIDE, padding: int = GRID_PADDING) -> np.ndarray:
    """An epoch's sample grid PNG -> its side*side tiles as uint8 (N, H, W)."""
    from PIL import Image

    grid = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    step = image_size + padding
    expected = side * step + padding
    if grid.shape != (expected, expected):
        raise ConfigError(f"sample grid is {grid.shape[1]}x{grid.shape[0]} px; expected {expected}x{expected} for {side}x{side} tiles of {image_size} px")
    tiles = [
        grid[padding + r * step : padding + r * step + image_size, padding + c * step : padding + c * step + image_size]
        for r in range(side)
        for c in range(side)
    ]
    return np.stack(tiles)


def sample_grids(run_uri: str, s3: S3Settings | None) -> list[tuple[int, str]]:
    """(epoch, uri) of every samples/epoch_NNN.png of a run, in epoch order."""
    import pyarrow.fs as pafs

    samples = storage.join(run_uri, SAMPLES_DIR)
    if not storage.is_dir(samples, s3):
        raise ConfigError(f"{run_uri}: no {SAMPLES_DIR}/ folder (not a GAN run folder?)")
    fs, path = storage.resolve(samples, s3)
    found = []
    for info in fs.get_file_info(pafs.FileSelector(path)):
        match = re.fullmatch(r"epoch_(\d+)\.png", info.base_name)
        if match:
            found.append((int(match.group(1)), storage.join(samples, info.base_name)))
    if not found:
        raise ConfigError(f"{samples}: no epoch_NNN.png sample grids")
    return sorted(found)


def quality_curve(
    run_uri: str,
    *,
    data: str | None = None,
    split: str = "val",
    encoder_uri: str | None = None,
    seed: int = 0,
    s3: S3Settings | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """KID and FD per epoch of a GAN run's sample grids against the real `split` images of its class."""
    from cxr_ray.gan_quality import (
        compare,
        default_encoder_uri,
        encode,
        feature_description,
        load_or_train_encoder,
        real_images,
        subsample,
    )

    if split not in ("test", "val"):
        raise ConfigError(f"split must be test or val (the GAN trained on train), got {split!r}")
    config_uri = storage.join(run_uri, GAN_CONFIG_FILE)
    if not storage.exists(config_uri, s3):
        raise ConfigError(f"{run_uri}: no {GAN_CONFIG_FILE} (not a GAN run folder?)")
    config = storage.read_json(config_uri, s3)
    data = data or config["data"]
    class_name = config["class_name"]
    size = int(config["image_size"])
    encoder_uri = encoder_uri or default_encoder_uri(run_uri, size)
    encoder, encoder_state = load_or_train_encoder(encoder_uri, data, s3, log)

    reference, _ = real_images(data, split, class_name, s3)
    ref_features = encode(encoder, reference)
    grids = sample_grids(run_uri, s3)
    n_fake = len(grid_tiles(storage.read_bytes(grids[0][1], s3), size))
    train_images, train_labels = real_images(data, "train", class_name, s3)
    floor_images = subsample(train_images, train_labels, n_fake, seed)[0]
    floor = compare(f"{n_fake} real train vs real {split}", ref_features, encode(encoder, floor_images), seed)
    rows = []
    for epoch, uri in grids:
        tiles = torch.from_numpy(grid_tiles(storage.read_bytes(uri, s3), size))
        row = compare(f"epoch {epoch}", ref_features, encode(encoder, tiles), seed)
        rows.append({"epoch": epoch, "fd": row["fd"], "kid": row["kid"], "kid_std": row["kid_std"]})
    log(f"gan-curve: {class_name}, {len(rows)} epochs, {n_fake} fakes each vs {len(reference)} real {split} images")
    return {
        "run": run_uri,
        "class_name": class_name,
        "split": split,
        "n_real": int(len(reference)),
        "n_fake": n_fake,
        "feature": {"name": feature_description(encoder, encoder_state["model_name"]), "dim": int(ref_features.shape[1]),
                    "encoder": encoder_uri},
        "floor": floor,
        "rows": rows,
    }


def format_curve(result: dict[str, Any]) -> str:
    lines = [
        f"{result['class_name']}: {result['n_fake']} fixed-noise fakes per epoch vs {result['n_real']} real "
        f"{result['split']} images; {result['feature']['name']}, {result['feature']['dim']}-d",
        "| epoch | KID x1000 | FD (rank-deficient) |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {r['epoch']} | {1000 * r['kid']:.1f} ± {1000 * r['kid_std']:.1f} | {r['fd']:.2f} |" for r in result["rows"]]
    floor = result["floor"]
    lines.append(f"| floor: {floor['comparison']} | {1000 * floor['kid']:.1f} ± {1000 * floor['kid_std']:.1f} | {floor['fd']:.2f} |")
    return "\n".join(lines)
