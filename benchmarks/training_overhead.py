"""One small training's fixed cost: the study's path (`train_classifier`: Ray Train, then the one test evaluation)
against the same work done in one plain process, in the same run.

The plain side reads the same tables, trains the same model for the same
epochs with the same loop helpers, and scores val and test; what the Ray side
takes beyond it is the fixed cost a study pays once per training (issue 18).
Each Ray training gets a fresh run name, so nothing is re-used.

    .venv/bin/python benchmarks/training_overhead.py --data runs/study/data/real-64 [--model cnn] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def plain_training(data: str, model_name: str, epochs: int, batch_size: int) -> dict:
    """Read, train and score in this process: the work without any framework around it."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from cxr_ray.data.datasets import TaskData, load_arrays
    from cxr_ray.metrics import summarize
    from cxr_ray.models import create_model
    from cxr_ray.pixels import to_input
    from cxr_ray.train import loop

    t0 = time.perf_counter()
    arrays = {split: load_arrays(TaskData("pneumonia", real=data), [split], columns=("patient_id",))
              for split in ("train", "val", "test")}
    t_read = time.perf_counter() - t0
    gen = loop.seed_everything(0)
    x = torch.from_numpy(arrays["train"]["image"].copy()).unsqueeze(1)
    y = torch.from_numpy(arrays["train"]["target"])
    model = create_model(model_name, num_classes=2, image_size=x.shape[-1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = max(1, len(x) // batch_size)
    t1 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in loop.batches(len(x), batch_size, steps, gen):
            loss = F.cross_entropy(model(loop.augment(to_input(x[idx], False), 0.5, gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    t_train = time.perf_counter() - t1
    model.eval()
    with torch.no_grad():
        for split in ("val", "test"):
            images = to_input(torch.from_numpy(arrays[split]["image"].copy()).unsqueeze(1), False)
            score = torch.softmax(model(images), 1)[:, 1].numpy()
    summarize(arrays["test"]["target"], score, 0.5, n_boot=200, seed=0, groups=np.asarray(arrays["test"]["patient_id"]))
    return {"read_s": t_read, "train_s": t_train, "total_s": time.perf_counter() - t0}


def ray_training(data: str, model_name: str, epochs: int, batch_size: int, storage: str, workers: int) -> dict:
    """`train_classifier` as the study calls it, under a fresh name."""
    from cxr_ray.train.classifier import ClassifierConfig, train_classifier

    cfg = ClassifierConfig(data=data, model=model_name, epochs=epochs, batch_size=batch_size, num_workers=workers,
                           storage=storage, name=f"overhead-{model_name}-{time.time_ns()}", max_failures=0,
                           n_boot=200)
    t0 = time.perf_counter()
    out = train_classifier(cfg, log=lambda m: None)
    total = time.perf_counter() - t0
    return {"total_s": total, "fit_s": out["train_seconds"], "after_fit_s": total - out["train_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO / "runs" / "study" / "data" / "real-64"))
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "training_overhead.json"))
    args = ap.parse_args()

    from cxr_ray.runtime import init_ray

    init_ray()
    storage = str(REPO / "runs" / "bench" / "overhead")
    plain = [plain_training(args.data, args.model, args.epochs, args.batch_size) for _ in range(args.repeats)]
    ray_runs = [ray_training(args.data, args.model, args.epochs, args.batch_size, storage, args.workers)
                for _ in range(args.repeats)]
    median = {key: statistics.median(r[key] for r in ray_runs) for key in ray_runs[0]}
    results = {
        "machine": f"{platform.node()}, {os.cpu_count()} CPU cores",
        "data": args.data, "model": args.model, "epochs": args.epochs, "workers": args.workers,
        "plain": plain, "ray": ray_runs,
        "plain_median_s": statistics.median(p["total_s"] for p in plain),
        "ray_median_s": median,
    }
    results["fixed_cost_s"] = median["total_s"] - results["plain_median_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("plain_median_s", "ray_median_s", "fixed_cost_s")}, indent=2))


if __name__ == "__main__":
    main()
