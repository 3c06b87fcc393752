"""DCGAN training throughput: the Ray Train DDP loop vs a plain single-process PyTorch loop, same run.

Both run the identical step (`cxr_ray.train.gan.train_step`: D on real and
fake, then G) on the same model, batch size per replica, precision (bf16
autocast on GPU, fp32 on CPU) and data (one class of the train split, uint8
on the device, converted per batch). The plain loop is timed before and after
the Ray run, so a change in machine load between them shows. Ray's per-epoch
rate excludes the first (warm-up) epoch; its end-to-end rate includes worker
start-up, shard loading, checkpoints and sample grids.

    .venv/bin/python benchmarks/gan_throughput.py [--data runs/gan-real/ingest-64] [--ngf 64] [--batch-size 128] [--address local]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def plain_loop(images, args) -> dict:
    """`steps` training steps in this process on all its threads; images/s after one warm-up step."""
    import torch

    from cxr_ray.models.dcgan import build_dcgan
    from cxr_ray.pixels import autocast, to_input
    from cxr_ray.train.gan import GanConfig, RealFakeDiscriminator, StepModels, make_optimizers, train_step

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as the Ray workers do
    torch.manual_seed(0)
    cfg = GanConfig(data="-", image_size=int(images.shape[-1]), nz=args.nz, ngf=args.ngf, ndf=args.ndf, lr=2e-4)
    generator, discriminator = build_dcgan(cfg.image_size, nz=cfg.nz, ngf=cfg.ngf, ndf=cfg.ndf)
    generator, discriminator = generator.to(device), discriminator.to(device)
    optimizer_g, optimizer_d = make_optimizers(cfg, generator, discriminator)
    models = StepModels(generator, RealFakeDiscriminator(discriminator), discriminator, optimizer_g, optimizer_d)
    data = torch.from_numpy(images.copy()).unsqueeze(1).to(device)
    order = torch.Generator().manual_seed(0)
    amp = lambda: autocast(device)  # noqa: E731

    def step() -> None:
        index = torch.randint(len(data), (args.batch_size,), generator=order).to(device)
        train_step(models, to_input(data[index]), None, cfg.nz, amp)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.plain_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {
        "device": device.type,
        "threads": torch.get_num_threads(),
        "steps": args.plain_steps,
        "seconds": round(seconds, 3),
        "images_per_s": round(args.plain_steps * args.batch_size / seconds, 1),
    }


def ray_loop(args, storage_root: str) -> dict:
    from cxr_ray.filenames import GAN_LOSSES_FILE
    from cxr_ray.train.gan import GanConfig, train_gan

    cfg = GanConfig(
        data=args.data, storage=storage_root, class_name=args.class_name, epochs=args.ray_epochs,
        batch_size=args.batch_size, nz=args.nz, ngf=args.ngf, ndf=args.ndf, num_workers=args.workers,
        name="gan-throughput",
    )
    summary = train_gan(cfg, log=lambda m: None)
    history = json.loads(Path(storage_root, "gan-throughput", GAN_LOSSES_FILE).read_text())["epochs"]
    steady = [e["images_per_s"] for e in history[1:]] or [history[0]["images_per_s"]]
    images = sum(e["images"] for e in history)
    return {
        "workers": args.workers,
        "use_gpu": summary["use_gpu"],
        "torch_threads_per_worker": history[-1].get("torch_threads"),
        "epochs": len(history),
        "images_per_epoch": history[-1]["images"],
        "per_epoch_images_per_s": [round(e["images_per_s"], 1) for e in history],
        "images_per_s": round(statistics.median(steady), 1),
        "fit_seconds": round(summary["fit_seconds"], 2),
        "end_to_end_images_per_s": round(images / summary["fit_seconds"], 1),
    }


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / "runs" / "gan-real" / "ingest-64"), help="ingested table")
    ap.add_argument("--class-name", default="NORMAL")
    ap.add_argument("--batch-size", type=int, default=128, help="per replica / worker")
    ap.add_argument("--nz", type=int, default=100)
    ap.add_argument("--ngf", type=int, default=64)
    ap.add_argument("--ndf", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ray-epochs", type=int, default=3)
    ap.add_argument("--plain-steps", type=int, default=8)
    ap.add_argument("--address", default=None, help="Ray address ('local' starts a fresh local Ray; default: RAY_ADDRESS or local)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gan_throughput.json"))
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args.data = os.path.abspath(args.data)

    from cxr_ray.data.datasets import TaskData, load_arrays
    from cxr_ray.data.layout import CLASS_NAMES
    from cxr_ray.runtime import init_ray

    arrays = load_arrays(TaskData(task="pneumonia", real=args.data), ["train"])
    images = arrays["image"][arrays["target"] == CLASS_NAMES.index(args.class_name)]
    t = time.perf_counter()
    ray = init_ray(args.address)
    ray_start = time.perf_counter() - t

    plain_before = plain_loop(images, args)
    with tempfile.TemporaryDirectory(prefix="cxr-gan-bench-") as tmp:
        ray_result = ray_loop(args, tmp)
    plain_after = plain_loop(images, args)

    plain_rate = statistics.mean([plain_before["images_per_s"], plain_after["images_per_s"]])
    result = {
        "machine": machine(),
        "ray_cpus": int(ray.cluster_resources().get("CPU", 0)),
        "ray_start_seconds": round(ray_start, 2),
        "model": f"DCGAN {images.shape[-1]} px, nz={args.nz} ngf={args.ngf} ndf={args.ndf}",
        "batch_size_per_replica": args.batch_size,
        "precision": "bf16 autocast" if plain_before["device"] == "cuda" else "fp32",
        "train_images": int(len(images)),
        "plain_before": plain_before,
        "plain_after": plain_after,
        "ray": ray_result,
        "ray_over_plain": round(ray_result["images_per_s"] / plain_rate, 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
