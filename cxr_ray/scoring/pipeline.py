"""The Ray Data scoring pipeline: test rows -> one copy per perturbation -> every model's score per row.

The test splits of the real and fake tables flow through one pipeline:
read -> keep test rows (tagged with the table they came from) -> one copy per
perturbation (the same function for reals and fakes) -> an actor pool that
loads every model once per actor and scores each batch with all of them.
A benign table's rows (reals already re-processed, cxr_ray.benign) are not
perturbed again: their `condition` becomes their perturbation. Its test rows
are the benign evaluation set (tag "benign"); its validation rows (tag
"benign_val") are scored only to fix the benign-robust operating point.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.perturb import apply_perturbation
from cxr_ray.scoring.runs import ModelRun
from cxr_ray.storage import S3Settings

IMAGE_COLUMNS = ["image", "label", "class_name", "split", "source", "path", "patient_id"]
BENIGN_TABLE = "benign"  # the tag of a benign table's test rows (see `eval_dataset`)
BENIGN_VAL_TABLE = "benign_val"  # the tag of its validation rows: for thresholds, never an evaluation set
CONDITION = "condition"  # a benign table's column: the re-processing each row went through


def keep_test_rows(batch: pa.Table, table: str | None = None) -> pa.Table:
    """Ray Data UDF: the test split only, with the columns evaluation needs (and `table` = the tag, when given)."""
    import pyarrow.compute as pc

    kept = batch.filter(pc.equal(batch.column("split"), "test")).select(IMAGE_COLUMNS)
    return kept if table is None else kept.append_column("table", pa.array([table] * kept.num_rows, pa.string()))


BENIGN_SPLITS = {BENIGN_TABLE: (("test", BENIGN_TABLE), ("val", BENIGN_VAL_TABLE)), BENIGN_VAL_TABLE: (("val", BENIGN_VAL_TABLE),)}


def benign_scored_rows(batch: pa.Table, tag: str = BENIGN_TABLE) -> pa.Table:
    """Ray Data UDF: a benign table's rows as scored rows, their condition as the perturbation: under tag "benign" its
    test and val rows (tagged "benign" and "benign_val"), under "benign_val" its val rows alone (a threshold needs
    no more)."""
    import pyarrow.compute as pc

    parts = []
    for split, row_tag in BENIGN_SPLITS[tag]:
        rows = batch.filter(pc.equal(batch.column("split"), split))
        tagged = rows.select(IMAGE_COLUMNS).append_column("table", pa.array([row_tag] * rows.num_rows, pa.string()))
        parts.append(_scored_layout(tagged.append_column("perturbation", rows.column(CONDITION).cast(pa.string()))))
    return pa.concat_tables(parts)


def _scored_layout(batch: pa.Table) -> pa.Table:
    """One column order for every part, so the parts' union has one schema."""
    meta = [c for c in batch.column_names if c not in ("image", "perturbation")]
    return batch.select(meta + ["image", "perturbation"])


def expand_perturbations(batch: pa.Table, names: list[str], seed: int) -> pa.Table:
    """Ray Data UDF: one copy of every row per perturbation, pixels perturbed, `perturbation` column added.

    The perturbation sees pixels only (not source or label), so reals and fakes
    are changed by exactly the same function.
    """
    from cxr_ray.data.datasets import images_from_column

    if batch.num_rows == 0:
        return _scored_layout(batch.append_column("perturbation", pa.array([], pa.string())))
    images = images_from_column(batch)
    meta = batch.drop_columns(["image"])
    parts = []
    for name in names:
        perturbed = apply_perturbation(name, images, seed)
        part = meta.append_column("image", pa.array([img.tobytes() for img in perturbed], pa.binary()))
        parts.append(part.append_column("perturbation", pa.array([name] * batch.num_rows, pa.string())))
    return pa.concat_tables(parts)


