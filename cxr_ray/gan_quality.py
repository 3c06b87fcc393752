"""Offline GAN quality: Fréchet distance and KID in the feature space of a chest X-ray encoder.

Standard FID needs Inception weights (not downloadable here) and a 2048-d
covariance, which is rank-deficient with fewer than 2,048 images (this
dataset's per-class test sets have 231 and 387). The default embedding is
therefore a small encoder trained for the purpose: the registry's `cnn`,
narrowed to widths 8-16-32-64, trained for a few epochs on the real *train*
split to tell NORMAL from PNEUMONIA. Its features are the global-pooled
outputs of the stem and of every stage (8+8+16+32+64 = 128-d, below the
smallest per-class test set): the last stage alone keeps only what separates
the two classes, and could not tell a trained PNEUMONIA generator from an
untrained one. The encoder is cached as a plain-data checkpoint with the
classifier trainer's keys (`model_name`, `model_kwargs`, `model_state`), so a
classifier checkpoint can be passed instead (a `cnn` one gives its stage
features; other architectures the input of their last Linear layer).

Both metrics compare real reference images (the test split by default) with
fakes that pass through the pipeline reals do: generator output -> uint8 ->
`to_input`. Every comparison uses the same number of images on both sides,
so the finite-sample bias of the Fréchet distance is the same in every row
but the first:

* two disjoint halves of the reference -- the sampling floor (half the n, so
  its FD carries more small-sample bias; KID is unbiased at any n);
* real train vs real reference -- what a perfect copy of the GAN's training
  distribution would score; above the floor when train and reference differ
  (Kaggle's test split does: see docs/results-gan.md);
* trained generator vs real reference;
* untrained generator (same architecture, DCGAN init) -- the ceiling.

KID (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel
k(x, y) = (x·y/d + 1)³, averaged over random subsets; unbiased, so it is the
better number at these sample sizes. With `inception_weights` (a torchvision
inception_v3 state dict) the standard 2048-d FID/KID are added: images resized
to 299, repeated to 3 channels, ImageNet-normalised. Those are torchvision's
ImageNet weights, not the TF-FID weights of published FIDs, and rank-deficient
below 2,048 images: comparable between rows, not to the literature.
"""

from __future__ import annotations

import os
import posixpath
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from cxr_ray import storage
from cxr_ray.checkpoint import load_state, model_state, save_state
from cxr_ray.config import ConfigError
from cxr_ray.data.layout import CLASS_NAMES
from cxr_ray.gan_state import generator_from_state, load_gan_state
import cxr_ray.models  # noqa: F401,E402  (registers every architecture for create_model)
from cxr_ray.pixels import to_input, to_uint8
from cxr_ray.storage import S3Settings

ENCODER_WIDTHS = (8, 16, 32, 64)  # feature dim 8 + 8+16+32+64 = 128
ENCODER_EPOCHS = 6
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100
INCEPTION_SIZE = 299
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- the two distances


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance in float64."""
    x = np.asarray(features, dtype=np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_from_stats(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||² + tr(C1) + tr(C2) - 2 tr((C1 C2)^½).

    tr((C1 C2)^½) = tr((C1^½ C2 C1^½)^½): the inner matrix is symmetric PSD,
    so two eigen-decompositions replace scipy's sqrtm of a non-symmetric product.
    """
    diff = mu1 - mu2
    root1 = psd_sqrt(cov1)
    inner = root1 @ cov2 @ root1
    trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2.0), 0.0, None)).sum())
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(u, v) = (u·v/d + 1)³ (diagonal terms left out of the within-set sums)."""
    d = x.shape[1]
    m, n = len(x), len(y)
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, subset_size: int = KID_SUBSET_SIZE, subsets: int = KID_SUBSETS, seed: int = 0
) -> tuple[float, float, int]:
    """KID over random subsets: (mean, standard deviation over subsets, subset size used)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    # Half-size subsets at most: full-size ones would all be the same set, and the spread would read 0.
    size = min(subset_size, len(a) // 2, len(b) // 2)
    if size < 2:
        raise ValueError(f"KID needs at least 4 samples per side, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    values = [
        polynomial_mmd2_unbiased(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values)), size


# ---------------------------------------------------------------- the encoder


def encoder_from_state(state: dict[str, Any]) -> nn.Module:
    """Any registry model from a checkpoint with model_name / model_kwargs / model_state, in eval mode."""
    from cxr_ray.models.registry import create_model

    missing = {"model_name", "model_kwargs", "model_state"} - set(state)
    if missing:
        raise ValueError(f"encoder checkpoint lacks {', '.join(sorted(missing))}")
    model = create_model(state["model_name"], **state["model_kwargs"])
    model.load_state_dict(state["model_state"])
    return model.eval()


def _class_weights(targets: np.ndarray) -> torch.Tensor:
    counts = np.bincount(targets, minlength=len(CLASS_NAMES)).astype(np.float64)
    return torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)


