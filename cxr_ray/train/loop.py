"""Helpers shared by every per-worker training function (classifiers, detectors, GANs).

Data path: a worker reads its Ray Data shard of uint8 pixels once, keeps it
as one uint8 tensor on its device, and from then on only indexes, converts
(`cxr_ray.pixels.to_input`) and augments on the device. Pixels are decoded once, at ingest, never per
epoch, and the host-to-device copy happens once per run.
"""

from __future__ import annotations

import math
import os
import random
import time
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cxr_ray.data.datasets import batch_to_arrays
from cxr_ray.upsamplers import ALL_UPSAMPLERS, LEARNT_MODES, RESAMPLE_MODES  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from cxr_ray.data.archive import ArchiveFormat


def world() -> tuple[int, int]:
    """(rank, world size) inside a Ray Train worker; (0, 1) elsewhere."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_everything(seed: int, rank: int = 0) -> torch.Generator:
    """Seed python, numpy and torch; a per-rank generator keeps shards' randomness distinct."""
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)
    gen = torch.Generator()
    gen.manual_seed(seed * 1000 + rank)
    return gen


def device_for_worker(use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        import ray.train.torch

        # Fixed-size batches: let cuDNN time its conv algorithms once and keep the fastest.
        torch.backends.cudnn.benchmark = True
        return ray.train.torch.get_device()
    return torch.device("cpu")


def load_shard(name: str, device: torch.device, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's Ray Data shard as (N, 1, H, W) uint8 and (N,) int64 tensors on `device`."""
    import ray.train

    shard = ray.train.get_dataset_shard(name)
    images, targets = [], []
    for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
        x, y = batch_to_arrays(batch)
        if len(x):
            images.append(x)
            targets.append(y)
    if not images:
        return torch.zeros((0, 1, 1, 1), dtype=torch.uint8, device=device), torch.zeros(0, dtype=torch.int64, device=device)
    x = torch.from_numpy(np.concatenate(images)).unsqueeze(1)
    y = torch.from_numpy(np.concatenate(targets))
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def agree_on_count(n_local: int, device: torch.device, op: str = "min") -> int:
    """The same number across workers (DDP needs equal step counts, or it hangs)."""
    if not (dist.is_available() and dist.is_initialized()):
        return n_local
    t = torch.tensor([n_local], dtype=torch.int64, device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
    return int(t.item())


def global_class_counts(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class counts over every worker's shard (for loss weights)."""
    counts = torch.bincount(targets.cpu(), minlength=num_classes).to(torch.float64)
    if dist.is_available() and dist.is_initialized():
        on = counts.to(targets.device) if dist.get_backend() == "nccl" else counts
        dist.all_reduce(on)
        counts = on.cpu()
    return counts


def augment(x: torch.Tensor, strength: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Random small affine (rotate/scale/shift) plus brightness/contrast jitter, batched on the device.

    Mild by design: X-rays are positioned consistently, and flips would move
    the heart to the wrong side. `strength` in [0, 1] scales every magnitude.
    """
    if strength <= 0:
        return x
    n = x.shape[0]
    dev = x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(n, generator=gen) * (hi - lo) + lo).to(dev)

    angle = uniform(-10.0, 10.0) * strength * math.pi / 180.0
    scale = 1.0 + uniform(-0.1, 0.1) * strength
    tx, ty = uniform(-0.06, 0.06) * strength, uniform(-0.06, 0.06) * strength
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = (1.0 + uniform(-0.2, 0.2) * strength).view(n, 1, 1, 1).to(x.dtype)
    brightness = (uniform(-0.1, 0.1) * strength).view(n, 1, 1, 1).to(x.dtype)
    return (out * contrast + brightness).clamp_(-1.0, 1.0)


# The learnt upsamplers (cxr_ray.upsamplers.LEARNT_MODES): each synthetic fake draws its own random kernel,
# normalised so that every output phase keeps the image's brightness up to a few percent: the uneven phases
# are the checkerboard such layers leave (Odena et al. 2016), not any one trained generator's kernel.
PHASE_GAIN = 0.05  # each output phase's gain is drawn from 1 +- this


def _phase_gains(n: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 2, 2) gains, one per output phase of a 2x upsampling."""
    return 1 + (torch.rand(n, 2, 2, generator=gen) * 2 - 1) * PHASE_GAIN


def learnt_upsample(small: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    """(n, 1, h, w) float -> (n, 1, 2h, 2w) through `mode` (LEARNT_MODES) with a random kernel per image."""
    n, _, h, w = small.shape
    gains = _phase_gains(n, gen)
    if mode == "transposed":
        kernel = torch.rand(n, 4, 4, generator=gen) + 0.1
        for a in (0, 1):
            for b in (0, 1):
                # Output phase (a, b) of a stride-2, padding-1 4x4 transposed conv sums the taps [1-a::2, 1-b::2].
                taps = kernel[:, 1 - a :: 2, 1 - b :: 2]
                kernel[:, 1 - a :: 2, 1 - b :: 2] = taps / taps.sum(dim=(1, 2), keepdim=True) * gains[:, a, b, None, None]
        weight = kernel.unsqueeze(1).to(small)  # (n, 1, 4, 4): one group per image
        # Edges replicated, then cropped: the zero padding would darken the border, a cue of its own.
        padded = F.pad(small.reshape(1, n, h, w), (1, 1, 1, 1), mode="replicate")
        out = F.conv_transpose2d(padded, weight, stride=2, padding=1, groups=n)[:, :, 2:-2, 2:-2]
        return out.reshape(n, 1, 2 * h, 2 * w)
    if mode == "pixel_shuffle":
        kernel = torch.rand(n, 4, 3, 3, generator=gen) + 0.1
        kernel = kernel / kernel.sum(dim=(2, 3), keepdim=True) * gains.reshape(n, 4, 1, 1)
        weight = kernel.reshape(4 * n, 1, 3, 3).to(small)
        padded = F.pad(small.reshape(1, n, h, w), (1, 1, 1, 1), mode="replicate")
        out = F.conv2d(padded, weight, groups=n).reshape(n, 4, h, w)
        return F.pixel_shuffle(out, 2)
    raise ValueError(f"unknown learnt upsampler {mode!r}; known: {', '.join(LEARNT_MODES)}")


def resampled_fakes(
    x: torch.Tensor, y: torch.Tensor, probability: float, gen: torch.Generator, modes: tuple[str, ...] = RESAMPLE_MODES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real images (target 0) that, each with `probability`, are halved (2x2 mean) and upsampled back with a
    random upsampler, then labelled fake (1). uint8 (N, 1, H, W) in and out.

    Every generator family makes its image by upsampling, and that leaves traces in neighbouring pixels
    (Tan et al. 2024, NPR); real X-rays stored this way carry them without any one generator's other
    habits, so a detector learns the trace rather than one family. `modes`: the upsamplers drawn from
    (a subset of ALL_UPSAMPLERS: interpolations and learnt-kernel layers). Draws come from `gen` (CPU).
    """
    if probability <= 0 or len(x) == 0 or not modes:
        return x, y
    chosen = (torch.rand(len(x), generator=gen) < probability).to(x.device) & (y == 0)
    drawn = torch.randint(len(modes), (len(x),), generator=gen).to(x.device)
    if not bool(chosen.any()):
        return x, y
    out = x.clone()
    small = F.avg_pool2d(x.float(), 2)
    for index, mode in enumerate(modes):
        pick = chosen & (drawn == index)
        if bool(pick.any()):
            if mode in LEARNT_MODES:
                up = learnt_upsample(small[pick], mode, gen)
            else:
                options = {} if mode == "nearest" else {"align_corners": False}
                up = F.interpolate(small[pick], size=tuple(x.shape[-2:]), mode=mode, **options)
            out[pick] = up.round().clamp(0, 255).to(torch.uint8)
    return out, torch.where(chosen, torch.ones_like(y), y)


def stored_as_archive(x: torch.Tensor, which: torch.Tensor, fmt: ArchiveFormat) -> torch.Tensor:
    """`x` (uint8 (N, 1, H, W)) with the images `which` selects stored in the archive's format and decoded by
    ingest's path, at the same size (cxr_ray.data.archive.to_archive_pixels). Encoding needs the host: those
    images make one round trip through host memory."""
    from cxr_ray.data.archive import to_archive_pixels

    if not bool(which.any()):
        return x
    out = x.clone()
    stored = to_archive_pixels(x[which][:, 0].cpu().numpy(), fmt, int(x.shape[-1]))
    out[which] = torch.from_numpy(stored).unsqueeze(1).to(x.device)
    return out


def robust_augment(x: torch.Tensor, probability: float, seed: int) -> torch.Tensor:
    """Blur/JPEG robustness augmentation of a uint8 (N, 1, H, W) batch, before `pixels.to_input`.

    Each image, with `probability`, gets a random Gaussian blur or a JPEG round
    trip (`cxr_ray.perturb.random_blur_jpeg`: the ranges the robustness
    evaluation probes). JPEG needs the host, so the batch makes one round trip
    through host memory; `seed` should change per epoch and rank.
    """
    from cxr_ray.perturb import random_blur_jpeg

    if probability <= 0 or len(x) == 0:
        return x
    images = x[:, 0].cpu().numpy()
    augmented, _ = random_blur_jpeg(images, probability, seed)
    return torch.from_numpy(augmented).unsqueeze(1).to(x.device, non_blocking=True)


def window_level_augment(x: torch.Tensor, probability: float, seed: int) -> torch.Tensor:
    """Window/level augmentation of a uint8 (N, 1, H, W) batch (`cxr_ray.perturb.random_window_level`)."""
    from cxr_ray.perturb import random_window_level

    if probability <= 0 or len(x) == 0:
        return x
    augmented, _ = random_window_level(x[:, 0].cpu().numpy(), probability, seed)
    return torch.from_numpy(augmented).unsqueeze(1).to(x.device, non_blocking=True)


def batches(n: int, batch_size: int, steps: int, gen: torch.Generator, shuffle: bool = True) -> Iterator[torch.Tensor]:
    """`steps` index batches over n items (a fresh permutation per epoch), CPU int64."""
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for i in range(steps):
        yield order[i * batch_size : (i + 1) * batch_size]


def maybe_inject_failure(config: dict[str, Any], epoch: int, rank: int) -> None:
    """Test hook for fault tolerance: kill this worker process once at a given epoch.

    `config["inject_failure"] = {"epoch": E, "rank": R, "marker": PATH}`: the
    marker file makes it happen once, so the restarted run proceeds.
    """
    spec = config.get("inject_failure")
    if not spec or epoch != spec["epoch"] or rank != spec.get("rank", 0):
        return
    marker = spec["marker"]
    if os.path.exists(marker):
        return
    # Ray Train V2 collects reports by polling the workers; dying sooner after
    # a report would lose that checkpoint's registration. A real crash comes
    # mid-epoch, so wait until the last report has surely been collected.
    time.sleep(2.5 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")))
    with open(marker, "w") as f:
        f.write(f"failed at epoch {epoch} on rank {rank}\n")
    os._exit(1)
