"""Where scan suspects an edit: the localiser's map over the image, as a PNG, and the box around it (issue 16).

`EditMarker` is scan's scoring actor with the localiser beside the detector:
for every image it adds the localiser's edited-probability and the box of
the region its map marks, and for each image called edited (localiser) or
fake (detector) an overlay PNG: the image, the map in red, the box in yellow.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.filenames import STATE_FILE, TEST_METRICS_FILE
from cxr_ray.scoring.pipeline import ModelScorer
from cxr_ray.storage import S3Settings

OVERLAY_SCALE = 4  # overlays are drawn this many times the scanned resolution
OVERLAYS_DIR = "overlays"


@dataclass(frozen=True)
class LocaliserRun:
    """A finished localiser run as scan needs it: its best checkpoint and the thresholds chosen on val."""

    run_dir: str
    state_uri: str
    threshold: float  # image score: flags at most 1% of the val reals
    map_threshold: float  # pixel probability that marks the region (best val IoU)
    resolution: int


def load_localiser_run(uri: str, s3: S3Settings | None) -> LocaliserRun:
    """A finished `cxr-ray train-localiser` run folder; ConfigError naming it otherwise."""
    record_uri = storage.join(uri, TEST_METRICS_FILE)
    if not storage.exists(record_uri, s3):
        raise ConfigError(f"{uri}: not a finished localiser run (no {TEST_METRICS_FILE})")
    record = storage.read_json(record_uri, s3)
    if record.get("task") != "tamper-localiser":
        raise ConfigError(f"{uri}: not a localiser run (task {record.get('task')!r})")
    from cxr_ray.checkpoint import CheckpointError, load_state

    try:
        state_uri = storage.join(str(record["checkpoint"]), STATE_FILE)
        size = int(load_state(state_uri, s3)["model_kwargs"]["image_size"])
        return LocaliserRun(uri, state_uri, float(record["test"]["threshold"]), float(record["test"]["map_threshold"]), size)
    except (KeyError, TypeError, CheckpointError) as exc:
        raise ConfigError(f"{record_uri}: not a complete localiser record ({type(exc).__name__}: {exc})") from None


def region_box(prob_map: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), inclusive, of the pixels at or over `threshold`; of the most suspicious pixel when none is."""
    ys, xs = np.nonzero(prob_map >= threshold)
    if ys.size == 0:
        y, x = np.unravel_index(int(np.argmax(prob_map)), prob_map.shape)
        return int(x), int(y), int(x), int(y)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def render_overlay(image: np.ndarray, prob_map: np.ndarray, box: tuple[int, int, int, int]) -> bytes:
    """PNG: the gray image, the map blended in red (opacity = probability), the box in yellow; OVERLAY_SCALE x."""
    from PIL import Image, ImageDraw

    s = OVERLAY_SCALE
    gray = np.repeat(np.repeat(image.astype(np.float64), s, 0), s, 1)
    alpha = np.repeat(np.repeat(prob_map.astype(np.float64), s, 0), s, 1) * 0.6
    rgb = np.stack([gray * (1 - alpha) + 255 * alpha, gray * (1 - alpha), gray * (1 - alpha)], axis=-1)
    img = Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8), mode="RGB")
    x0, y0, x1, y1 = box
    ImageDraw.Draw(img).rectangle([x0 * s, y0 * s, (x1 + 1) * s - 1, (y1 + 1) * s - 1], outline=(255, 230, 0), width=2)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


class EditMarker(ModelScorer):
    """Ray Data actor: the detector's `score_0`, plus the localiser's edited_probability, box and overlay PNG."""

    def __init__(self, state_uris: list[str], s3: dict[str, Any] | None, localiser: dict[str, Any], detector_threshold: float,
                 batch_size: int = 256) -> None:  # fmt: skip
        from cxr_ray.checkpoint import load_state
        from cxr_ray.train.localiser import localiser_from_state

        super().__init__(state_uris, s3, batch_size)
        self.run = LocaliserRun(**localiser)
        self.localiser = localiser_from_state(load_state(self.run.state_uri, S3Settings.from_dict(s3)), self.device)
        self.detector_threshold = detector_threshold

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from cxr_ray.train.localiser import score_maps

        blobs = batch.column("image").to_pylist()
        out = super().__call__(batch)
        size = self.run.resolution
        ok = np.array([b is not None and len(b) == size * size for b in blobs], dtype=bool)
        edited = np.full(len(blobs), np.nan)
        boxes: list[str | None] = [None] * len(blobs)
        pngs: list[bytes | None] = [None] * len(blobs)
        if ok.any():
            images = np.frombuffer(bytearray(b"".join(b for b, good in zip(blobs, ok) if good)), np.uint8).reshape(-1, size, size)
            scores, maps = score_maps(self.localiser, torch.from_numpy(images.copy()).unsqueeze(1).to(self.device))
            fake = out.column("score_0").to_numpy(zero_copy_only=False)
            for k, row in enumerate(np.flatnonzero(ok)):
                edited[row] = scores[k]
                box = region_box(maps[k], self.run.map_threshold)
                boxes[row] = ",".join(map(str, box))
                if scores[k] >= self.run.threshold or fake[row] >= self.detector_threshold:
                    pngs[row] = render_overlay(images[k], maps[k], box)
        return (out.append_column("edited_probability", pa.array(edited, pa.float64(), mask=~ok))
                .append_column("box", pa.array(boxes, pa.string()))
                .append_column("overlay_png", pa.array(pngs, pa.binary())))  # fmt: skip
