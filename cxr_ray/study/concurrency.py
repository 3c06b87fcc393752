"""Independent trainings side by side: how many fit on the cluster, running them, and when each ran."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class Timeline:
    """Start/end of every training, for the report's timeline and the speed-up figure."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def run(self, stage: str, name: str, fn: Callable[[], Any]) -> Any:
        start = time.time()
        try:
            return fn()
        finally:
            with self._lock:
                self.rows.append({"stage": stage, "name": name, "start": start, "end": time.time()})


def parallel(jobs: list[tuple[str, Callable[[], Any]]], max_parallel: int) -> dict[str, Any]:
    """Run independent jobs (each a blocking TorchTrainer.fit or Ray Data job) side by side."""
    if max_parallel <= 1:
        return {name: fn() for name, fn in jobs}
    with ThreadPoolExecutor(max_workers=max_parallel) as pool:
        futures = {name: pool.submit(fn) for name, fn in jobs}
        return {name: f.result() for name, f in futures.items()}


def slots(ray: Any, workers_per_job: int, declared: dict | None = None) -> int:
    """How many trainings run at once: with declared resources, the pool's maximum (on a local cluster, no more than
    fit on it); "auto": as many as fit now (GPUs if any, else CPUs)."""
    from cxr_ray.resources import of
    from cxr_ray.runtime import cluster_is_fixed
    from cxr_ray.resources import live_nodes, placement_room, resolve_use_gpu

    res_declared = of(declared)
    if res_declared.declared:
        most = res_declared.max_actors or res_declared.min_actors
        if not cluster_is_fixed():
            return most
        worker = res_declared.bundle(resolve_use_gpu(None, res_declared), 1.0)
        return max(1, min(most, placement_room(worker, live_nodes()) // workers_per_job))
    res = ray.cluster_resources()
    if res.get("GPU", 0) >= 1:
        return max(1, int(res["GPU"] // workers_per_job))
    return max(1, int(res.get("CPU", 1) // workers_per_job))


def cpu_share(ray: Any, workers_per_job: int, width: int) -> float | None:
    """CPUs per training worker when `width` trainings share a CPU-only cluster; None on GPUs or alone.

    See `launch.cpus_per_worker`: one CPU stays free for the Ray Data tasks
    that load each new training's shard.
    """
    from cxr_ray.train.launch import cpus_per_worker

    if ray.cluster_resources().get("GPU", 0) >= 1 or width <= 1:
        return None
    return cpus_per_worker(workers_per_job, concurrent=width)
