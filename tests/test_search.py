"""Searches resume from their own JSON trial records: a planted `tuner.pkl` (local or S3) never runs."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import boto3_client
from cxr_ray import search
from cxr_ray.tune import SearchConfig, search_space


class Payload:
    """What an attacker would plant: unpickling it creates `marker` (it could as well run a shell)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_pickle(marker: Path, tmp_path: Path) -> bytes:
    data = pickle.dumps(Payload(marker))
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(Payload(control))).close()  # the payload is live: loading it does create its marker
    assert control.exists()
    return data


# ---------------------------------------------------------------- plain parts, no Ray


def test_plan_is_seeded_prefix_stable_and_within_bounds():
    space = search_space(SearchConfig(data="d", max_epochs=4))
    plan = search.plan_trials(space, 6, seed=3)
    assert plan == search.plan_trials(space, 6, seed=3) and plan != search.plan_trials(space, 6, seed=4)
    assert list(search.plan_trials(space, 3, seed=3).items()) == list(plan.items())[:3]
    for values in plan.values():
        assert 1e-4 <= values["lr"] <= 3e-3 and 1e-6 <= values["weight_decay"] <= 1e-3
        assert values["batch_size"] in (32, 64, 128) and values["epochs"] in (2, 4) and 0 <= values["aug_strength"] <= 1
        assert type(values["batch_size"]) is int  # JSON-safe: a record's values compare equal to the plan's
    assert json.loads(json.dumps(plan)) == plan


def test_records_that_are_not_this_plans_are_left_out(tmp_path):
    plan = search.plan_trials({"lr": search.loguniform(1e-4, 1e-3)}, 4, seed=0)
    run = search.SearchRun(root=str(tmp_path), metric="val_auc", mode="max", max_concurrent_trials=1)
    (tmp_path / "records").mkdir()
    k0, k1, k2, k3 = plan
    good = {"key": k0, "config": plan[k0], "status": "done", "error": "", "metrics": {"val_auc": 0.7}}
    (tmp_path / "records" / f"{k0}.json").write_text(json.dumps(good))
    (tmp_path / "records" / f"{k1}.json").write_text(json.dumps({**good, "key": k1, "config": {"lr": 0.5}}))  # stale
    (tmp_path / "records" / f"{k2}.json").write_bytes(pickle.dumps({"key": k2}))  # not JSON
    (tmp_path / "records" / f"{k3}.json").write_text(json.dumps({**good, "key": k3, "config": plan[k3], "metrics": []}))
    assert search.read_records(run, plan, None) == {k0: good}
    assert search.best_record([good], "val_auc", "max", "s") == good
    with pytest.raises(RuntimeError, match="trials.csv"):
        search.best_record([{**good, "metrics": {"val_auc": float("nan")}}], "val_auc", "max", "s")


def test_a_tune_pickle_is_named_once_and_never_read(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "tuner.pkl").write_bytes(evil_pickle(marker, tmp_path))
    messages = []
    search.warn_about_tune_pickles(str(tmp_path), None, messages.append)
    assert len(messages) == 1 and "ignoring" in messages[0] and "tuner.pkl" in messages[0]
    assert not marker.exists()


# ---------------------------------------------------------------- the commands, on a local Ray


@pytest.mark.slow  # CXR_RAY_SLOW=1 (the default run keeps the same refusal on S3)
def test_cli_tune_ignores_a_planted_tuner_pickle(ray_cluster, sample64, tmp_path):
    storage, marker = tmp_path / "tune", tmp_path / "pwned"
    (storage / "evil").mkdir(parents=True)
    (storage / "evil" / "tuner.pkl").write_bytes(evil_pickle(marker, tmp_path))
    (tmp_path / "search.yaml").write_text("batch_sizes: [32]\n")
    cmd = [str(Path(sys.executable).with_name("cxr-ray")), "tune", "--data", sample64, "--storage", str(storage),
           "--name", "evil", "--num-samples", "1", "--max-epochs", "1", "--config", str(tmp_path / "search.yaml")]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster["address"]}
    for attempt in range(2):  # the first run plans and runs the trial; the re-run resumes from its record
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = [line for line in proc.stderr.splitlines() if "ignoring" in line and "tuner.pkl" in line]
        assert len(lines) == 1 and str(storage / "evil" / "tuner.pkl") in lines[0], proc.stderr[-3000:]
        assert not marker.exists()
    assert "1 of 1 trial(s) finished earlier" in proc.stderr
    assert "best val AUC" in proc.stdout and (storage / "evil" / "best_config.json").is_file()


def test_search_on_s3_ignores_a_planted_tuner_pickle(sample64, s3_server, s3_bucket, tmp_path):
    from cxr_ray.tune import run_search

    marker = tmp_path / "pwned"
    boto3_client(s3_server).put_object(Bucket=s3_bucket, Key="tune/evil/tuner.pkl", Body=evil_pickle(marker, tmp_path))
    cfg = SearchConfig(data=sample64, num_samples=1, max_epochs=1, batch_sizes=(32,), storage=f"s3://{s3_bucket}/tune",
                       name="evil")
    messages = []
    out = run_search(cfg, s3=s3_server, log=messages.append)
    assert [m for m in messages if "tuner.pkl" in m] == [
        f"[search] warning: ignoring s3://{s3_bucket}/tune/evil/tuner.pkl: searches resume from their plain-data records "
        "(records/*.json), never from Tune's pickled state"
    ]
    assert not marker.exists() and out["trials"] == 1
    keys = {o["Key"] for o in boto3_client(s3_server).list_objects_v2(Bucket=s3_bucket, Prefix="tune/evil/")["Contents"]}
    assert {"tune/evil/best_config.json", "tune/evil/trials.csv", f"tune/evil/records/{out['best_trial']}.json"} <= keys
