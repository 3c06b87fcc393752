"""Ray Tune searches that resume from their own plain-data trial records, never from Tune's pickles.

`Tuner.restore` unpickles `tuner.pkl` and the experiment state from the
search's storage: anyone who can write there could run code on the cluster.
So a search here is planned and recorded by the project itself:

* the trials are sampled up front from the search's seed (`plan_trials`), so
  the same config always gives the same trials, and written to `plan.json`
  (for people to read; the code re-plans from the config, never reads it);
* a Tune callback on the driver writes one JSON record per trial
  (`records/KEY.json`: its sampled values, status and last metrics);
* a re-run reads only those JSON records, skips the trials that finished and
  starts a fresh Tuner (a new attempt folder) over the rest. Each trial's
  TorchTrainer has a stable run name, so it continues from its own plain-data
  checkpoint (loaded with weights_only) rather than from scratch.

Tune's own state files are still written (Tune always writes them) but never read.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from cxr_ray import storage
from cxr_ray.storage import S3Settings

PLAN_FILE = "plan.json"
RECORDS_DIR = "records"
ATTEMPTS_DIR = "attempts"
TRIALS_TABLE = "trials.csv"
# Tune needs a non-empty request per trial; the driver only waits on its trainer,
# and must not hold a CPU its trainer's workers need (on 2 CPUs that would deadlock).
TRIAL_DRIVER_CPU = 0.01
DONE, RUNNING, ERROR = "done", "running", "error"


@dataclass(frozen=True)
class Dimension:
    """One searched value: `loguniform`/`uniform` over (low, high), or `choice` among values."""

    kind: str
    values: tuple[Any, ...]

    def sample(self, rng: Any) -> Any:
        if self.kind == "loguniform":
            low, high = self.values
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        if self.kind == "uniform":
            return float(rng.uniform(*self.values))
        if self.kind == "choice":
            value = self.values[int(rng.integers(len(self.values)))]
            return value.item() if hasattr(value, "item") else value
        raise ValueError(f"unknown search dimension kind {self.kind!r}")


def loguniform(low: float, high: float) -> Dimension:
    return Dimension("loguniform", (float(low), float(high)))


def uniform(low: float, high: float) -> Dimension:
    return Dimension("uniform", (float(low), float(high)))


def choice(values: Sequence[Any]) -> Dimension:
    return Dimension("choice", tuple(values))


def plan_trials(space: dict[str, Dimension], num_samples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Trial key -> sampled values; the same space, count and seed always give the same plan.

    Trials are drawn one after another from one generator, so a larger
    `num_samples` keeps the earlier trials. A key carries a digest of its values:
    a trial's run (`trial-<key>`) is only ever continued with the values it
    started with, never by a changed space or seed under the same search name.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    plan = {}
    for index in range(num_samples):
        values = {name: space[name].sample(rng) for name in sorted(space)}
        digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]
        plan[f"t{index:03d}-{digest}"] = values
    return plan


@dataclass(frozen=True)
class SearchRun:
    """Where a search lives and how Tune runs its trials."""

    root: str  # the search folder: plan, records, attempts, trials table
    metric: str
    mode: str  # "max" or "min"
    max_concurrent_trials: int
    scheduler: Any = None  # a Tune scheduler, or None for FIFO

    def record_uri(self, key: str) -> str:
        return storage.join(self.root, RECORDS_DIR, f"{key}.json")


def read_records(run: SearchRun, plan: dict[str, dict[str, Any]], s3: S3Settings | None) -> dict[str, dict[str, Any]]:
    """The JSON records of this plan's trials.

    A record is plain data, so reading one runs nothing; one that is not a
    well-formed record of this plan (other values, a planted or torn file) is
    left out, and its trial simply runs again.
    """
    records = {}
    for key, values in plan.items():
        uri = run.record_uri(key)
        if not storage.exists(uri, s3):
            continue
        try:
            record = storage.read_json(uri, s3)
        except ValueError:  # not JSON: treat as no record
            continue
        if _well_formed(record) and record["key"] == key and record["config"] == values:
            records[key] = record
    return records


def _well_formed(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("key"), str)
        and isinstance(record.get("config"), dict)
        and record.get("status") in (DONE, RUNNING, ERROR)
        and isinstance(record.get("metrics"), dict)
        and isinstance(record.get("error", ""), str)
    )


def _plain_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-safe scalars of a Tune result (no config, no objects)."""
    return {
        k: v for k, v in result.items()
        if k != "config" and (v is None or isinstance(v, (str, bool, int)) or (isinstance(v, float) and math.isfinite(v)))
    }


