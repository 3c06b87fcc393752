"""Side-by-side tampering examples for the study report (issue 16): original, edited, true mask, localiser's map.

The tamper stage picks a few held-out test edits of each direction (the
first by path, so a re-run picks the same ones), scores them with the
finished localiser and keeps everything as plain arrays in one NPZ file
(loaded without pickle); the report draws the figure from it
(cxr_ray.report.plots.tamper_examples).
"""

from __future__ import annotations

import io

import numpy as np

from cxr_ray import storage
from cxr_ray.storage import S3Settings

EXAMPLES_FILE = "examples.npz"
PER_DIRECTION = 3  # test edits shown per direction (inject, remove)


def pick_examples(real: str, tampered: str, per_direction: int, s3: S3Settings | None) -> dict[str, np.ndarray]:
    """The first `per_direction` test edits of each direction by path, with their originals and true masks."""
    from cxr_ray.data.datasets import images_from_column, read_columns
    from cxr_ray.tamper.job import DIRECTIONS

    edits = read_columns(tampered, ["image", "mask", "direction", "original_path", "path"], s3, splits=["test"])
    edits = edits.sort_by("path")
    directions = edits.column("direction").to_pylist()
    rows = [i for d in DIRECTIONS.values() for i in [k for k, x in enumerate(directions) if x == d][:per_direction]]
    edits = edits.take(rows)
    originals = read_columns(real, ["image", "path"], s3, splits=["test"])
    by_path = dict(zip(originals.column("path").to_pylist(), range(originals.num_rows)))
    wanted = [by_path[p] for p in edits.column("original_path").to_pylist()]
    edited = images_from_column(edits)
    side = edited.shape[-1] if len(edited) else 0
    masks = np.frombuffer(b"".join(edits.column("mask").to_pylist()), np.uint8).reshape(-1, side, side)
    return {
        "original": images_from_column(originals.take(wanted)), "edited": edited, "mask": masks.astype(bool),
        "direction": np.asarray(edits.column("direction").to_pylist(), dtype=str),
        "path": np.asarray(edits.column("original_path").to_pylist(), dtype=str),
    }  # fmt: skip


def write_examples(real: str, tampered: str, localiser_run: str, dest: str, s3: S3Settings | None,
                   per_direction: int = PER_DIRECTION) -> str:  # fmt: skip
    """Pick the examples, add the localiser's maps, scores and thresholds; write DEST/examples.npz, return its URI."""
    import torch

    from cxr_ray.checkpoint import load_state
    from cxr_ray.tamper.overlay import load_localiser_run
    from cxr_ray.train.localiser import localiser_from_state, score_maps

    examples = pick_examples(real, tampered, per_direction, s3)
    run = load_localiser_run(localiser_run, s3)
    model = localiser_from_state(load_state(run.state_uri, s3))
    scores, maps = score_maps(model, torch.from_numpy(examples["edited"].copy()).unsqueeze(1))
    examples.update(map=maps.astype(np.float32), score=scores.astype(np.float64),
                    threshold=np.float64(run.threshold), map_threshold=np.float64(run.map_threshold))  # fmt: skip
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **examples)
    uri = storage.join(dest, EXAMPLES_FILE)
    storage.write_bytes_atomic(uri, buffer.getvalue(), s3)
    return uri


def read_examples(uri: str, s3: S3Settings | None) -> dict[str, np.ndarray]:
    """What `write_examples` wrote (plain arrays; pickled objects are refused)."""
    with np.load(io.BytesIO(storage.read_bytes(uri, s3)), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
