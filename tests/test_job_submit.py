"""The study the way users run it: `ray job submit --working-dir . -- python jobs/full_study.py` against S3, twice
(the second re-uses every stage); and over a study the same command finished locally, whose embedded sample sits
under another path than in Ray's uploaded working dir (issue 13: identity is content, not location)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, boto3_client

from cxr_ray.generalise import DEPLOYED_DESIGN
from cxr_ray.study.layout import STAGES


def test_full_study_job_on_s3(ray_cluster, s3_server, s3_bucket):
    env_vars = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_REGION": s3_server.region,
        "CXR_RAY_S3_ENDPOINT": s3_server.endpoint_url,
        "RAY_AUTH_MODE": "disabled",
    }
    storage = f"s3://{s3_bucket}/study"
    cmd = [
        str(Path(sys.executable).with_name("ray")), "job", "submit",
        "--address", ray_cluster["dashboard"],
        "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps({"env_vars": env_vars}),
        "--", "python", "jobs/full_study.py", "--profile", "quick", "--storage", storage,
        # Every knob is overridable: the smallest study that still runs every stage.
        "--models", "cnn", "--gan-epochs", "1", "--fakes-per-class", "24", "--test-fakes-per-class", "12",
        "--tune-samples", "1", "--n-boot", "50",
        "--claim-models", "",  # the claim's trainings end to end: tests/test_claim.py (local Ray)
    ]
    proc = submit(cmd)
    assert "succeeded" in (proc.stdout + proc.stderr).lower()

    client = boto3_client(s3_server)
    keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket) for o in page.get("Contents", [])}
    from cxr_ray.storage import published

    # Published outputs live in the version folder their _CURRENT pointer names.
    def inside(folder: str) -> str:
        return published(f"s3://{s3_bucket}/study/{folder}", s3_server).split("/", 3)[3]

    for key in (
        "study/manifest.json",
        f"{inside('data/real-64')}/_SUCCESS",
        f"{inside('data/fake-archive-64')}/_SUCCESS",
        f"{inside('data/fake-raw-64')}/_SUCCESS",
        f"{inside('data/benign-64')}/_SUCCESS",
        f"{inside('data/fake-vae-archive-64')}/_SUCCESS",  # the quick profile's second generator family
        f"{inside('generalise')}/lofo.md",  # leave-one-family-out detection
        f"study/generalise-runs/lofo-{DEPLOYED_DESIGN}-cnn-all/test_metrics.json",  # the deployed detector
        "study/runs/deepfake-cnn-raw-real/test_metrics.json",  # the detector trained on raw fakes
        "study/runs/deepfake-cnn-real/val_predictions.parquet",  # operating points come from these
        f"{inside('data/tampered-64')}/_SUCCESS",  # local tampering: the edits of every split
        f"{inside('attack')}/attack.md",  # how often they flip the pneumonia classifiers
        "study/tamper-examples/examples.npz",  # the report's side-by-side examples
        "study/runs/pneumonia-cnn-real/test_metrics.json",
        "study/runs/pneumonia-cnn-fake/test_metrics.json",
        "study/runs/deepfake-cnn-real/test_metrics.json",
        "study/runs/deepfake-cnn-robust-real/test_metrics.json",  # the blur/JPEG-augmented detector
        f"{inside('evaluate')}/metrics.csv",
        f"{inside('transfer')}/transfer.csv",
        "study/report/report.md",
        "study/report/report.html",
    ):
        assert key in keys, key
    manifest = json.loads(client.get_object(Bucket=s3_bucket, Key="study/manifest.json")["Body"].read())
    stages = manifest["stages"]
    for stage in STAGES:
        assert stages[stage]["status"] == "done", stage
    html = client.get_object(Bucket=s3_bucket, Key="study/report/report.html")["Body"].read().decode()
    assert "data:image/png;base64," in html and "Transfer" in html and "cnn-robust" in html
    assert "Headline" in html and "False alarms on benignly re-processed" in html and "transfer claim, tested as written" in html
    assert "Local tampering" in html and "IoU with the true mask" in html
    assert "Attack success: edits that flip" in html and re.search(r"<td[^>]*>inject</td>", html)  # a row per direction
    assert "study/report/tamper_examples.png" in keys
    # Credentials reach the workers through the runtime env, never the report.
    assert s3_server.secret_key not in html and s3_server.secret_key not in json.dumps(manifest)

    # The same command again re-uses every finished stage.
    again = submit(cmd)
    for stage in STAGES:
        assert f"[{stage}] done earlier with the same config; skipping" in again.stdout + again.stderr, stage


@pytest.mark.slow  # a reduced study in-process, then the job: about 3.5 minutes on 2 CPUs
def test_a_job_over_a_study_finished_locally_re_uses_every_stage(ray_local, ray_cluster, tmp_path):
    from cxr_ray.study import run_study
    from cxr_ray.study.args import build_parser, study_options
    from cxr_ray.study.profile import SAMPLE_DATA

    root = tmp_path / "study"
    knobs = ["--profile", "quick", "--storage", str(root), "--models", "cnn", "--tune-models", "", "--robust-models", "",
             "--raw-models", "", "--claim-models", "", "--families", "", "--tamper-epochs", "0", "--gan-epochs", "1", "--gan-width", "8", "--fakes-per-class", "16", "--test-fakes-per-class", "8",
             "--n-boot", "20"]
    run_study(study_options(build_parser().parse_args(knobs)), address=ray_cluster["address"], log=lambda _: None)
    cmd = [
        str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", ray_cluster["dashboard"],
        "--working-dir", str(REPO), "--", "python", "jobs/full_study.py", *knobs,
    ]
    out = submit(cmd)
    text = out.stdout + out.stderr
    ingest_line = next(line for line in text.splitlines() if "content fingerprint" in line)
    assert SAMPLE_DATA not in ingest_line  # the job read the sample from Ray's copy of the working dir
    for stage in STAGES:
        assert f"[{stage}] done earlier with the same config; skipping" in text, stage


def submit(cmd: list[str]) -> subprocess.CompletedProcess:
    # The quick study's 20-odd trainings cost about 45 s each of fixed cost on 2 CPUs (issue 18).
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc
