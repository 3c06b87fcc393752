"""Building and running a Ray Train V2 TorchTrainer with the project's storage rules.

Every trainer in the project (classifiers, detectors, GANs, Tune trials) goes
through `run_trainer`, so storage, fault tolerance and checkpoint retention
behave the same everywhere.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from cxr_ray import storage
from cxr_ray.filenames import STATE_FILE
from cxr_ray.resources import Resources, cluster_has_gpus, live_nodes, placement_room, resolve_use_gpu  # noqa: F401 (re-exported)
from cxr_ray.storage import S3Settings


@dataclass(frozen=True)
class LaunchSpec:
    """How and where a training run executes."""

    name: str  # stable (no timestamp): the same name resumes the same run
    storage: str  # runs root: path or s3://
    num_workers: int = 2
    use_gpu: bool | None = None  # None: as `resources` declares ("auto": GPUs when the cluster has them)
    cpus_per_worker: float = 1.0  # unless `resources` declares the CPUs
    resources: Resources = field(default_factory=Resources)  # GPUs and custom resources per worker
    max_failures: int = 2
    # Node preemptions (spot GPU nodes) to recover from, counted apart from max_failures; -1: every one.
    max_preemptions: int = -1
    num_to_keep: int = 2
    score_attribute: str | None = None  # e.g. "val_auc": best-by-score checkpoints are kept
    score_order: str = "max"


def cpus_per_worker(num_workers: int, concurrent: int = 1) -> float:
    """CPUs for each training worker that leave one CPU of the cluster to Ray Data.

    Workers hold their CPUs for the whole run; with every CPU held, the Ray
    Data tasks that load a training's shard cannot be scheduled and its
    workers wait (on 2 CPUs: a lone 2-worker GAN forever, two trainings side
    by side 3x slower than one by one). A training alone gets 1 CPU per worker
    when that leaves one spare, less otherwise; `concurrent` trainings split
    all but one CPU between their workers.
    """
    import ray

    total = float(ray.cluster_resources().get("CPU", 0.0))
    share = (total - 1.0) / (num_workers * max(1, concurrent))
    return round(max(0.1, min(1.0, share) if concurrent <= 1 else share), 3)


def ray_storage(uri: str, s3: S3Settings | None) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig: explicit S3 filesystem, never env vars."""
    fs, path = storage.resolve(uri, s3)
    if storage.is_s3(uri):
        return path, fs
    os.makedirs(path, exist_ok=True)
    return path, None


def run_dir(spec: LaunchSpec) -> str:
    """Where Ray Train keeps this run's checkpoints and state."""
    return storage.join(spec.storage, spec.name)


def newest_checkpoint_state(run_uri: str, s3: S3Settings | None) -> str | None:
    """The state file of the newest checkpoint persisted under a run folder, if any.

    A worker resumes from `ray.train.get_checkpoint()` when Ray Train restored
    the run; only when it did not (a run that died right after its first
    report, before Ray recorded that checkpoint) does it fall back to this
    one, so that re-running the same command does not start over. Found from
    the folder alone, without reading Ray's own bookkeeping files.
    """
    import pyarrow.fs as pafs

    if not storage.is_dir(run_uri, s3):
        return None
    fs, path = storage.resolve(run_uri, s3)
    entries = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    candidates = sorted(
        e.base_name for e in entries if e.type == pafs.FileType.Directory and e.base_name.startswith("checkpoint_")
    )
    for name in reversed(candidates):  # names carry a sortable timestamp
        state_uri = storage.join(run_uri, name, STATE_FILE)
        if storage.exists(state_uri, s3):
            return state_uri
    return None


def run_config(spec: LaunchSpec, s3: S3Settings, callbacks: list[Any] | None = None) -> Any:
    """Ray Train's RunConfig: where the run lives, how often it may fail, which checkpoints it keeps."""
    import ray.train

    storage_path, storage_fs = ray_storage(spec.storage, s3)
    checkpoint_config = ray.train.CheckpointConfig(
        num_to_keep=spec.num_to_keep,
        checkpoint_score_attribute=spec.score_attribute,
        checkpoint_score_order=spec.score_order,
    )
    return ray.train.RunConfig(
        name=spec.name,
        storage_path=storage_path,
        storage_filesystem=storage_fs,
        # A preempted spot node is not the code failing: Train V2 resumes from the newest checkpoint and counts it
        # apart from max_failures. Worker-group starts are retried without a limit, so an autoscaler has the time
        # it needs to bring a node up; a request no fixed cluster can place fails first (check_resources).
        failure_config=ray.train.FailureConfig(max_failures=spec.max_failures, max_preemption_failures=spec.max_preemptions),
        checkpoint_config=checkpoint_config,
        callbacks=callbacks,
    )


def worker_resources(spec: LaunchSpec, use_gpu: bool) -> dict[str, float]:
    """What one training worker asks of a node (its placement-group bundle)."""
    return spec.resources.bundle(use_gpu, spec.cpus_per_worker)


