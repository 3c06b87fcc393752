"""Classifier/detector training on Ray Train V2 with 2 CPU workers: DDP, selection, resume, S3."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageFilter

from cxr_ray import storage
from cxr_ray.checkpoint import load_state, save_state
from cxr_ray.classifier_state import CLASSIFIER_FORMAT
from cxr_ray.data import schema
from cxr_ray.filenames import (
    HISTORY_FILE,
    STATE_FILE,
    TEST_METRICS_FILE,
    TEST_METRICS_TABLE,
    TEST_PREDICTIONS_FILE,
    VAL_PREDICTIONS_FILE,
)
from cxr_ray.operating import threshold_for_fpr
from cxr_ray.train.classifier import ClassifierConfig, train_classifier


def blurred_fakes(real_uri: str, dest_uri: str, s3=None) -> None:
    """A stand-in fake table (blurred reals tagged source=fake) in the shared image schema."""
    fs, path = storage.resolve(storage.join(real_uri, schema.IMAGES_DIR), None)
    table = pq.read_table(path, filesystem=fs)
    rows = table.to_pylist()
    for r in rows:
        img = Image.frombytes("L", (r["width"], r["height"]), r["image"]).filter(ImageFilter.GaussianBlur(2))
        r["image"] = img.tobytes()
        r["source"], r["generator_run"], r["seed"] = "fake", "blur-test", 0
        r["path"] = "generated://" + r["path"]
    out = pa.Table.from_pylist(rows, schema.IMAGE_SCHEMA)
    fs, base = storage.resolve(dest_uri, s3)
    fs.create_dir(f"{base}/{schema.IMAGES_DIR}", recursive=True)
    pq.write_table(out, f"{base}/{schema.IMAGES_DIR}/part-0.parquet", filesystem=fs)
    storage.write_json_atomic(storage.join(dest_uri, schema.SUMMARY_FILE), {"resolution": 64}, s3)
    storage.write_bytes_atomic(storage.join(dest_uri, storage.SUCCESS_MARKER), b"", s3)


def checkpoint_files(run_dir):
    return [ckpt / STATE_FILE for ckpt in sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())]


def load_checkpoint_file(run_dir):
    """Every checkpoint Ray kept must load with weights_only=True."""
    return [torch.load(path, weights_only=True) for path in checkpoint_files(run_dir)]


def test_ddp_training_survives_a_killed_worker_selects_on_val_and_tests_once(sample64, tmp_path):
    marker = tmp_path / "failed-once"
    cfg = ClassifierConfig(data=sample64, model="cnn", epochs=2, batch_size=32, storage=str(tmp_path / "runs"), n_boot=200,
                           max_failures=1, inject_failure={"epoch": 1, "rank": 1, "marker": str(marker)})  # fmt: skip
    out = train_classifier(cfg, log=lambda m: None)
    assert marker.exists()  # rank 1 died in epoch 1; the group restarted from epoch 0's checkpoint
    run_dir = tmp_path / "runs" / cfg.run_name()

    metrics = json.loads((run_dir / TEST_METRICS_FILE).read_text())
    assert json.dumps(metrics, sort_keys=True) == json.dumps(out, sort_keys=True)  # as text: NaN (undefined PPV) != NaN
    test = metrics["test"]
    for key in ("accuracy", "auc", "sensitivity", "specificity"):
        assert test[f"{key}_ci_low"] <= test[key] <= test[f"{key}_ci_high"], key
    assert test["tn"] + test["fp"] + test["fn"] + test["tp"] == test["n"] == 65  # the sample's test split
    history = json.loads((run_dir / HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    for h in history:
        assert {"val_loss", "val_accuracy", "val_auc", "val_sensitivity", "val_specificity"} <= set(h)
    best = max(history, key=lambda h: (h["val_auc"], h["epoch"]))
    assert metrics["best_epoch"] == best["epoch"] and metrics["threshold"] == best["val_threshold"]

    table = pq.read_table(run_dir / TEST_METRICS_TABLE).to_pylist()
    assert {r["metric"] for r in table} == {"accuracy", "auc", "sensitivity", "specificity"}
    preds = pq.read_table(run_dir / TEST_PREDICTIONS_FILE)
    assert preds.num_rows == 65 and all("/test/" in p for p in preds.column("path").to_pylist())
    assert preds.column_names == ["path", "patient_id", "target", "score"]

    # Operating points, temperature and calibration fixed on the best checkpoint's val predictions, then applied to test.
    val = pq.read_table(run_dir / VAL_PREDICTIONS_FILE)
    assert val.column_names == preds.column_names and val.num_rows > 0
    y_val, s_val = np.asarray(val.column("target")), np.asarray(val.column("score"))
    points = metrics["operating_points"]
    assert points["youden"] == metrics["threshold"]
    assert points["fpr_0.01"] == threshold_for_fpr(y_val, s_val, 0.01) and points["fpr_0.001"] == threshold_for_fpr(y_val, s_val, 0.001)
    assert metrics["temperature"] > 0 and set(metrics["val_calibration"]) == {"ece", "brier"}
    assert set(metrics["test_at"]) == set(points)
    y, s = np.asarray(preds.column("target")), np.asarray(preds.column("score"))
    for name, at in metrics["test_at"].items():
        assert at["threshold"] == points[name]
        assert at["tpr"] == pytest.approx(np.mean(s[y == 1] >= points[name])) and at["fpr"] == pytest.approx(np.mean(s[y == 0] >= points[name]))

    states = load_checkpoint_file(run_dir)
    assert states and all(s["model_name"] == "cnn" and s["model_kwargs"]["image_size"] == 64 for s in states)
    assert all(s["format"] == CLASSIFIER_FORMAT and s["kind"] == "classifier" for s in states)
    assert {s["epoch"] for s in states} <= {0, 1}

    # Same command again: finished runs are not retrained.
    again = train_classifier(cfg, log=lambda m: None)
    assert json.dumps(again, sort_keys=True) == json.dumps(out, sort_keys=True)


@pytest.mark.slow  # CXR_RAY_SLOW=1 (the default run keeps the killed-worker resume above)
def test_rerun_with_same_name_resumes_interrupted_run(sample64, tmp_path):
    """Also from a checkpoint written before the format tag: a study root trained by older code is reused."""
    from ray.train import TrainingFailedError

    runs = tmp_path / "runs"
    crash = ClassifierConfig(
        data=sample64, epochs=2, batch_size=32, storage=str(runs), n_boot=100, max_failures=0, name="resume-me", num_workers=1,
        inject_failure={"epoch": 1, "rank": 0, "marker": str(tmp_path / "crash")},
    )
    with pytest.raises(TrainingFailedError):
        train_classifier(crash, log=lambda m: None)
    first = load_checkpoint_file(runs / "resume-me")
    assert [s["epoch"] for s in first] == [0]
    for path in checkpoint_files(runs / "resume-me"):  # as the untagged states of older versions
        legacy = load_state(str(path))
        del legacy["format"]
        save_state(legacy, str(path))

    again = ClassifierConfig(data=sample64, epochs=2, batch_size=32, storage=str(runs), n_boot=100, name="resume-me", num_workers=1)
    out = train_classifier(again, log=lambda m: None)
    history = json.loads((runs / "resume-me" / HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    # Epoch 0 was not retrained: its record is the one from the interrupted attempt.
    assert history[0] == first[0]["history"][0]
    assert out["best_epoch"] in (0, 1)


def test_deepfake_detector_on_s3_storage(sample64, s3_server, s3_bucket, tmp_path):
    fakes = f"s3://{s3_bucket}/fakes-64"
    blurred_fakes(sample64, fakes, s3_server)
    cfg = ClassifierConfig(
        data=sample64, fakes=fakes, task="deepfake", model="cnn", epochs=1, batch_size=32,
        storage=f"s3://{s3_bucket}/runs", n_boot=100, num_workers=1, robust_aug=0.5,  # blur/JPEG-augmented (robust) detector
        input_filter="npr", real_novelty=True,  # that sees neighbouring-pixel residuals and models the reals (issue 15)
        resample_fakes=0.3, resample_stored=True,  # and upsampled reals stored in the archive's format (read from S3)
    )
    out = train_classifier(cfg, s3=s3_server, log=lambda m: None)
    run_uri = f"s3://{s3_bucket}/runs/{cfg.run_name()}"
    assert storage.exists(storage.join(run_uri, TEST_METRICS_FILE), s3_server)
    fs, base = storage.resolve(run_uri, s3_server)
    preds = pq.read_table(f"{base}/{TEST_PREDICTIONS_FILE}", filesystem=fs).to_pylist()
    # Test split: 65 real (target 0) + 65 held-out "fakes" (target 1).
    assert sum(p["target"] for p in preds) == 65 and len(preds) == 130
    assert all((p["target"] == 1) == p["path"].startswith("generated://") for p in preds)
    assert out["source"] == "real+fake" and out["test"]["n_pos"] == 65
    assert out["checkpoint"].startswith(f"{s3_bucket}/runs/")
    state = load_state(storage.join(storage.uri_for(run_uri, out["checkpoint"]), STATE_FILE), s3_server)
    assert state["config"]["robust_aug"] == 0.5 and state["config"]["resample_stored"] is True
    # The filter is part of the model: whoever rebuilds it from the checkpoint (evaluate, scan) gets it back.
    assert state["model_kwargs"]["input_filter"] == "npr" and state["model_kwargs"]["real_novelty"] is True
    assert float(state["model_state"]["fitted"]) == 1.0  # the real-image model was fitted before validation chose
    from cxr_ray.inference import build_model, predict_proba

    images = np.random.default_rng(0).integers(0, 200, size=(4, 64, 64), dtype=np.uint8)
    model = build_model(state)
    assert np.allclose(predict_proba(model, images), predict_proba(model, images + 40), atol=1e-6)  # offsets vanish


def test_robust_augment_blurs_or_compresses_a_fraction_reproducibly():
    from cxr_ray.train.loop import robust_augment

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, size=(200, 1, 32, 32), dtype=np.uint8))
    a, b, c = robust_augment(x, 0.5, seed=3), robust_augment(x, 0.5, seed=3), robust_augment(x, 0.5, seed=4)
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)  # the seed (epoch, rank) decides
    changed = (a != x).flatten(1).any(1).float().mean().item()
    assert 0.35 < changed < 0.65
    assert torch.equal(robust_augment(x, 0.0, seed=3), x)


def test_robust_aug_is_checked_and_named():
    from cxr_ray.config import ConfigError

    with pytest.raises(ConfigError, match="robust_aug"):
        ClassifierConfig(data="d", robust_aug=1.5)
    plain, robust = ClassifierConfig(data="d"), ClassifierConfig(data="d", robust_aug=0.5)
    assert "robust_aug" not in plain.identity() and plain.run_name() != robust.run_name()
    with pytest.raises(ConfigError, match="input_filter"):
        ClassifierConfig(data="d", input_filter="sobel")
    residual = ClassifierConfig(data="d", input_filter="npr")
    assert "input_filter" not in plain.identity() and residual.run_name() != plain.run_name()
    with pytest.raises(ConfigError, match="real_novelty"):
        ClassifierConfig(data="d", real_novelty=True)  # a pneumonia classifier has no fakes to tell from reals
    novelty = ClassifierConfig(data="d", task="deepfake", input_filter="npr", real_novelty=True)
    assert "real_novelty" not in residual.identity() and novelty.run_name() != residual.run_name()


def test_every_worker_trains_on_reals_and_fakes_alike(sample64, tmp_path):
    """The train rows are shuffled before Ray Train splits them: as read (reals, then fakes) one worker got reals only,
    and BatchNorm learnt the batch's make-up instead of the image (issue 15's residual detectors failed at eval)."""
    import threading

    from cxr_ray.train.classifier import training_datasets

    fakes = str(tmp_path / "fakes-64")
    blurred_fakes(sample64, fakes)
    datasets = training_datasets(ClassifierConfig(data=sample64, fakes=fakes, task="deepfake"), None)
    shards = datasets["train"].streaming_split(2, equal=True)  # as Ray Train's default DataConfig splits it
    targets: dict[int, np.ndarray] = {}

    def read(rank: int) -> None:
        targets[rank] = np.concatenate([b["target"] for b in shards[rank].iter_batches(batch_size=None, batch_format="numpy")])

    threads = [threading.Thread(target=read, args=(rank,)) for rank in (0, 1)]
    [t.start() for t in threads], [t.join() for t in threads]
    overall = np.concatenate(list(targets.values())).mean()
    assert 0.4 < overall < 0.6  # half the train rows are fakes
    assert all(abs(t.mean() - overall) < 0.15 for t in targets.values()), {r: t.mean() for r, t in targets.items()}
