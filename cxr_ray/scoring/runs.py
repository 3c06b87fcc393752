"""Finished classifier/detector runs: finding them under a runs root and reading what scoring needs.

A run is finished once `cxr_ray.train.classifier` has written its
test_metrics.json (it writes it last); that file records the best checkpoint,
whose state.pt holds the model, its task and the threshold chosen on val.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.filenames import STATE_FILE, TEST_METRICS_FILE
from cxr_ray.operating import YOUDEN
from cxr_ray.storage import S3Settings, StorageError


@dataclass(frozen=True)
class ModelRun:
    """A finished classifier or detector run, as the scorer and the metric tables need it."""

    run: str
    run_dir: str
    state_uri: str
    task: str  # pneumonia / deepfake
    model: str  # architecture
    train_source: str  # real / fake / both (pneumonia), real+fake (deepfake)
    threshold: float  # chosen on the run's validation split (its Youden point)
    image_size: int
    # Thresholds chosen on validation, name -> threshold (cxr_ray.operating); runs trained before: {"youden": threshold}.
    operating_points: dict[str, float] = field(default_factory=dict)
    temperature: float = 1.0  # fitted on validation; 1.0 for runs trained before it was recorded

    def __post_init__(self) -> None:
        # Every run has its Youden point: the threshold it chose on val during training.
        object.__setattr__(self, "operating_points", {YOUDEN: float(self.threshold), **self.operating_points})


def is_finished_run(uri: str, s3: S3Settings | None) -> bool:
    return storage.exists(storage.join(uri, TEST_METRICS_FILE), s3)


def discover_runs(uris: Sequence[str], s3: S3Settings | None) -> list[str]:
    """Run dirs: each URI is a finished run itself, or a root whose sub-folders are searched (one level)."""
    import pyarrow.fs as pafs

    found: list[str] = []
    for uri in uris:
        if is_finished_run(uri, s3):
            found.append(uri)
            continue
        if not storage.is_dir(uri, s3):
            raise ConfigError(f"{uri}: no such runs folder")
        fs, path = storage.resolve(uri, s3)
        try:
            entries = fs.get_file_info(pafs.FileSelector(path, recursive=False))
        except OSError as exc:
            raise StorageError(storage.describe_error(uri, exc, s3)) from None
        children = sorted(storage.uri_for(uri, e.path) for e in entries if e.type == pafs.FileType.Directory)
        found.extend(child for child in children if is_finished_run(child, s3))
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
        candidates.append(storage.uri_for(run_dir, recorded))
        candidates.append(storage.join(run_dir, recorded.split("/")[-1]))
    for candidate in candidates:
        state_uri = storage.join(candidate, STATE_FILE)
        if storage.exists(state_uri, s3):
            return state_uri
    raise ConfigError(f"{run_dir}: the checkpoint in {TEST_METRICS_FILE} ({recorded or 'none recorded'}) has no {STATE_FILE}")


def load_run(run_dir: str, s3: S3Settings | None) -> ModelRun:
    """Read a finished run's test_metrics.json and its best checkpoint's plain-data state."""
    from cxr_ray.classifier_state import load_classifier_state

    metrics = storage.read_json(storage.join(run_dir, TEST_METRICS_FILE), s3)
    state_uri = checkpoint_state_uri(run_dir, str(metrics.get("checkpoint") or ""), s3)
    state = load_classifier_state(state_uri, s3)
    try:
        threshold = float(state["threshold"])
        run = ModelRun(
            run=str(metrics.get("run") or run_dir.rstrip("/").split("/")[-1]),
            run_dir=run_dir,
            state_uri=state_uri,
            task=str(state["task"]),
            model=str(state["model_name"]),
            train_source=str(metrics.get("source") or state["config"].get("source", "real")),
            threshold=threshold,
            image_size=int(state["model_kwargs"]["image_size"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{state_uri}: classifier checkpoint lacks {exc}") from None
    return with_val_choices(run, metrics, storage.join(run_dir, TEST_METRICS_FILE))


def with_val_choices(run: ModelRun, metrics: dict[str, Any], where: str) -> ModelRun:
    """`run` with the operating points and temperature its test_metrics.json records (absent: Youden only, T = 1)."""
    from dataclasses import replace

    points, temperature = metrics.get("operating_points") or {}, metrics.get("temperature", 1.0)
    try:
        points = {str(k): float(v) for k, v in dict(points).items()}
        temperature = float(temperature if temperature is not None else 1.0)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: operating_points must map names to thresholds and temperature be a number") from None
    if not temperature > 0:
        raise ConfigError(f"{where}: temperature must be positive, got {temperature}")
    # The Youden point is the checkpoint's own threshold, whatever an older record says.
    return replace(run, operating_points={**points, YOUDEN: run.threshold}, temperature=temperature)


def load_runs(uris: Sequence[str], s3: S3Settings | None) -> list[ModelRun]:
    """Every finished run under `uris`; a bad checkpoint is a ConfigError naming it."""
    from cxr_ray.checkpoint import CheckpointError

    runs = []
    for run_dir in discover_runs(uris, s3):
        try:
            runs.append(load_run(run_dir, s3))
        except CheckpointError as exc:
            raise ConfigError(str(exc)) from None
    return runs
