"""The tamper detector that localises, on Ray Train (DDP), and its one test evaluation (issue 16).

Trained on the train-split edits (cxr-ray tamper) and the real train images
(an empty mask each): per-pixel BCE against the edit's mask plus BCE of the
image score (cxr_ray.models.localiser.image_logit) against edited / real.
Rank 0 validates every epoch (image AUC on the val edits and reals) and
attaches a plain-data checkpoint; the best by val AUC is evaluated once on
the test split:

* image level: AUC, and at the threshold that flags 1% of the val reals the
  share of test edits caught and of test reals flagged (patient-bootstrap
  intervals);
* pixel level: AUC of the map over the pixels of the test edits, and the IoU
  of the region it marks (pixels over a threshold chosen on val for the best
  mean IoU) with the true mask.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from cxr_ray import resources, storage
from cxr_ray.config import ConfigError, config_hash, from_dict
from cxr_ray.filenames import TEST_METRICS_FILE
from cxr_ray.pixels import autocast, to_input
from cxr_ray.storage import S3Settings

LOCALISER_FORMAT = "cxr_ray.localiser/1"
MAP_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 0.99, 0.025), 3))  # the region's pixel threshold: candidates
MAX_FPR = 0.01
_EXECUTION = {"storage", "name", "num_workers", "use_gpu", "resources", "max_failures", "n_boot", "inject_failure", "benign"}


@dataclass(frozen=True)
class LocaliserConfig:
    data: str  # ingested real table
    tampered: str  # cxr-ray tamper output made from it
    storage: str = "runs/localiser"
    epochs: int = 10
    batch_size: int = 64  # per worker
    lr: float = 1e-3
    width: int = 16
    image_weight: float = 1.0  # weight of the image-level BCE beside the per-pixel one
    seed: int = 0
    num_workers: int = 2
    use_gpu: bool | None = None
    resources: dict | None = None  # what each worker asks of a node (cxr_ray.resources); None: "auto"
    name: str | None = None
    max_failures: int = 2
    n_boot: int = 1000
    # Benignly re-processed reals (cxr-ray benign): the localiser's false alarms per condition on their test rows, at its
    # threshold (evaluation only, not part of the run's identity). "resave" (the archive's own format) is the control
    # for edits stored that way: a localiser that flags re-saving, not editing, shows there.
    benign: str | None = None
    inject_failure: dict | None = None

    def __post_init__(self) -> None:
        from cxr_ray.config import at_least, check_fields, check_name

        check_fields(self)
        resources.of(self.resources)
        for key in ("epochs", "batch_size", "num_workers", "n_boot"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.width % 8:
            raise ConfigError(f"width must be a multiple of 8, got {self.width}")
        at_least(self, 0, "seed", "image_weight", "max_failures")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        for key in ("data", "tampered"):
            if not getattr(self, key):
                raise ConfigError(f"{key} is required")
        check_name("name", self.name)

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in _EXECUTION}

    def run_name(self) -> str:
        return self.name or f"localiser-{config_hash(self.identity())}"


# ---------------------------------------------------------------- rows


def real_rows(batch: pa.Table, splits: list[str]) -> pa.Table:
    """Ray Data UDF: real rows of `splits` with an empty mask and target 0."""
    import pyarrow.compute as pc

    kept = batch.filter(pc.is_in(batch.column("split"), value_set=pa.array(splits, pa.string())))
    empty = [bytes(len(b)) for b in kept.column("image").to_pylist()]
    return pa.table({"image": kept.column("image"), "mask": pa.array(empty, pa.binary()),
                     "target": pa.array([0] * kept.num_rows, pa.int64()), "path": kept.column("path"),
                     "patient_id": kept.column("patient_id")})  # fmt: skip


def edited_rows(batch: pa.Table, splits: list[str]) -> pa.Table:
    """Ray Data UDF: edits of `splits` with their mask and target 1."""
    import pyarrow.compute as pc

    kept = batch.filter(pc.is_in(batch.column("split"), value_set=pa.array(splits, pa.string())))
    return pa.table({"image": kept.column("image"), "mask": kept.column("mask"),
                     "target": pa.array([1] * kept.num_rows, pa.int64()), "path": kept.column("path"),
                     "patient_id": kept.column("patient_id")})  # fmt: skip


def split_dataset(cfg: LocaliserConfig, splits: list[str], s3: S3Settings | None) -> Any:
    import ray

    from cxr_ray.data.datasets import images_uri, require_complete

    parts = []
    for uri, udf, columns in ((cfg.data, real_rows, ["image", "split", "path", "patient_id"]),
                              (cfg.tampered, edited_rows, ["image", "split", "path", "patient_id", "mask"])):  # fmt: skip
        fs, path = storage.resolve(images_uri(require_complete(uri, s3)), s3)
        read = ray.data.read_parquet(path, filesystem=fs).select_columns(columns)
        parts.append(read.map_batches(udf, batch_format="pyarrow", batch_size=None, fn_kwargs={"splits": splits}))
    return parts[0].union(parts[1])


def rows_to_arrays(rows: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, S, S) uint8, masks (N, S, S) uint8, targets (N,)) from a numpy batch or a pylist-like dict."""
    images = list(rows["image"])
    if not images:
        return np.zeros((0, 0, 0), np.uint8), np.zeros((0, 0, 0), np.uint8), np.zeros(0, np.int64)
    side = int(round(len(images[0]) ** 0.5))
    # Copies: frombuffer views are read-only, and torch.from_numpy warns on those.
    x = np.frombuffer(b"".join(images), np.uint8).reshape(-1, side, side).copy()
    m = np.frombuffer(b"".join(rows["mask"]), np.uint8).reshape(-1, side, side).copy()
    return x, m, np.asarray(rows["target"], np.int64)


