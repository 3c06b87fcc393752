"""Local tampering (issue 16): lung fields from the pixels alone, and edit masks inside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE
from cxr_ray.tamper.lungs import lung_field_stats, lung_fields, template
from cxr_ray.tamper.masks import MIN_AREA, mask_seed, sample_mask


def phantom(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A bright chest with two dark lungs, a brighter mediastinum and rib stripes; (image, true lungs)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = np.zeros((size, size), bool)
    for cx in (0.3, 0.7):
        lungs |= ((xx - cx) / 0.13) ** 2 + ((yy - 0.48) / 0.3) ** 2 <= 1
    image = np.full((size, size), 170.0)
    image[:, : int(0.05 * size)] = image[:, -int(0.05 * size) :] = 30  # air outside the body
    image[:, int(0.46 * size) : int(0.54 * size)] = 220  # mediastinum
    image[lungs] = 70
    image[lungs & (np.sin(yy * 60) > 0.6)] += 40  # ribs over the lungs
    return np.clip(image, 0, 255).astype(np.uint8), lungs


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("size", [64, 224])
def test_lung_fields_of_a_phantom_are_its_lungs_at_its_size(size):
    image, truth = phantom(size)
    mask, method = lung_fields(image)
    assert method == "found" and mask.shape == (size, size)
    assert iou(mask, truth) > 0.75
    assert iou(template(size), truth) > 0.6  # the fallback sits where lungs are


def test_a_consolidated_lung_is_mirrored_from_the_other_side():
    image, truth = phantom()
    image[:, 32:][truth[:, 32:]] = 175  # the right lung as opaque as the body: pneumonia hides it from a threshold
    mask, method = lung_fields(image)
    assert method == "mirrored" and mask[:, 32:].sum() > 0.5 * truth[:, 32:].sum()


def test_lung_fields_of_the_sample_x_rays():
    files = sorted(Path(SAMPLE).glob("*/*/*.jpeg"))[::5]
    images = np.stack([np.asarray(Image.open(f).convert("L").resize((64, 64), Image.Resampling.BILINEAR)) for f in files])
    stats = lung_field_stats(images)
    assert stats["n"] == len(files) and stats["methods"]["found"] >= 0.7 * len(files)
    assert 0.05 < stats["area_p5"] and stats["area_p95"] < 0.4  # lungs, not the whole image or a speck
    for image in images[:10]:
        mask, _ = lung_fields(image)
        assert mask[:, :32].any() and mask[:, 32:].any()  # a lung on each side
    with pytest.raises(ValueError, match="uint8"):
        lung_fields(images[0].astype(np.float32))


def test_masks_lie_inside_the_lungs_and_are_drawn_from_the_seed():
    _, lungs = phantom()
    masks = [sample_mask(lungs, mask_seed(0, f"img-{i}")) for i in range(50)]
    assert all((m & ~lungs).sum() == 0 and m.mean() >= MIN_AREA for m in masks)
    areas = [m.mean() for m in masks]
    assert max(areas) > 2 * min(areas)  # varied sizes
    centres = np.array([np.argwhere(m).mean(0) for m in masks])
    assert (centres[:, 1] < 32).any() and (centres[:, 1] > 32).any()  # both lungs
    assert np.array_equal(sample_mask(lungs, mask_seed(0, "img-3")), masks[3])  # a re-run draws the same mask
    assert not np.array_equal(sample_mask(lungs, mask_seed(1, "img-3")), masks[3])
    with pytest.raises(ValueError, match="lung mask"):
        sample_mask(np.zeros((64, 64), bool), mask_seed(0, "x"))