def _accuracy(model: nn.Module, images: np.ndarray, targets: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(images.copy()).unsqueeze(1)
        logits = torch.cat([model(to_input(x[i : i + 512])) for i in range(0, len(x), 512)])
    return float((logits.argmax(1).numpy() == targets).mean())


def train_encoder(
    data: str,
    s3: S3Settings | None = None,
    *,
    epochs: int = ENCODER_EPOCHS,
    widths: tuple[int, ...] = ENCODER_WIDTHS,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the feature encoder on the real train split (plain PyTorch, this process); returns its checkpoint."""
    from cxr_ray.data.datasets import TaskData, load_arrays
    from cxr_ray.models.registry import create_model

    task = TaskData(task="pneumonia", real=data)
    train = load_arrays(task, ["train"], s3)
    val = load_arrays(task, ["val"], s3)
    images, targets = train["image"], train["target"].astype(np.int64)
    kwargs = {"num_classes": len(CLASS_NAMES), "in_channels": 1, "image_size": int(images.shape[-1]), "widths": list(widths)}
    torch.manual_seed(seed)
    model = create_model("cnn", **kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss(weight=_class_weights(targets))  # NORMAL is the minority class
    x_all, y_all = torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(targets)
    order_gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=order_gen)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(to_input(x_all[index])), y_all[index]).backward()
            optimizer.step()
        log(f"gan-quality: encoder epoch {epoch + 1}/{epochs} ({time.perf_counter() - t0:.0f} s)")
    val_accuracy = _accuracy(model, val["image"], val["target"]) if len(val["image"]) else None
    return {
        "model_name": "cnn",
        "model_kwargs": kwargs,
        "model_state": model_state(model),
        "purpose": "gan-quality feature encoder (global-pooled stem and stage outputs)",
        "trained_on": f"{data} split=train",
        "epochs": epochs,
        "train_images": int(len(images)),
        "val_accuracy": val_accuracy,
        "seconds": time.perf_counter() - t0,
    }


def load_or_train_encoder(
    uri: str, data: str, s3: S3Settings | None = None, log: Callable[[str], None] = print
) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder cached at `uri`, trained on `data`'s train split and saved there first if missing."""
    if storage.exists(uri, s3):
        state = load_state(uri, s3)
    else:
        log(f"gan-quality: training the feature encoder on {data} (train split) -> {uri}")
        state = train_encoder(data, s3, log=log)
        save_state(state, uri, s3)
    return encoder_from_state(state), state


def feature_layer(model: nn.Module) -> nn.Linear:
    """The last Linear layer: its input is the global-pooled penultimate feature vector."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear layer to take penultimate features from")
    return linears[-1]


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """Where features are taken: every stage of the compact CNN, else the input of the last Linear layer.

    The last stage alone (the classifier's penultimate layer) only keeps what
    tells NORMAL from PNEUMONIA; it put a PNEUMONIA generator's fakes and an
    untrained generator's gray blobs at nearly the same distance from real
    images. Global-pooled features of every stage also keep texture and
    structure, and separate the two by a wide margin (docs/results.md).
    """
    if hasattr(model, "stem") and hasattr(model, "stages"):
        return [model.stem, *model.stages]
    return []


def feature_description(model: nn.Module, model_name: str) -> str:
    if feature_modules(model):
        return f"{model_name}: global-pooled output of the stem and every stage"
    return f"{model_name} penultimate layer (global-pooled)"


@torch.no_grad()
def encode(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """uint8 images (N, H, W) or (N, 1, H, W) -> features (N, d), float64 (see `feature_modules`)."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    captured: list[torch.Tensor] = []
    modules = feature_modules(model)
    if modules:
        hooks = [m.register_forward_hook(lambda _m, _a, out: captured.append(out.detach().mean((2, 3)))) for m in modules]
    else:
        hooks = [feature_layer(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().flatten(1)))]
    batches: list[torch.Tensor] = []
    try:
        model.eval()
        for start in range(0, len(images), batch_size):
            captured.clear()
            model(to_input(images[start : start + batch_size]))
            batches.append(torch.cat(captured, 1))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(batches).double().numpy()


# ---------------------------------------------------------------- optional Inception features


def load_inception(weights_path: str) -> nn.Module:
    """torchvision inception_v3 from a local state dict (weights_only), pool features (2048-d) as output."""
    from torchvision.models import inception_v3

    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    has_aux = any(key.startswith("AuxLogits.") for key in state)
    model = inception_v3(weights=None, aux_logits=has_aux, init_weights=False, transform_input=False)
    model.load_state_dict(state)
    model.fc = nn.Identity()
    return model.eval()


@torch.no_grad()
def inception_features(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """uint8 (N, H, W) -> 2048-d pool features: resized to 299, 3 channels, ImageNet normalisation."""
    import torch.nn.functional as F

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].float().div(255.0).reshape(-1, 1, *images.shape[-2:])
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        out.append(model(((x.repeat(1, 3, 1, 1) - mean) / std)))
    return torch.cat(out).double().numpy()


# ---------------------------------------------------------------- generators and images


def fake_images(generator: nn.Module, n: int, labels: torch.Tensor | None, seed: int, batch_size: int = 256) -> torch.Tensor:
    """n uint8 fakes (N, H, W) from fixed-seed noise, drawn as the generation stage draws them."""
    from cxr_ray.train.gan import sample

    noise = torch.randn(n, generator.nz, generator=torch.Generator().manual_seed(seed))
    chunks = []
    for start in range(0, n, batch_size):
        batch_labels = labels[start : start + batch_size] if labels is not None else None
        chunks.append(to_uint8(sample(generator, noise[start : start + batch_size], batch_labels))[:, 0])
    return torch.cat(chunks)


def untrained_generator(state: dict[str, Any], seed: int) -> nn.Module:
    """The same architecture (the checkpoint's family) with fresh initialisation: the ceiling row."""
    from cxr_ray.gan_state import state_family
    from cxr_ray.models.generators import fresh_generator

    torch.manual_seed(seed)
    return fresh_generator(state_family(state), state["generator"]["model_kwargs"]).eval()


def real_images(data: str, split: str, class_name: str, s3: S3Settings | None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, H, W) and labels of one split, one class or both ("all")."""
    from cxr_ray.data.datasets import TaskData, load_arrays

    arrays = load_arrays(TaskData(task="pneumonia", real=data), [split], s3)
    images, labels = torch.from_numpy(arrays["image"].copy()), torch.from_numpy(arrays["target"].astype(np.int64))
    if class_name != "all":
        keep = labels == CLASS_NAMES.index(class_name)
        images, labels = images[keep], labels[keep]
    return images, labels


def subsample(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if len(images) <= n:
        return images, labels
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[index], labels[index]


# ---------------------------------------------------------------- the evaluation


def compare(name: str, reference: np.ndarray, other: np.ndarray, seed: int) -> dict[str, Any]:
    kid_mean, kid_std, subset = kernel_inception_distance(reference, other, seed=seed)
    return {
        "comparison": name,
        "n_reference": int(len(reference)),
        "n_other": int(len(other)),
        "fd": frechet_distance(reference, other),
        "kid": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": subset,
    }


def split_half_row(features: np.ndarray, name: str, seed: int) -> dict[str, Any]:
    """The sampling floor: two disjoint random halves of one real set (half the n of the other rows)."""
    order = np.random.default_rng(seed).permutation(len(features))
    half = len(order) // 2
    return compare(name, features[order[:half]], features[order[half : 2 * half]], seed)


def default_encoder_uri(generator_uri: str, image_size: int) -> str:
    """Next to the run folder, shared by every run of that runs root."""
    if storage.is_s3(generator_uri):
        parent = posixpath.dirname(generator_uri.rstrip("/"))
    else:
        parent = os.path.dirname(storage.resolve(generator_uri)[1].rstrip(os.sep))
    return storage.join(parent, f"quality-encoder-{image_size}px.pt")


def comparison_sets(
    state: dict[str, Any], data: str, split: str, reference_labels: torch.Tensor, n: int, baselines: bool, seed: int,
    s3: S3Settings | None,
) -> dict[str, torch.Tensor]:
    """The uint8 image sets compared with the reference, by row name, in table order.

    The trained generator's fakes; with `baselines`, also as many real train
    images as the reference has (before) and an untrained generator's fakes (after).
    """
    config = state["config"]
    # Fakes follow the reference's class mix (conditional GAN); a per-class GAN takes no labels.
    fake_labels = reference_labels[torch.arange(n) % len(reference_labels)] if config.get("conditional") else None
    trained_name = f"generator (epoch {state['epoch']}) vs real {split}"
    trained = fake_images(generator_from_state(state), n, fake_labels, seed)
    if not baselines:
        return {trained_name: trained}
    train_images, train_labels = real_images(data, "train", config["class_name"], s3)
    return {
        f"real train vs real {split}": subsample(train_images, train_labels, len(reference_labels), seed)[0],
        trained_name: trained,
        f"untrained generator vs real {split}": fake_images(untrained_generator(state, seed), n, fake_labels, seed),
    }


def inception_comparison(weights: str, reference: torch.Tensor, sets: dict[str, torch.Tensor], seed: int) -> dict[str, Any]:
    """The same rows in torchvision Inception-v3's 2048-d pool features (see the module docstring)."""
    inception = load_inception(weights)
    ref_features = inception_features(inception, reference)
    return {
        "dim": int(ref_features.shape[1]),
        "weights": weights,
        "rows": [compare(name, ref_features, inception_features(inception, images), seed) for name, images in sets.items()],
    }


def evaluate_generator(
    generator_uri: str,
    *,
    data: str | None = None,
    split: str = "test",
    n_fake: int | None = None,
    encoder_uri: str | None = None,
    inception_weights: str | None = None,
    baselines: bool = True,
    seed: int = 0,
    s3: S3Settings | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """FD and KID of a GAN checkpoint's fakes against real `split` images of its class, with baselines."""
    if split not in ("test", "val"):
        raise ConfigError(f"split must be test or val (the GAN trained on train), got {split!r}")
    state = load_gan_state(generator_uri, s3)
    config = state["config"]
    data = data or config["data"]
    encoder_uri = encoder_uri or default_encoder_uri(generator_uri, int(config["image_size"]))
    encoder, encoder_state = load_or_train_encoder(encoder_uri, data, s3, log)
    reference, reference_labels = real_images(data, split, config["class_name"], s3)
    n = n_fake or len(reference)
    sets = comparison_sets(state, data, split, reference_labels, n, baselines, seed, s3)

    ref_features = encode(encoder, reference)
    rows = [compare(name, ref_features, encode(encoder, images), seed) for name, images in sets.items()]
    if baselines:
        rows.insert(0, split_half_row(ref_features, f"real {split} half vs other half", seed))
    dim = int(ref_features.shape[1])
    result: dict[str, Any] = {
        "generator": generator_uri,
        "epoch": int(state["epoch"]),
        "class_name": config["class_name"],
        "data": data,
        "split": split,
        "n_real": int(len(reference)),
        "n_fake": int(n),
        "feature": {
            "name": feature_description(encoder, encoder_state["model_name"]),
            "dim": dim,
            "encoder": encoder_uri,
            "encoder_val_accuracy": encoder_state.get("val_accuracy"),
        },
        "rows": rows,
        "notes": [],
    }
    if len(reference) <= dim:
        result["notes"].append(f"{len(reference)} reference images <= {dim} feature dims: the covariance is rank-deficient; trust KID")
    if inception_weights:
        result["inception"] = inception_comparison(inception_weights, reference, sets, seed)
    return result


def format_result(result: dict[str, Any]) -> str:
    """A plain-text table of a result from `evaluate_generator`."""
    feature = result["feature"]
    lines = [
        f"{result['class_name']} generator, epoch {result['epoch']}: {result['n_fake']} fakes vs {result['n_real']} real "
        f"{result['split']} images; features: {feature['name']}, {feature['dim']}-d",
        "| comparison | n | FD | KID (x1000) |",
        "|---|---:|---:|---:|",
    ]
    blocks = [("", result["rows"])]
    if result.get("inception"):
        blocks.append((f" [Inception {result['inception']['dim']}-d]", result["inception"]["rows"]))
    for suffix, rows in blocks:
        for row in rows:
            lines.append(
                f"| {row['comparison']}{suffix} | {row['n_other']} | {row['fd']:.2f} | "
                f"{1000 * row['kid']:.2f} ± {1000 * row['kid_std']:.2f} |"
            )
    lines += [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)