def _recorder(run: SearchRun, plan: dict[str, dict[str, Any]], s3: S3Settings | None) -> Any:
    """A Tune callback (driver side) that writes each trial's record as plain JSON.

    An ASHA-stopped trial goes through `on_trial_complete` too (Tune's
    `stop_trial`), so it is recorded as done with its last metrics. A trial that
    completes without ever reporting the search's metric is recorded as an
    error, so a re-run tries it again.
    """
    from ray import tune

    class RecordTrials(tune.Callback):
        def _write(self, trial: Any, status: str, error: str = "") -> None:
            key = trial.config["trial"]
            metrics = _plain_metrics(trial.last_result or {})
            if status == DONE and run.metric not in metrics:
                status, error = ERROR, f"finished without reporting {run.metric}"
            record = {"key": key, "config": plan[key], "status": status, "error": error, "metrics": metrics,
                      "updated": time.time()}
            storage.write_json_atomic(run.record_uri(key), record, s3)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self._write(trial, RUNNING)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._write(trial, DONE)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._write(trial, ERROR, error=_trial_error(trial))

    return RecordTrials()


def _trial_error(trial: Any) -> str:
    """The last line of the error text Tune just wrote for this trial (a text file, never its pickled twin)."""
    try:
        path = trial.error_file
        if path:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return _last_line(fh.read()) or "trial failed"
    except OSError:
        pass
    return "trial failed"


def _last_line(text: Any) -> str:
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def warn_about_tune_pickles(root: str, s3: S3Settings | None, log: Callable[[str], None]) -> None:
    """Say once that a `tuner.pkl` under the search folder (from an older version, or planted) is never loaded."""
    pickle_uri = storage.join(root, "tuner.pkl")
    if storage.exists(pickle_uri, s3):
        log(
            f"[search] warning: ignoring {pickle_uri}: searches resume from their plain-data records "
            f"({RECORDS_DIR}/*.json), never from Tune's pickled state"
        )


def run_trials(
    run: SearchRun,
    plan: dict[str, dict[str, Any]],
    trainable: Any,
    *,
    s3: S3Settings | None,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Run the plan's unfinished trials in a fresh Tuner; returns every trial's record, in plan order."""
    from ray import tune

    storage.write_json_atomic(storage.join(run.root, PLAN_FILE), plan, s3)
    warn_about_tune_pickles(run.root, s3, log)
    done = {k for k, r in read_records(run, plan, s3).items() if r["status"] == DONE}
    pending = [key for key in plan if key not in done]
    if done:
        log(f"[search] {len(done)} of {len(plan)} trial(s) finished earlier (from {RECORDS_DIR}/); running {len(pending)}")
    if pending:
        storage_path, storage_fs = _attempt_storage(run.root, s3)
        tuner = tune.Tuner(
            tune.with_resources(trainable, tune.PlacementGroupFactory([{"CPU": TRIAL_DRIVER_CPU}])),
            param_space={"trial": tune.grid_search(pending)},
            tune_config=tune.TuneConfig(
                metric=run.metric, mode=run.mode, max_concurrent_trials=run.max_concurrent_trials, scheduler=run.scheduler
            ),
            run_config=tune.RunConfig(
                name=f"attempt-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage_path, storage_filesystem=storage_fs,
                callbacks=[_recorder(run, plan, s3)],
            ),
        )
        with storage.credentials_hidden_from_env():  # Tune would copy them into every trial's runtime_env
            tuner.fit()
    records = read_records(run, plan, s3)
    return [records.get(key) or {"key": key, "config": plan[key], "status": "missing", "error": "no record", "metrics": {}}
            for key in plan]


def _attempt_storage(root: str, s3: S3Settings | None) -> tuple[str, Any]:
    from cxr_ray.train.launch import ray_storage

    return ray_storage(storage.join(root, ATTEMPTS_DIR), s3)


def concurrent_trials(workers_per_trial: int, requested: int = 0, declared: dict | None = None) -> int:
    """Trials side by side: as asked, else the declared pool's size (cxr_ray.resources), else as many as the
    cluster's CPUs fit now (an autoscaling cluster's CPUs now are not what it can grow to)."""
    import ray

    from cxr_ray.resources import of

    if requested:
        return requested
    res = of(declared)
    if res.declared:
        return res.max_actors or res.min_actors
    cpus = float(ray.cluster_resources().get("CPU", 1))
    return max(1, int(cpus // (workers_per_trial + TRIAL_DRIVER_CPU)))


def best_record(records: list[dict[str, Any]], metric: str, mode: str, search: str) -> dict[str, Any]:
    """The trial with the best finite `metric`; an error naming the trials table when there is none."""
    finite = [r for r in records if isinstance(r["metrics"].get(metric), (int, float)) and math.isfinite(r["metrics"][metric])]
    if not finite:
        raise RuntimeError(f"search {search}: no trial reported a finite {metric}; see {TRIALS_TABLE}")
    pick = max if mode == "max" else min
    return pick(finite, key=lambda r: r["metrics"][metric])


def write_trials_table(root: str, rows: list[dict[str, Any]], s3: S3Settings | None) -> str:
    """One row per trial as CSV beside the records; returns its URI."""
    import pandas as pd

    uri = storage.join(root, TRIALS_TABLE)
    storage.write_bytes_atomic(uri, pd.DataFrame(rows).to_csv(index=False).encode(), s3)
    return uri


def record_error(record: dict[str, Any]) -> str:
    """The trials table's `error` cell: empty for a finished trial, else why it has no result."""
    if record["status"] == DONE:
        return ""
    return record.get("error") or f"not finished ({record['status']})"
