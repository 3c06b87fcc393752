"""Training throughput: the Ray Train loop vs a plain single-process PyTorch loop, same run.

Same model, data (the ingested train split, uint8 on the device), batch
size, augmentation, optimizer and precision (bf16 autocast + channels_last on
GPU, fp32 on CPU). The Ray number is the per-epoch training rate reported by
the workers in the last epoch (Ray's start-up, validation and checkpointing
are reported separately as wall time); the plain number is the same steps
timed in this process after one warm-up epoch.

    .venv/bin/python benchmarks/train_throughput.py [--data runs/bench/real-64] [--model cnn] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def plain_loop(images, targets, model_name: str, batch_size: int, epochs: int, threads: int, device) -> dict:
    import torch
    import torch.nn.functional as F

    from cxr_ray.models import create_model
    from cxr_ray.pixels import autocast, to_input
    from cxr_ray.train import loop

    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as the Ray workers do
    gen = loop.seed_everything(0)
    channels_last = device.type == "cuda"
    x_all = torch.from_numpy(images).unsqueeze(1).to(device)
    y_all = torch.from_numpy(targets).to(device)
    model = create_model(model_name, num_classes=2, image_size=images.shape[-1]).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    n = len(x_all)
    steps = n // batch_size
    rates = []
    for _ in range(epochs):
        model.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for idx in loop.batches(n, batch_size, steps, gen):
            idx = idx.to(device)
            x = loop.augment(to_input(x_all[idx], channels_last), 0.5, gen)
            with autocast(device):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(steps * batch_size / (time.perf_counter() - t0))
    return {"images_per_s": rates[-1], "epochs": rates}


def ray_loop(data: str, model_name: str, batch_size: int, epochs: int, workers: int, cpus_per_worker: float, storage: str) -> dict:
    from cxr_ray.train.classifier import ClassifierConfig, launch_classifier
    from cxr_ray.train.launch import read_state

    cfg = ClassifierConfig(
        data=data, model=model_name, epochs=epochs, batch_size=batch_size, num_workers=workers, storage=storage,
        name=f"bench-{model_name}-{workers}w-{time.time_ns()}", cpus_per_worker=cpus_per_worker, max_failures=0,
    )
    t0 = time.perf_counter()
    result = launch_classifier(cfg)
    wall = time.perf_counter() - t0
    history = read_state(result.checkpoint)["history"]
    return {
        "images_per_s": history[-1]["train_images_per_s"],
        "epochs": [h["train_images_per_s"] for h in history],
        "fit_wall_seconds": wall,
        "epoch_seconds": [h["epoch_seconds"] for h in history],
    }


def resampled_table(src: str, size: int) -> str:
    """A copy of an ingested table with every image resized to `size` px (bilinear), for timing only.

    Lets the 64 px ingest that travels to a GPU machine stand in for a
    128/224 px one: the pixels differ, the work per step does not.
    """
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F

    from cxr_ray import storage
    from cxr_ray.data import schema
    from cxr_ray.data.datasets import images_from_column, images_uri

    dest = f"{src.rstrip('/')}-resampled-{size}"
    if storage.is_complete(dest):
        return dest
    table = pq.read_table(images_uri(src), schema=schema.IMAGE_SCHEMA)
    images = torch.from_numpy(images_from_column(table).copy()).unsqueeze(1).float()
    resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    pixels = resized.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    table = (
        table.set_column(table.schema.get_field_index("image"), schema.IMAGE_SCHEMA.field("image"),
                         pa.array([row.tobytes() for row in pixels], pa.binary()))
        .set_column(table.schema.get_field_index("height"), schema.IMAGE_SCHEMA.field("height"),
                    pa.array(np.full(len(pixels), size, np.int32)))
        .set_column(table.schema.get_field_index("width"), schema.IMAGE_SCHEMA.field("width"),
                    pa.array(np.full(len(pixels), size, np.int32)))
    )
    Path(dest, schema.IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, Path(dest, schema.IMAGES_DIR, "part-0.parquet"))
    summary = json.loads(Path(src, schema.SUMMARY_FILE).read_text())
    summary.update(resolution=size, resampled_from=src)
    Path(dest, schema.SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    Path(dest, storage.SUCCESS_MARKER).write_text("")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO / "runs" / "bench" / "real-64"))
    ap.add_argument("--src", default=str(REPO.parent / "shared" / "data" / "chest_xray"))
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=None,
                    help="resample the ingested images to this size first (timing only; default: as ingested)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_throughput.json"))
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import torch

    from cxr_ray import storage
    from cxr_ray.config import IngestConfig
    from cxr_ray.data.datasets import TaskData, load_arrays
    from cxr_ray.data.ingest import run_ingest
    from cxr_ray.runtime import init_ray

    ray = init_ray()
    if not storage.is_complete(args.data):
        run_ingest(IngestConfig(src=args.src, dest=args.data, overwrite=True), log=lambda m: None)
    if args.resolution:
        args.data = resampled_table(args.data, args.resolution)
    arrays = load_arrays(TaskData("pneumonia", real=args.data), ["train"])
    cpus = int(ray.cluster_resources()["CPU"])
    gpus = int(ray.cluster_resources().get("GPU", 0))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs_root = str(REPO / "runs" / "bench" / "train")

    results: dict = {
        "machine": f"{platform.node()}, {os.cpu_count()} CPU cores, {torch.cuda.get_device_name() if gpus else 'no GPU'}",
        "model": args.model,
        "batch_size_per_worker": args.batch_size,
        "train_images": int(len(arrays["image"])),
        "resolution": int(arrays["image"].shape[-1]),
        "precision": "bf16 autocast + channels_last" if device.type == "cuda" else "fp32",
    }
    if gpus:
        plain = plain_loop(arrays["image"], arrays["target"], args.model, args.batch_size, args.epochs + 1, 1, device)
        ray1 = ray_loop(args.data, args.model, args.batch_size, args.epochs, 1, 1, runs_root)
        results["plain_1gpu"], results["ray_1worker_1gpu"] = plain, ray1
        results["ray_over_plain"] = ray1["images_per_s"] / plain["images_per_s"]
    else:
        plain = plain_loop(arrays["image"], arrays["target"], args.model, args.batch_size, args.epochs + 1, cpus, device)
        results[f"plain_{cpus}threads"] = plain
        ray1 = ray_loop(args.data, args.model, args.batch_size, args.epochs, 1, cpus, runs_root)
        results[f"ray_1worker_{cpus}cpus"] = ray1
        ray2 = ray_loop(args.data, args.model, args.batch_size, args.epochs, 2, max(1, cpus // 2), runs_root)
        results[f"ray_2workers_ddp"] = ray2
        results["ray_1worker_over_plain"] = ray1["images_per_s"] / plain["images_per_s"]
        results["ray_2workers_over_plain"] = ray2["images_per_s"] / plain["images_per_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
