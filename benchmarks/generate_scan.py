"""Fake generation and scan throughput: Ray Data pipelines vs plain single-process loops, same run.

Generation: the DCGAN at its study size (ngf=64, 64 px, untrained: the cost of
a forward pass does not depend on the weights) makes --n + --n-test fakes per
class, written as one Parquet table. The plain loop calls the same
`images_from_seeds` and `fake_rows` in this process.

Scan: the compact CNN detector (untrained, same cost) scores every file under
--src; the plain loop reads, decodes with the same `decode_file`, scores with
`predict_proba` in batches of 256 and writes a CSV.

Ray's start-up is timed apart (a cluster is started once, not per command);
the Ray timings include job planning, actor start-up and writing the outputs.

    .venv/bin/python benchmarks/generate_scan.py [--src ../shared/data/chest_xray] [--n 500] [--n-test 500] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_generators(root: Path) -> tuple[str, ...]:
    import torch

    from cxr_ray.checkpoint import save_state
    from cxr_ray.filenames import STATE_FILE
    from cxr_ray.gan_state import build_gan_state
    from cxr_ray.models.dcgan import build_dcgan
    from cxr_ray.train.gan import GanConfig

    runs = []
    for seed, class_name in enumerate(("NORMAL", "PNEUMONIA")):
        name = f"bench-dcgan-{class_name.lower()}"
        cfg = GanConfig(data="unused", class_name=class_name, image_size=64, name=name)
        torch.manual_seed(seed)
        generator, discriminator = build_dcgan(64, nz=cfg.nz, ngf=cfg.ngf, ndf=cfg.ndf)
        save_state(build_gan_state(cfg, 0, generator, discriminator, None, None, []), str(root / name / "checkpoint_0" / STATE_FILE))
        runs.append(str(root / name))
    return tuple(runs)


def make_detector(root: Path, model_name: str = "cnn") -> str:
    from cxr_ray.checkpoint import model_state, save_state
    from cxr_ray.classifier_state import build_classifier_state
    from cxr_ray.filenames import STATE_FILE
    from cxr_ray.models import create_model

    kwargs = {"num_classes": 2, "in_channels": 1, "image_size": 64}
    model = create_model(model_name, **kwargs)
    state = build_classifier_state(
        config={}, task="deepfake", model_name=model_name, model_kwargs=kwargs, model_state=model_state(model),
        optimizer_state=None, scheduler_state=None, epoch=0, val_metrics={}, threshold=0.5, history=[],
    )
    folder = root / f"bench-detector-{model_name}"
    save_state(state, str(folder / STATE_FILE))
    return str(folder)


def plain_generate(generators: tuple[str, ...], cfg, dest: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cxr_ray.data import schema
    from cxr_ray.data.layout import CLASS_NAMES
    from cxr_ray.generate import fake_rows, images_from_seeds, load_generator

    columns: dict[str, list] = {name: [] for name in schema.IMAGE_SCHEMA.names}
    for uri in generators:
        generator, spec = load_generator(uri)
        spec_dict = {"run": spec.run, "conditional": spec.conditional}
        class_name = spec.classes[0]
        for split, (start, end) in cfg.split_ranges().items():
            for chunk in range(start, end, 64):
                seeds = list(range(chunk, min(chunk + 64, end)))
                items = [{"seed": s, "split": split, "class_name": class_name, "label": CLASS_NAMES.index(class_name)} for s in seeds]
                for key, values in fake_rows(spec_dict, items, images_from_seeds(generator, seeds, None)).items():
                    columns[key].extend(values)
    dest.mkdir(parents=True)
    pq.write_table(pa.table(columns, schema=schema.IMAGE_SCHEMA), dest / "images.parquet")
    return len(columns["image"])


def plain_scan(src: Path, detector_dir: str, dest: Path) -> int:
    import csv

    import numpy as np

    from cxr_ray.classifier_state import load_classifier_state
    from cxr_ray.data.decode import DecodeError
    from cxr_ray.filenames import STATE_FILE
    from cxr_ray.inference import build_model, predict_proba
    from cxr_ray.scan import decode_file

    state = load_classifier_state(os.path.join(detector_dir, STATE_FILE))
    model, size = build_model(state), int(state["model_kwargs"]["image_size"])
    paths = sorted(str(p) for p in src.rglob("*") if p.is_file())
    rows = []
    for start in range(0, len(paths), 256):
        images, good = [], []
        for path in paths[start : start + 256]:
            try:
                images.append(decode_file(path, Path(path).read_bytes(), size))
                good.append(path)
            except DecodeError as exc:
                rows.append((path, "", "unreadable", str(exc)))
        if images:
            scores = predict_proba(model, np.stack(images))
            rows.extend((p, f"{s:.6f}", "fake" if s >= state["threshold"] else "real", "") for p, s in zip(good, scores))
    dest.mkdir(parents=True)
    with open(dest / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows(sorted(rows))
    return len(paths)


def timed(fn, *args) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn(*args)
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=str(REPO.parent / "shared" / "data" / "chest_xray"), help="folder to scan")
    ap.add_argument("--n", type=int, default=500, help="train+val fakes per class")
    ap.add_argument("--n-test", type=int, default=500, help="held-out fakes per class")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "generate_scan.json"))
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import torch

    from cxr_ray.generate import GenerateConfig, run_generate
    from cxr_ray.runtime import init_ray
    from cxr_ray.scan import ScanConfig, run_scan

    work = Path(tempfile.mkdtemp(prefix="cxr-bench-gen-"))
    generators, detector = make_generators(work), make_detector(work)
    load_before = os.getloadavg()
    t = time.perf_counter()
    import ray

    # address "local": a fresh local Ray, never another user's cluster that ray.init()
    # would otherwise find through /tmp/ray/ray_current_cluster on a shared machine.
    ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False, logging_level="WARNING")
    init_ray()  # the project's Ray Data defaults
    ray_start = time.perf_counter() - t
    ray_cpus = int(ray.cluster_resources()["CPU"])

    times: dict[str, list[float]] = {"plain_generate": [], "ray_generate": [], "plain_scan": [], "ray_scan": []}
    n_fakes = n_files = 0
    for i in range(args.repeats):
        cfg = GenerateConfig(generators=generators, dest=str(work / f"ray-fakes-{i}"), train_seeds=(0, args.n), test_seeds=(1_000_000, 1_000_000 + args.n_test))
        seconds, n_fakes = timed(plain_generate, generators, cfg, work / f"plain-fakes-{i}")
        times["plain_generate"].append(seconds)
        seconds, _ = timed(lambda: run_generate(cfg, log=lambda m: None)["rows"])
        times["ray_generate"].append(seconds)
        seconds, n_files = timed(plain_scan, Path(args.src), detector, work / f"plain-scan-{i}")
        times["plain_scan"].append(seconds)
        scan_cfg = ScanConfig(src=args.src, detector=detector, out=str(work / f"ray-scan-{i}"), progress=False)
        seconds, _ = timed(lambda: run_scan(scan_cfg, log=lambda m: None)["scanned"])
        times["ray_scan"].append(seconds)
    shutil.rmtree(work)

    best = {k: min(v) for k, v in times.items()}
    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_before": [round(x, 1) for x in load_before],
        "load_average_after": [round(x, 1) for x in os.getloadavg()],
        "torch_threads_plain": torch.get_num_threads(),
        "ray_cpus": ray_cpus,
        "ray_start_seconds": round(ray_start, 2),
        "repeats": args.repeats,
        "fakes": n_fakes,
        "generator": "DCGAN ngf=64, 64 px",
        "scan_files": n_files,
        "scan_src": args.src,
        "detector": "cnn, 64 px",
        **{f"{k}_seconds_best": round(v, 3) for k, v in best.items()},
        "plain_generate_images_per_s": round(n_fakes / best["plain_generate"], 1),
        "ray_generate_images_per_s": round(n_fakes / best["ray_generate"], 1),
        "plain_scan_images_per_s": round(n_files / best["plain_scan"], 1),
        "ray_scan_images_per_s": round(n_files / best["ray_scan"], 1),
        "all_seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