class ModelScorer:
    """Ray Data actor: loads each model once, then adds `score_{i}` = P(class 1) of model i per row.

    Rows whose `image` is empty or of the wrong size (unreadable files in a
    scan) get a null score instead of failing the batch.
    """

    def __init__(self, state_uris: list[str], s3: dict[str, Any] | None, batch_size: int = 256) -> None:
        from cxr_ray.classifier_state import load_classifier_state
        from cxr_ray.inference import build_model, pick_device

        settings = S3Settings.from_dict(s3)
        self.device = pick_device()
        self.batch_size = batch_size
        self.models, self.sizes = [], []
        for uri in state_uris:
            state = load_classifier_state(uri, settings)
            self.models.append(build_model(state).to(self.device))
            self.sizes.append(int(state["model_kwargs"]["image_size"]))

    def __call__(self, batch: pa.Table) -> pa.Table:
        from cxr_ray.inference import predict_proba

        blobs = batch.column("image").to_pylist()
        out = batch.drop_columns(["image"])
        for index, (model, size) in enumerate(zip(self.models, self.sizes)):
            ok = np.array([b is not None and len(b) == size * size for b in blobs], dtype=bool)
            scores = np.full(len(blobs), np.nan)
            if ok.any():
                # bytearray: a writable buffer, which torch.from_numpy expects
                pixels = bytearray(b"".join(b for b, good in zip(blobs, ok) if good))
                images = np.frombuffer(pixels, np.uint8).reshape(-1, size, size)
                scores[ok] = predict_proba(model, images, self.device, self.batch_size)
            out = out.append_column(f"score_{index}", pa.array(scores, pa.float64(), mask=~ok))
        return out


def collect(ds: Any) -> pa.Table:
    """A Ray Dataset's rows as one Arrow table on the driver."""
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables) if tables else pa.table({})


def eval_dataset(tables: Mapping[str, str], perturbations: Sequence[str], seed: int, s3: S3Settings | None) -> Any:
    """Test rows of the tables (tag -> URI; each row's `table` column holds its tag), each once per perturbation
    (perturbed inside the Ray Data pipeline); the "benign" table's test and val rows once, at their own condition
    (val tagged "benign_val": for thresholds only); a table tagged "benign_val": its val rows alone."""
    import ray

    from cxr_ray.data.datasets import images_uri

    parts, benign = [], None
    for tag, uri in tables.items():
        fs, path = storage.resolve(images_uri(storage.published(uri, s3)), s3)
        if tag in BENIGN_SPLITS:
            if benign is not None:
                raise ConfigError("one benign table per scoring")
            read = ray.data.read_parquet(path, filesystem=fs).select_columns(IMAGE_COLUMNS + [CONDITION])
            benign = read.map_batches(benign_scored_rows, batch_format="pyarrow", batch_size=None, fn_kwargs={"tag": tag})
            continue
        read = ray.data.read_parquet(path, filesystem=fs).select_columns(IMAGE_COLUMNS)
        parts.append(read.map_batches(keep_test_rows, batch_format="pyarrow", batch_size=None, fn_kwargs={"table": tag}))
    if not parts:
        if benign is None:
            raise ConfigError("no tables to score")
        return benign  # the benign reals alone
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    ds = ds.map_batches(
        expand_perturbations, batch_format="pyarrow", batch_size=64, fn_kwargs={"names": list(perturbations), "seed": seed}
    )
    return ds if benign is None else ds.union(benign)


def score_runs(
    runs: Sequence[ModelRun],
    tables: Mapping[str, str],
    perturbations: Sequence[str],
    s3: S3Settings | None,
    *,
    seed: int = 0,
    batch_size: int = 256,
    max_actors: int | None = None,
    resources: dict | None = None,
) -> pa.Table:
    """Per-image scores in long form: run, table, source, path, patient_id, label, class_name, perturbation, score.

    `tables`: tag -> table URI ("real", "fakes", "raw_fakes", "benign", "benign_val"); a row's `table` is its tag.
    """
    from cxr_ray.resources import actor_pool_options

    ds = eval_dataset(tables, perturbations, seed, s3).map_batches(
        ModelScorer,
        fn_constructor_kwargs={"state_uris": [r.state_uri for r in runs], "s3": s3.to_dict() if s3 else None},
        batch_size=batch_size,
        batch_format="pyarrow",
        **actor_pool_options(max_actors, resources),
    )
    wide = collect(ds)
    if wide.num_rows == 0:
        raise ConfigError(f"no test rows in {', '.join(tables.values())}")
    keys = wide.select(["table", "source", "path", "patient_id", "label", "class_name", "perturbation"])
    parts = []
    for index, run in enumerate(runs):
        part = keys.append_column("score", wide.column(f"score_{index}"))
        parts.append(part.add_column(0, "run", pa.array([run.run] * wide.num_rows, pa.string())))
    order = ("run", "perturbation", "table", "path")
    return pa.concat_tables(parts).sort_by([(c, "ascending") for c in order])
