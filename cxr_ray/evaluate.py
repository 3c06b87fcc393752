"""Cross-evaluation on Ray Data: every finished model run on every evaluation set, clean and perturbed.

Finished classifier/detector runs are found as `{runs root}/*/test_metrics.json`.
The test splits of the real and fake tables flow through one Ray Data
pipeline: read -> keep test rows -> one copy per perturbation (the same
function for reals and fakes) -> an actor pool that loads every model once
per actor and scores each batch with all of them. Metrics with stratified
bootstrap intervals are then computed on the driver, at the threshold each
run chose on its validation split, and written as one tidy table.

Evaluation sets: `real_test` and `fake_test` for pneumonia models (target:
the class; a fake's class is the class its GAN was trained on), and
`real+fake_test` for deepfake detectors (target: fake).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.perturb import DEFAULT_PERTURBATIONS, apply_perturbation, check_perturbations
from cxr_ray.storage import S3Settings, StorageError

TEST_METRICS_FILE = "test_metrics.json"  # cxr_ray.train.classifier writes it last: "this run is finished"
STATE_FILE = "state.pt"
METRICS_NAME = "metrics"
PREDICTIONS_NAME = "predictions"
FREQ_BASELINE_FILE = "freq_baseline.json"

REAL_TEST, FAKE_TEST, DETECTION_TEST = "real_test", "fake_test", "real+fake_test"
PNEUMONIA_METRICS = ("accuracy", "auc", "sensitivity", "specificity")
# sensitivity = fakes caught, specificity = reals passed: the two halves of the detector's accuracy.
DETECTOR_METRICS = ("auc", "ap", "accuracy", "tpr_at_1pct_fpr", "sensitivity", "specificity")
METRIC_COLUMNS = (
    "model", "run", "task", "train_source", "eval_set", "perturbation", "metric", "value", "ci_low", "ci_high", "n",
)
IMAGE_COLUMNS = ["image", "label", "class_name", "split", "source", "path"]


# ---------------------------------------------------------------- finished runs


@dataclass(frozen=True)
class ModelRun:
    """A finished classifier or detector run, as the scorer and the metric tables need it."""

    run: str
    run_dir: str
    state_uri: str
    task: str  # pneumonia / deepfake
    model: str  # architecture
    train_source: str  # real / fake / both (pneumonia), real+fake (deepfake)
    threshold: float  # chosen on the run's validation split
    image_size: int


def _child_uri(parent_uri: str, fs_path: str) -> str:
    return f"s3://{fs_path.lstrip('/')}" if storage.is_s3(parent_uri) else fs_path


def discover_runs(uris: Sequence[str], s3: S3Settings | None) -> list[str]:
    """Run dirs: each URI is a finished run itself, or a root whose sub-folders are searched (one level)."""
    import pyarrow.fs as pafs

    found: list[str] = []
    for uri in uris:
        if storage.exists(storage.join(uri, TEST_METRICS_FILE), s3):
            found.append(uri)
            continue
        if not storage.is_dir(uri, s3):
            raise ConfigError(f"{uri}: no such runs folder")
        fs, path = storage.resolve(uri, s3)
        try:
            entries = fs.get_file_info(pafs.FileSelector(path, recursive=False))
        except OSError as exc:
            raise StorageError(storage.describe_error(uri, exc, s3)) from None
        children = sorted(e.path for e in entries if e.type == pafs.FileType.Directory)
        found.extend(
            _child_uri(uri, child) for child in children if storage.exists(storage.join(_child_uri(uri, child), TEST_METRICS_FILE), s3)
        )
    if not found:
        raise ConfigError(f"no finished runs (*/{TEST_METRICS_FILE}) under {', '.join(uris)}")
    return list(dict.fromkeys(found))


def checkpoint_state_uri(run_dir: str, recorded: str, s3: S3Settings | None) -> str:
    """The state.pt of a run's best checkpoint.

    test_metrics.json records Ray's checkpoint path, which on S3 lacks the
    scheme; and a runs folder may have been copied elsewhere since, so the
    checkpoint's folder name is also looked up under the run dir.
    """
    recorded = recorded.rstrip("/")
    candidates = []
    if recorded:
        candidates.append(f"s3://{recorded.lstrip('/')}" if storage.is_s3(run_dir) and not storage.is_s3(recorded) else recorded)
        candidates.append(storage.join(run_dir, recorded.split("/")[-1]))
    for candidate in candidates:
        state_uri = storage.join(candidate, STATE_FILE)
        if storage.exists(state_uri, s3):
            return state_uri
    raise ConfigError(f"{run_dir}: the checkpoint in {TEST_METRICS_FILE} ({recorded or 'none recorded'}) has no {STATE_FILE}")


def load_run(run_dir: str, s3: S3Settings | None) -> ModelRun:
    """Read a finished run's test_metrics.json and its best checkpoint's plain-data state."""
    from cxr_ray.checkpoint import load_state

    metrics = storage.read_json(storage.join(run_dir, TEST_METRICS_FILE), s3)
    state_uri = checkpoint_state_uri(run_dir, str(metrics.get("checkpoint") or ""), s3)
    state = load_state(state_uri, s3)
    if state.get("kind") != "classifier":
        raise ConfigError(f"{state_uri}: not a classifier checkpoint (kind {state.get('kind')!r})")
    try:
        return ModelRun(
            run=str(metrics.get("run") or run_dir.rstrip("/").split("/")[-1]),
            run_dir=run_dir,
            state_uri=state_uri,
            task=str(state["task"]),
            model=str(state["model_name"]),
            train_source=str(metrics.get("source") or state["config"].get("source", "real")),
            threshold=float(state["threshold"]),
            image_size=int(state["model_kwargs"]["image_size"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{state_uri}: classifier checkpoint lacks {exc}") from None


def load_runs(uris: Sequence[str], s3: S3Settings | None) -> list[ModelRun]:
    from cxr_ray.checkpoint import CheckpointError

    runs = []
    for run_dir in discover_runs(uris, s3):
        try:
            runs.append(load_run(run_dir, s3))
        except CheckpointError as exc:
            raise ConfigError(str(exc)) from None
    return runs


# ---------------------------------------------------------------- Ray Data stages


def keep_test_rows(batch: pa.Table) -> pa.Table:
    """Ray Data UDF: the test split only, with the columns evaluation needs."""
    import pyarrow.compute as pc

    return batch.filter(pc.equal(batch.column("split"), "test")).select(IMAGE_COLUMNS)


def expand_perturbations(batch: pa.Table, names: list[str], seed: int) -> pa.Table:
    """Ray Data UDF: one copy of every row per perturbation, pixels perturbed, `perturbation` column added.

    The perturbation sees pixels only (not source or label), so reals and fakes
    are changed by exactly the same function.
    """
    from cxr_ray.data.datasets import images_from_column

    if batch.num_rows == 0:
        return batch.append_column("perturbation", pa.array([], pa.string()))
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
        from cxr_ray.checkpoint import load_state
        from cxr_ray.inference import build_model, pick_device

        settings = S3Settings(**s3) if s3 else None
        self.device = pick_device()
        self.batch_size = batch_size
        self.models, self.sizes = [], []
        for uri in state_uris:
            state = load_state(uri, settings)
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


def eval_dataset(tables: Sequence[str], perturbations: Sequence[str], seed: int, s3: S3Settings | None) -> Any:
    """Test rows of the tables, each once per perturbation (perturbed inside the Ray Data pipeline)."""
    import ray

    from cxr_ray.data.datasets import images_uri

    parts = []
    for uri in tables:
        fs, path = storage.resolve(images_uri(uri), s3)
        table = ray.data.read_parquet(path, filesystem=fs).select_columns(IMAGE_COLUMNS)
        parts.append(table.map_batches(keep_test_rows, batch_format="pyarrow", batch_size=None))
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    return ds.map_batches(
        expand_perturbations, batch_format="pyarrow", batch_size=64, fn_kwargs={"names": list(perturbations), "seed": seed}
    )


def score_runs(
    runs: Sequence[ModelRun],
    tables: Sequence[str],
    perturbations: Sequence[str],
    s3: S3Settings | None,
    *,
    seed: int = 0,
    batch_size: int = 256,
    max_actors: int | None = None,
) -> pa.Table:
    """Per-image scores in long form: run, source, path, label, class_name, perturbation, score."""
    from cxr_ray.runtime import actor_pool_options

    ds = eval_dataset(tables, perturbations, seed, s3).map_batches(
        ModelScorer,
        fn_constructor_kwargs={"state_uris": [r.state_uri for r in runs], "s3": s3.to_dict() if s3 else None},
        batch_size=batch_size,
        batch_format="pyarrow",
        **actor_pool_options(max_actors),
    )
    wide = collect(ds)
    if wide.num_rows == 0:
        raise ConfigError(f"no test rows in {', '.join(tables)}")
    keys = wide.select(["source", "path", "label", "class_name", "perturbation"])
    parts = []
    for index, run in enumerate(runs):
        part = keys.append_column("score", wide.column(f"score_{index}"))
        parts.append(part.add_column(0, "run", pa.array([run.run] * wide.num_rows, pa.string())))
    return pa.concat_tables(parts).sort_by([("run", "ascending"), ("perturbation", "ascending"), ("path", "ascending")])


# ---------------------------------------------------------------- metrics


def metric_rows(y: np.ndarray, score: np.ndarray, threshold: float, task: str, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """(metric, value, ci_low, ci_high) rows at the val-chosen threshold, 95% stratified bootstrap intervals."""
    from cxr_ray import metrics as M

    summary = M.summarize(y, score, threshold, n_boot=n_boot, seed=seed)
    rows = {
        name: (summary[name], summary[f"{name}_ci_low"], summary[f"{name}_ci_high"])
        for name in ("accuracy", "auc", "sensitivity", "specificity")
    }
    if task == "deepfake":
        tpr = lambda yy, ss: M.tpr_at_fpr(yy, ss, 0.01)  # noqa: E731
        for name, fn in (("ap", M.average_precision), ("tpr_at_1pct_fpr", tpr)):
            low, high = M.bootstrap_ci(y, score, fn, n_boot=n_boot, seed=seed)
            rows[name] = (fn(y, score), low, high)
    names = DETECTOR_METRICS if task == "deepfake" else PNEUMONIA_METRICS
    return [
        {"metric": name, "value": float(rows[name][0]), "ci_low": float(rows[name][1]), "ci_high": float(rows[name][2]), "n": int(len(y))}
        for name in names
    ]


def eval_sets_for(task: str) -> dict[str, tuple[str, ...]]:
    """Evaluation set -> the image sources in it."""
    if task == "deepfake":
        return {DETECTION_TEST: ("real", "fake")}
    return {REAL_TEST: ("real",), FAKE_TEST: ("fake",)}


def targets_for(task: str, table: pa.Table) -> np.ndarray:
    if task == "deepfake":
        return (np.asarray(table.column("source").to_pylist()) == "fake").astype(np.int64)
    return np.asarray(table.column("label").to_pylist(), dtype=np.int64)


def metrics_table(predictions: pa.Table, runs: Sequence[ModelRun], n_boot: int, seed: int) -> pa.Table:
    """The tidy table (METRIC_COLUMNS) for every run x evaluation set x perturbation present in `predictions`."""
    import pyarrow.compute as pc

    rows = []
    for run in runs:
        mine = predictions.filter(pc.equal(predictions.column("run"), run.run))
        for perturbation in sorted(set(mine.column("perturbation").to_pylist()), key=_perturbation_order):
            at = mine.filter(pc.equal(mine.column("perturbation"), perturbation))
            for eval_set, sources in eval_sets_for(run.task).items():
                part = at.filter(pc.is_in(at.column("source"), value_set=pa.array(sources)))
                if part.num_rows == 0 or (run.task == "deepfake" and len(set(part.column("source").to_pylist())) < 2):
                    continue
                y = targets_for(run.task, part)
                score = np.asarray(part.column("score").to_pylist(), dtype=np.float64)
                base = {
                    "model": run.model, "run": run.run, "task": run.task, "train_source": run.train_source,
                    "eval_set": eval_set, "perturbation": perturbation,
                }
                rows.extend({**base, **r} for r in metric_rows(y, score, run.threshold, run.task, n_boot, seed))
    return rows_to_table(rows)


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    schema = pa.schema(
        [(c, pa.float64() if c in ("value", "ci_low", "ci_high") else pa.int64() if c == "n" else pa.string()) for c in METRIC_COLUMNS]
    )
    return pa.Table.from_pylist([{c: r[c] for c in METRIC_COLUMNS} for r in rows], schema=schema)


def _perturbation_order(name: str) -> int:
    order = list(DEFAULT_PERTURBATIONS)
    return order.index(name) if name in order else len(order)


# ---------------------------------------------------------------- output folders


def table_to_csv(table: pa.Table) -> bytes:
    import pyarrow.csv as pcsv

    buffer = io.BytesIO()
    pcsv.write_csv(table, buffer)
    return buffer.getvalue()


def write_output_folder(
    dest: str,
    tables: dict[str, pa.Table],
    summary: dict[str, Any],
    s3: S3Settings | None,
    overwrite: bool,
    texts: dict[str, str] | None = None,
    csv: Sequence[str] = (),
) -> None:
    """Tables as NAME.parquet (and NAME.csv for those in `csv`), texts, summary.json, then `_SUCCESS`; staged, then published."""
    import pyarrow.parquet as pq

    with storage.staged_output(dest, s3, overwrite) as staging:
        fs, base = storage.resolve(staging, s3)
        fs.create_dir(base, recursive=True)
        for name, table in tables.items():
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            storage.write_bytes_atomic(storage.join(staging, f"{name}.parquet"), buffer.getvalue(), s3)
            if name in csv:
                storage.write_bytes_atomic(storage.join(staging, f"{name}.csv"), table_to_csv(table), s3)
        for name, text in (texts or {}).items():
            storage.write_bytes_atomic(storage.join(staging, name), text.encode(), s3)
        storage.write_json_atomic(storage.join(staging, "summary.json"), summary, s3)


def check_destination(dest: str, s3: S3Settings | None, overwrite: bool) -> None:
    if storage.exists(dest, s3) and not overwrite:
        raise StorageError(f"{dest}: already exists; pass --overwrite to replace it")


# ---------------------------------------------------------------- the job


@dataclass(frozen=True)
class ScoringConfig:
    """What every scoring job shares: finished runs, the tables whose test splits they score, the output folder."""

    runs: tuple[str, ...]  # run dirs, or runs roots searched one level deep
    real: str  # ingested real table: its test split
    dest: str
    fakes: str | None = None  # generated fake table: its test split (held-out seeds)
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 256
    max_actors: int | None = None
    overwrite: bool = False
    s3: S3Settings = field(default_factory=S3Settings.from_env)

    def __post_init__(self) -> None:
        if not self.runs:
            raise ConfigError("runs: give at least one run dir or runs root")
        if self.n_boot < 1:
            raise ConfigError(f"n_boot must be at least 1, got {self.n_boot}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")

    def tables(self) -> list[str]:
        return [self.real] + ([self.fakes] if self.fakes else [])


@dataclass(frozen=True)
class EvaluateConfig(ScoringConfig):
    """Which runs to score on which tables, with which perturbations, and where the table goes."""

    perturbations: tuple[str, ...] = DEFAULT_PERTURBATIONS
    freq_baseline: bool = True  # also fit and score the frequency baseline (needs fakes)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "perturbations", check_perturbations(tuple(self.perturbations)))


def check_inputs(tables: Sequence[str], runs: Sequence[ModelRun], s3: S3Settings | None) -> int:
    """All tables complete and of one resolution, every model trained at it; returns the resolution."""
    from cxr_ray.data.datasets import DatasetError, resolution_of

    sizes = {uri: resolution_of(uri, s3) for uri in tables}
    if len(set(sizes.values())) > 1:
        raise DatasetError(f"tables of different resolutions: {sizes}")
    size = next(iter(sizes.values()))
    for run in runs:
        if run.image_size != size:
            raise DatasetError(f"run {run.run_dir} was trained at {run.image_size}px but {', '.join(tables)} is {size}px")
    return size


def run_evaluate(cfg: EvaluateConfig, *, log: Callable[[str], None] = print, address: str | None = None) -> dict[str, Any]:
    """Score every run on every evaluation set and perturbation; write metrics (Parquet + CSV) and predictions."""
    from cxr_ray.runtime import init_ray

    t0 = time.perf_counter()
    check_destination(cfg.dest, cfg.s3, cfg.overwrite)
    runs = load_runs(cfg.runs, cfg.s3)
    detectors = [r.run for r in runs if r.task == "deepfake"]
    if detectors and not cfg.fakes:
        raise ConfigError(f"detector runs ({', '.join(detectors)}) need a fake table (--fakes)")
    resolution = check_inputs(cfg.tables(), runs, cfg.s3)
    init_ray(address)
    log(
        f"evaluate: {len(runs)} run(s) x {len(cfg.perturbations)} perturbation(s) on the test splits of "
        f"{', '.join(cfg.tables())} -> {cfg.dest}"
    )
    t_score = time.perf_counter()
    predictions = score_runs(
        runs, cfg.tables(), cfg.perturbations, cfg.s3, seed=cfg.seed, batch_size=cfg.batch_size, max_actors=cfg.max_actors
    )
    score_seconds = time.perf_counter() - t_score
    table = metrics_table(predictions, runs, cfg.n_boot, cfg.seed)
    extra: dict[str, Any] = {}
    if cfg.freq_baseline and cfg.fakes:
        from cxr_ray.freq_baseline import run_freq_baseline

        baseline = run_freq_baseline(cfg.real, cfg.fakes, cfg.s3, perturbations=cfg.perturbations, n_boot=cfg.n_boot, seed=cfg.seed)
        table = pa.concat_tables([table, rows_to_table(baseline["rows"])])
        extra[FREQ_BASELINE_FILE] = _json_text({k: v for k, v in baseline.items() if k != "rows"})
    scored = predictions.num_rows
    summary = {
        "dest": cfg.dest,
        "runs": [r.__dict__ for r in runs],
        "tables": cfg.tables(),
        "resolution": resolution,
        "perturbations": list(cfg.perturbations),
        "n_boot": cfg.n_boot,
        "metric_rows": table.num_rows,
        "scores": scored,
        "score_seconds": round(score_seconds, 3),
        "scores_per_second": round(scored / score_seconds, 1) if score_seconds > 0 else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_output_folder(
        cfg.dest,
        {METRICS_NAME: table, PREDICTIONS_NAME: predictions},
        summary,
        cfg.s3,
        cfg.overwrite,
        texts=extra,
        csv=(METRICS_NAME,),
    )
    return summary


def _json_text(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"evaluate: {len(summary['runs'])} run(s), {len(summary['perturbations'])} perturbation(s), "
        f"{summary['scores']} scores ({summary['scores_per_second']} /s) -> {summary['dest']}",
        f"  metrics: {summary['metric_rows']} rows in {storage.join(summary['dest'], METRICS_NAME + '.parquet')} (and .csv)",
    ]
    return "\n".join(lines)