def placement_shortfall(num_workers: int, per_worker: dict[str, float], nodes: list[dict[str, float]]) -> str | None:
    """Why `num_workers` bundles of `per_worker` can never be placed on these nodes (their total resources), or None.

    Bundles are identical, so counting how many fit on each node and adding up
    is exact: a worker never spans nodes.
    """
    fits = placement_room(per_worker, nodes)
    if fits >= num_workers:
        return None
    totals = {key: sum(node.get(key, 0.0) for node in nodes) for key in per_worker}
    short = [key for key, amount in per_worker.items()
             if totals[key] < amount * num_workers or max((n.get(key, 0.0) for n in nodes), default=0.0) < amount]
    have = ", ".join(f"{totals[key]:g} {key}" for key in per_worker)
    ask = " + ".join(f"{amount:g} {key}" for key, amount in per_worker.items())
    hint = "; drop --gpu (a study: --accelerator cpu or auto) or run on a cluster with GPUs" if "GPU" in short and totals.get("GPU", 0) == 0 else "; lower --workers"
    return (
        f"workers: {num_workers} training workers of {ask} each can never run here: the cluster has {have} "
        f"on {len(nodes)} node(s), room for {fits} such worker(s) (short of {', '.join(short) or 'room'}){hint}"
    )


def check_resources(spec: LaunchSpec, use_gpu: bool, *, fixed: bool | None = None) -> None:
    """ConfigError in seconds when no placement of the run's workers can ever exist (Ray Train would wait for it).

    Only on a cluster that cannot grow: one this process started itself
    (`runtime.cluster_is_fixed`). A joined cluster may have an autoscaler that
    adds nodes (a head with 0 CPUs, GPU groups starting at 0), and public Ray
    APIs do not say whether it does, so its requests are left to Ray.
    """
    from cxr_ray.config import ConfigError
    from cxr_ray.runtime import cluster_is_fixed

    if not (cluster_is_fixed() if fixed is None else fixed):
        return
    why = placement_shortfall(spec.num_workers, worker_resources(spec, use_gpu), live_nodes())
    if why:
        raise ConfigError(why)


def scaling_config(spec: LaunchSpec, use_gpu: bool) -> Any:
    import ray.train

    resources = worker_resources(spec, use_gpu)
    return ray.train.ScalingConfig(num_workers=spec.num_workers, use_gpu=use_gpu, resources_per_worker=resources)


def materialized(datasets: dict[str, Any]) -> dict[str, Any]:
    """Every dataset read now, before the workers take their CPUs.

    On a small cluster (2 CPUs here) the train workers would otherwise hold
    every slot and Ray Data's read tasks could never run. Tables are decoded
    pixels, read once per run; workers keep their shard on the device.
    """
    return {key: ds.materialize() for key, ds in datasets.items()}


def run_trainer(
    train_fn: Callable[[dict], None],
    config: dict[str, Any],
    spec: LaunchSpec,
    *,
    s3: S3Settings | None = None,
    datasets: dict[str, Any] | None = None,
    datasets_to_split: list[str] | None = None,
    callbacks: list[Any] | None = None,
) -> Any:
    """Run `train_fn` on `spec.num_workers` DDP workers; returns Ray Train's Result.

    The one place that hands S3 settings to workers: as `config["_s3"]`
    (`S3Settings.to_dict`), which a worker turns back with `worker_s3`.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    s3 = s3 or S3Settings.from_env()
    use_gpu = resolve_use_gpu(spec.use_gpu, spec.resources)
    check_resources(spec, use_gpu)  # before reading any data: an impossible request fails in seconds
    dataset_config = None
    if datasets:
        datasets = materialized(datasets)
        dataset_config = ray.train.DataConfig(datasets_to_split=datasets_to_split or list(datasets))
    loop_config = {
        **config,
        "_use_gpu": use_gpu,
        "_fallback_resume": newest_checkpoint_state(run_dir(spec), s3),
        "_s3": s3.to_dict(),
    }
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=loop_config,
        scaling_config=scaling_config(spec, use_gpu),
        run_config=run_config(spec, s3, callbacks),
        datasets=datasets,
        dataset_config=dataset_config,
    )
    return trainer.fit()


@contextmanager
def local_checkpoint_dir(checkpoint: Any) -> Iterator[str]:
    """A Ray Train Checkpoint (local or on S3) as a local folder."""
    with checkpoint.as_directory() as path:
        yield path


def worker_s3(config: dict[str, Any]) -> S3Settings:
    """Inside a worker: the driver's S3 settings, as `run_trainer` sent them."""
    return S3Settings.from_dict(config.get("_s3"))


def resume_state(config: dict[str, Any]) -> dict[str, Any] | None:
    """Inside a worker: the state to resume from (Ray Train's latest checkpoint, else an unregistered one)."""
    import ray.train

    from cxr_ray.checkpoint import load_state

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        return read_state(checkpoint)
    if config.get("_fallback_resume"):
        return load_state(config["_fallback_resume"], worker_s3(config))
    return None


def read_state(checkpoint: Any) -> dict[str, Any]:
    """Load a plain-data state file from a Ray Train checkpoint (weights_only)."""
    from cxr_ray.checkpoint import load_state

    with local_checkpoint_dir(checkpoint) as path:
        return load_state(os.path.join(path, STATE_FILE))


def report_epoch(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Call ray.train.report from every rank; rank 0 attaches the plain-data checkpoint."""
    import ray.train

    from cxr_ray.checkpoint import save_state

    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_state(state, os.path.join(tmp, STATE_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
