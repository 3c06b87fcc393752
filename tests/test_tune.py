"""Ray Tune over the Train V2 classifier trainer: a tiny ASHA search, a resume after a kill, a DCGAN search."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cxr_ray.tune import SearchConfig, run_search


def records(root: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / "records").glob("*.json"))}


@pytest.mark.slow  # CXR_RAY_SLOW=1 (the default run keeps the search on S3 in test_search)
def test_a_search_killed_mid_way_resumes_from_its_records_and_writes_trials_and_best_config(ray_local, sample64, tmp_path):
    """One search (3 trials, ASHA, 2 epochs) whose driver is killed after its first trial, then run again to the end."""
    storage = tmp_path / "tune"
    root = storage / "resume-me"
    # The killed driver joins the test's own Ray: one Ray instance on the machine,
    # and Ray frees the dead job's actors and placement groups.
    gcs = ray_local.get_runtime_context().gcs_address
    cfg = dict(num_samples=3, max_epochs=2, batch_sizes=(32,), max_concurrent_trials=1, storage=str(storage), name="resume-me")
    code = (
        "from cxr_ray.runtime import init_ray; init_ray()\n"
        "from cxr_ray.tune import SearchConfig, run_search\n"
        f"run_search(SearchConfig(data={sample64!r}, **{cfg!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": gcs})
    deadline = time.time() + 300
    try:
        # Kill the whole search once the first trial has finished (and so has a checkpoint).
        while time.time() < deadline and not any(r["status"] == "done" for r in records(root).values()):
            assert proc.poll() is None, "search ended before it could be interrupted"
            time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {k: r for k, r in records(root).items() if r["status"] == "done"}
    assert before, "no trial finished in time"
    assert list((root / "trials").glob("trial-*/checkpoint_*"))
    assert not (root / "best_config.json").exists()

    messages = []
    out = run_search(SearchConfig(data=sample64, **cfg), log=messages.append)
    assert any(f"{len(before)} of 3 trial(s) finished earlier" in m for m in messages), messages
    assert not any("tuner.pkl" in m for m in messages)
    after = records(root)
    # Finished trials were not run again (their records are untouched); the rest ran to the end,
    # ASHA-stopped ones included (Tune's stop_trial goes through on_trial_complete).
    assert all(after[k] == r for k, r in before.items())
    assert len(after) == 3 and all(r["status"] == "done" for r in after.values()), after
    assert out["trials"] == 3 and out["best_trial"] in after
    table = pd.read_csv(root / "trials.csv")
    assert len(table) == 3 and table["error"].isna().all() and table["val_auc"].notna().all()
    assert (table["epochs_run"] <= table["epochs"]).all()
    # What a finished search writes: the best config, one row per trial, a TorchTrainer run per trial.
    best = json.loads((root / "best_config.json").read_text())
    assert best == json.loads(json.dumps(out))
    assert best["metric"] == "val_auc" and 0.0 <= best["best_val_auc"] <= 1.0
    assert set(best["best_config"]) == {"lr", "weight_decay", "batch_size", "aug_strength", "epochs"}
    assert list(table.columns) == [
        "trial_id", "lr", "weight_decay", "batch_size", "aug_strength", "epochs", "epochs_run", "val_auc", "val_loss", "error"
    ]
    assert table["val_auc"].max() == pytest.approx(best["best_val_auc"]) and table["lr"].between(1e-4, 3e-3).all()
    runs = sorted(p.name for p in (root / "trials").iterdir() if p.is_dir())
    assert runs == sorted(f"trial-{t}" for t in table["trial_id"])  # each trial named after its planned key
    assert best["best_trial"] in set(table["trial_id"])


@pytest.mark.slow  # CXR_RAY_SLOW=1 (the default run keeps the search on S3 in test_search)
def test_small_dcgan_search_scores_trials_on_validation_fd(sample64, tmp_path):
    from cxr_ray.tune_gan import GanSearchConfig, run_gan_search

    cfg = GanSearchConfig(data=sample64, class_name="NORMAL", num_samples=2, epochs=1, width_choices=(8, 16),
                          n_fake=64, storage=str(tmp_path))
    out = run_gan_search(cfg, log=lambda m: None)
    root = tmp_path / cfg.search_name()
    best = json.loads((root / "best_config.json").read_text())
    trials = pd.read_csv(root / "trials.csv")
    assert len(trials) == 2 and (trials["error"].isna() | (trials["error"].astype(str) == "")).all()
    assert best["best_val_fd"] == pytest.approx(trials["val_fd"].min()) and out["best_val_fd"] > 0
    assert trials["width"].isin([8, 16]).all() and trials["lr"].between(1e-4, 5e-4).all()
    assert set(best["best_config"]) == {"lr", "beta1", "width", "epochs"}
    # One TorchTrainer per trial, named after its planned key, and the encoder trained once for all of them.
    runs = sorted(p.name for p in (root / "trials").iterdir() if p.is_dir())
    assert runs == sorted(f"trial-{t}" for t in trials["trial_id"])
    assert (root / "quality-encoder.pt").is_file()
    # A re-run finds every trial finished in its records: nothing runs, the same best comes back.
    messages = []
    again = run_gan_search(cfg, log=messages.append)
    assert any("2 of 2 trial(s) finished earlier" in m for m in messages) and again["best_trial"] == out["best_trial"]