# ---------------------------------------------------------------- worker side


def _load(name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import ray.train

    xs, ms, ys = [], [], []
    for batch in ray.train.get_dataset_shard(name).iter_batches(batch_size=4096, batch_format="numpy"):
        x, m, y = rows_to_arrays(batch)
        if len(x):
            xs.append(x)
            ms.append(m)
            ys.append(y)
    if not xs:
        raise RuntimeError(f"a worker received no {name} rows: use fewer workers")
    as_tensor = lambda parts: torch.from_numpy(np.concatenate(parts)).to(device)  # noqa: E731
    return as_tensor(xs).unsqueeze(1), as_tensor(ms).unsqueeze(1), as_tensor(ys)


def localiser_loss(logits: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor, image_weight: float) -> torch.Tensor:
    """Per-pixel BCE (edited pixels weighted up to balance the far more numerous untouched ones) + image BCE."""
    from cxr_ray.models.localiser import image_logit

    m = masks.float()
    pos_weight = ((m.numel() - m.sum()) / m.sum().clamp(min=1.0)).clamp(max=100.0)
    pixel = F.binary_cross_entropy_with_logits(logits.float(), m, pos_weight=pos_weight)
    image = F.binary_cross_entropy_with_logits(image_logit(logits.float()), targets.float())
    return pixel + image_weight * image


@torch.no_grad()
def score_maps(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(image scores (N,), probability maps (N, S, S)) of uint8 (N, 1, S, S) images."""
    from cxr_ray.models.localiser import image_logit

    was_training = model.training
    model.eval()
    scores, maps = [], []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start : start + batch_size])
        with autocast(x.device):
            logits = model(x).float()
        scores.append(torch.sigmoid(image_logit(logits)).cpu().numpy())
        maps.append(torch.sigmoid(logits)[:, 0].cpu().numpy())
    model.train(was_training)
    return np.concatenate(scores), np.concatenate(maps)


def build_state(cfg: LocaliserConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                history: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    from cxr_ray.checkpoint import model_state

    return {"format": LOCALISER_FORMAT, "epoch": epoch, "config": asdict(replace(cfg, inject_failure=None)),
            "model_kwargs": {"width": model.width, "image_size": model.image_size}, "model_state": model_state(model),
            "optimizer_state": optimizer.state_dict(), "history": [dict(h) for h in history]}  # fmt: skip


def localiser_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: restore, then per epoch train, validate and checkpoint (rank 0), report (every rank)."""
    import ray.train.torch

    from cxr_ray.checkpoint import unwrap_model
    from cxr_ray.metrics import roc_auc
    from cxr_ray.models.localiser import Localiser
    from cxr_ray.train import loop
    from cxr_ray.train.launch import report_epoch, resume_state

    cfg = from_dict(LocaliserConfig, {k: v for k, v in config.items() if not k.startswith("_")})
    rank, world_size = loop.world()
    device = loop.device_for_worker(bool(config.get("_use_gpu")))
    loop.seed_everything(cfg.seed, rank)
    x, m, y = _load("train", device)
    n = loop.agree_on_count(len(x), device)
    x, m, y = x[:n], m[:n], y[:n]
    val = _load("val", device) if rank == 0 else None
    model = Localiser(cfg.width, int(x.shape[-1]))
    state = resume_state(config)
    if state is not None:
        model.load_state_dict(state["model_state"])
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    if state is not None:
        optimizer.load_state_dict(state["optimizer_state"])
    history = list(state["history"]) if state else []
    batch = min(cfg.batch_size, n)
    for epoch in range(int(state["epoch"]) + 1 if state else 0, cfg.epochs):
        loop.maybe_inject_failure(config, epoch, rank)
        t0 = time.perf_counter()
        total = torch.zeros((), device=device)
        steps = max(1, n // batch)
        # Batch order from (seed, epoch, rank) alone: a resumed attempt draws what an uninterrupted one would have.
        gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + epoch * 1009 + rank) % 2**31)
        for index in loop.batches(n, batch, steps, gen):
            index = index.to(device)
            with autocast(device):
                logits = model(to_input(x[index]))
            loss = localiser_loss(logits, m[index], y[index], cfg.image_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        seconds = time.perf_counter() - t0
        metrics = {"epoch": epoch, "train_loss": float(total.item() / steps), "epoch_seconds": seconds,
                   "train_images_per_s": steps * batch * world_size / seconds}  # fmt: skip
        save = None
        if rank == 0:
            scores, _ = score_maps(unwrap_model(model), val[0])
            metrics["val_auc"] = float(roc_auc(val[2].cpu().numpy(), scores))
            history.append(dict(metrics))
            save = build_state(cfg, unwrap_model(model), optimizer, epoch, history)
        report_epoch(metrics, save)


# ---------------------------------------------------------------- the one test evaluation


def localiser_from_state(state: dict[str, Any], device: torch.device | str = "cpu") -> torch.nn.Module:
    from cxr_ray.checkpoint import CheckpointError
    from cxr_ray.models.localiser import Localiser

    if state.get("format") != LOCALISER_FORMAT:
        raise CheckpointError(f"not a localiser checkpoint (format {state.get('format')!r}, expected {LOCALISER_FORMAT!r})")
    model = Localiser(**state["model_kwargs"])
    model.load_state_dict(state["model_state"])
    return model.to(device).eval()


def iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per image IoU of boolean (N, S, S) regions (1.0 where both are empty)."""
    inter = (pred & truth).sum(axis=(1, 2))
    union = (pred | truth).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def evaluate_localiser(state: dict[str, Any], val: dict[str, np.ndarray], test: dict[str, np.ndarray],
                       n_boot: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """Test metrics of a localiser from its val and test rows (images, masks, targets, patient ids); thresholds from val."""
    from cxr_ray.metrics import bootstrap_ci, patient_mean_interval, roc_auc, threshold_at_fpr

    model = localiser_from_state(state)
    v_scores, v_maps = score_maps(model, torch.from_numpy(val["images"]).unsqueeze(1))
    t_scores, t_maps = score_maps(model, torch.from_numpy(test["images"]).unsqueeze(1))
    threshold = threshold_at_fpr(val["targets"], v_scores, MAX_FPR)  # flags at most 1% of the val reals
    v_edit, t_edit = val["targets"] == 1, test["targets"] == 1
    v_truth, t_truth = val["masks"][v_edit].astype(bool), test["masks"][t_edit].astype(bool)
    mean_iou = {float(t): float(iou(v_maps[v_edit] >= t, v_truth).mean()) for t in MAP_THRESHOLDS}
    map_threshold = max(mean_iou, key=lambda t: (mean_iou[t], -t))  # best on val; the higher one on a tie
    y, groups = test["targets"], test["patients"]
    auc_low, auc_high = bootstrap_ci(y, t_scores, roc_auc, n_boot=n_boot, seed=seed, groups=groups)
    caught = patient_mean_interval((t_scores[t_edit] >= threshold).astype(float), groups[t_edit], n_boot, seed, rate=True)
    flagged = patient_mean_interval((t_scores[~t_edit] >= threshold).astype(float), groups[~t_edit], n_boot, seed, rate=True)
    ious = iou(t_maps[t_edit] >= map_threshold, t_truth)
    test_iou = patient_mean_interval(ious, groups[t_edit], n_boot, seed)
    pixel_auc = roc_auc(t_truth.ravel().astype(np.int64), t_maps[t_edit].ravel())
    return {
        "n_edited": int(t_edit.sum()), "n_real": int((~t_edit).sum()),
        "image_auc": float(roc_auc(y, t_scores)), "image_auc_ci": [auc_low, auc_high],
        "threshold": float(threshold), "max_fpr": MAX_FPR,
        "tpr_at_1pct": caught[0], "tpr_at_1pct_ci": list(caught[1:]),
        "test_fpr": flagged[0], "test_fpr_ci": list(flagged[1:]),
        "pixel_auc": float(pixel_auc), "map_threshold": map_threshold, "val_iou": mean_iou[map_threshold],
        "iou": test_iou[0], "iou_ci": list(test_iou[1:]),
    }  # fmt: skip


def _read(uri: str, columns: list[str], s3: S3Settings | None) -> pa.Table:
    from cxr_ray.data.datasets import read_columns

    return read_columns(uri, columns, s3)


def split_arrays(cfg: LocaliserConfig, split: str, s3: S3Settings | None) -> dict[str, np.ndarray]:
    """One split's reals and edits, read on the driver (no Ray): images, masks, targets, patient ids."""
    base = ["image", "split", "path", "patient_id"]
    table = pa.concat_tables([real_rows(_read(cfg.data, base, s3), [split]),
                              edited_rows(_read(cfg.tampered, base + ["mask"], s3), [split])])  # fmt: skip
    x, m, y = rows_to_arrays(table.to_pydict())
    return {"images": x, "masks": m, "targets": y, "patients": np.asarray(table.column("patient_id").to_pylist())}


def check_edits(cfg: LocaliserConfig, s3: S3Settings | None) -> None:
    """The tampered table must hold edits in every split: train to learn, val to choose, test to score."""
    splits = set(_read(cfg.tampered, ["split"], s3).column("split").to_pylist())
    missing = [split for split in ("train", "val", "test") if split not in splits]
    if missing:
        raise ConfigError(f"{cfg.tampered}: no {', '.join(missing)} edits; the localiser needs edits of every split "
                          "(cxr-ray tamper without --split)")  # fmt: skip


def benign_false_alarms(state: dict[str, Any], threshold: float, benign: str, n_boot: int, seed: int,
                        s3: S3Settings | None) -> dict[str, list[float]]:  # fmt: skip
    """Per benign condition: the share of its test rows (re-processed real test images) the localiser flags at
    `threshold`, [rate, low, high] with patient-bootstrap intervals."""
    import pyarrow.compute as pc

    from cxr_ray.metrics import patient_mean_interval

    table = _read(benign, ["image", "split", "patient_id", "condition"], s3)
    table = table.filter(pc.equal(table.column("split"), "test"))
    side = int(round(len(table.column("image")[0].as_py()) ** 0.5))
    images = np.frombuffer(b"".join(table.column("image").to_pylist()), np.uint8).reshape(-1, side, side).copy()
    scores, _ = score_maps(localiser_from_state(state), torch.from_numpy(images).unsqueeze(1))
    conditions = np.asarray(table.column("condition").to_pylist())
    patients = np.asarray(table.column("patient_id").to_pylist())
    out = {}
    for condition in sorted(set(conditions)):
        pick = conditions == condition
        out[condition] = list(patient_mean_interval((scores[pick] >= threshold).astype(float), patients[pick], n_boot, seed, rate=True))
    return out


def benign_identity(test: dict[str, Any]) -> tuple[Any, Any]:
    """(path, content identity) of the benign table a record's false alarms were scored on."""
    return test.get("benign"), test.get("benign_identity")


def score_benign(state: dict[str, Any], threshold: float, cfg: LocaliserConfig, s3: S3Settings | None) -> dict[str, Any]:
    """The test record's benign fields: the table, its content identity, and the false alarms per condition."""
    from cxr_ray.data.fingerprint import table_identity

    return {"benign": cfg.benign, "benign_identity": table_identity(cfg.benign, s3),
            "benign_fpr": benign_false_alarms(state, threshold, cfg.benign, cfg.n_boot, cfg.seed, s3)}  # fmt: skip


# ---------------------------------------------------------------- driver


def train_localiser(
    cfg: LocaliserConfig, *, s3: S3Settings | None = None, log: Callable[[str], None] = print, address: str | None = None
) -> dict[str, Any]:
    """Train (or resume) the localiser, then evaluate its best checkpoint on the test split once."""
    from cxr_ray.checkpoint import load_state
    from cxr_ray.data.datasets import require_complete, resolution_of
    from cxr_ray.data.fingerprint import claim_run_name, run_inputs, table_identity
    from cxr_ray.filenames import STATE_FILE
    from cxr_ray.runtime import init_ray
    from cxr_ray.train.launch import LaunchSpec, read_state, run_trainer

    s3 = s3 or S3Settings.from_env()
    cfg = replace(cfg, name=cfg.run_name(), data=storage.absolute(cfg.data), tampered=storage.absolute(cfg.tampered),
                  storage=storage.absolute(cfg.storage), benign=storage.absolute(cfg.benign) if cfg.benign else None)  # fmt: skip
    for table in (cfg.data, cfg.tampered, *([cfg.benign] if cfg.benign else [])):
        require_complete(table, s3)
    check_edits(cfg, s3)
    if resolution_of(cfg.data, s3) != resolution_of(cfg.tampered, s3):
        raise ConfigError(f"{cfg.tampered} and {cfg.data} differ in image size: edits must be of this table")
    cfg = replace(cfg, name=claim_run_name(cfg.storage, cfg.run_name(), run_inputs(cfg.identity(), [cfg.data, cfg.tampered], s3), s3, log))
    run_uri = storage.join(cfg.storage, cfg.run_name())
    done = storage.join(run_uri, TEST_METRICS_FILE)
    if storage.exists(done, s3):
        log(f"[localiser] {cfg.run_name()}: finished earlier on the same inputs; test metrics at {done}")
        record = storage.read_json(done, s3)
        if cfg.benign and benign_identity(record["test"]) != (cfg.benign, table_identity(cfg.benign, s3)):
            # Another benign table (or the same folder re-made with other conditions) is scored at the recorded
            # threshold; the test metrics are not computed again.
            state = load_state(storage.join(str(record["checkpoint"]), STATE_FILE), s3)
            record["test"].update(score_benign(state, record["test"]["threshold"], cfg, s3))
            storage.write_json_atomic(done, record, s3)
        return record
    init_ray(address)
    log(f"[localiser] {cfg.run_name()}: {cfg.num_workers} workers, {cfg.epochs} epochs -> {run_uri}")
    spec = LaunchSpec(name=cfg.run_name(), storage=cfg.storage, num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                      resources=resources.of(cfg.resources), max_failures=cfg.max_failures, score_attribute="val_auc")  # fmt: skip
    t0 = time.perf_counter()
    datasets = {"train": split_dataset(cfg, ["train"], s3).random_shuffle(seed=cfg.seed), "val": split_dataset(cfg, ["val"], s3)}
    result = run_trainer(localiser_worker, asdict(cfg), spec, s3=s3, datasets=datasets, datasets_to_split=["train"])
    train_seconds = time.perf_counter() - t0
    scored = [(c, mm) for c, mm in (result.best_checkpoints or []) if math.isfinite(mm.get("val_auc", float("nan")))]
    best = max(scored, key=lambda cm: (cm[1]["val_auc"], cm[1]["epoch"]))[0] if scored else result.checkpoint
    state = read_state(best)
    metrics = evaluate_localiser(state, split_arrays(cfg, "val", s3), split_arrays(cfg, "test", s3), cfg.n_boot, cfg.seed)
    if cfg.benign:
        metrics.update(score_benign(state, metrics["threshold"], cfg, s3))
    record = {"run": cfg.run_name(), "task": "tamper-localiser", "best_epoch": int(state["epoch"]), "test": metrics,
              "checkpoint": storage.uri_for(cfg.storage, best.path), "train_seconds": train_seconds,
              "history": read_state(result.checkpoint)["history"], "config": asdict(replace(cfg, inject_failure=None))}  # fmt: skip
    storage.write_json_atomic(done, record, s3)
    return record
