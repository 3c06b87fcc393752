"""Ingest throughput: Ray Data pipeline vs a plain single-process PIL loop, same run.

Both do the same work on the same files: read bytes, sha256, decode to
grayscale, resize, write one Parquet table. Ray's start-up is timed apart
(a cluster is started once per job, not per stage).

    .venv/bin/python benchmarks/ingest.py [--src ../shared/data/chest_xray] [--resolution 64] [--repeats 5]

Best and median are both reported; the Ray median leaves out the first
repeat, which pays the workers' first imports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]


def plain_loop(src: Path, dest: Path, resolution: int) -> int:
    from cxr_ray.data.decode import DecodeError, decode_to_gray

    images, shas, paths = [], [], []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        blob = path.read_bytes()
        shas.append(hashlib.sha256(blob).hexdigest())
        try:
            images.append(decode_to_gray(blob, resolution).tobytes())
        except DecodeError:
            images.append(b"")
        paths.append(str(path))
    dest.mkdir(parents=True)
    pq.write_table(pa.table({"image": images, "sha256": shas, "path": paths}), dest / "images.parquet")
    return len(paths)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=str(REPO.parent / "shared" / "data" / "chest_xray"))
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ingest.json"))
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from cxr_ray.config import IngestConfig
    from cxr_ray.data.ingest import run_ingest
    from cxr_ray.runtime import init_ray

    work = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    src = Path(args.src)
    cpus = os.cpu_count() or 1
    t = time.perf_counter()
    ray = init_ray()
    ray_start = time.perf_counter() - t
    ray_cpus = int(ray.cluster_resources()["CPU"])

    plain_times, ray_times, ray_decode = [], [], []
    n = 0
    for i in range(args.repeats):
        t = time.perf_counter()
        n = plain_loop(src, work / f"plain-{i}", args.resolution)
        plain_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        summary = run_ingest(IngestConfig(src=str(src), dest=str(work / f"ray-{i}"), resolution=args.resolution), log=lambda m: None)
        ray_times.append(time.perf_counter() - t)
        ray_decode.append(summary["decode_seconds"])
    shutil.rmtree(work)

    plain_rate = n / min(plain_times)
    ray_rate = n / min(ray_times)
    warm_ray = ray_times[1:] or ray_times  # the first Ray repeat starts the workers' imports
    median_ratio = ray_cpus * statistics.median(warm_ray) / statistics.median(plain_times)
    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {cpus} cores",
        "images": n,
        "resolution": args.resolution,
        "ray_cpus": ray_cpus,
        "ray_start_seconds": round(ray_start, 2),
        "plain_seconds_best": round(min(plain_times), 3),
        "ray_seconds_best": round(min(ray_times), 3),
        "plain_images_per_s": round(plain_rate, 1),
        "ray_images_per_s": round(ray_rate, 1),
        "ray_images_per_s_per_cpu": round(ray_rate / ray_cpus, 1),
        "plain_per_core_over_ray_per_core": round(plain_rate / (ray_rate / ray_cpus), 3),
        "ray_decode_stage_images_per_s": round(n / min(ray_decode), 1),
        "median_plain_per_core_over_ray_per_core": round(median_ratio, 3),
        "plain_seconds_all": [round(t, 3) for t in plain_times],
        "ray_seconds_all": [round(t, 3) for t in ray_times],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
