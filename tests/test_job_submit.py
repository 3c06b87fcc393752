"""The study the way users run it: `ray job submit --working-dir . -- python jobs/full_study.py` against S3, twice
(the second re-uses every stage); and over a study the same command finished locally, whose embedded sample sits
under another path than in Ray's uploaded working dir, then on the same files with one image changed (issue 13:
identity is content, not location)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, boto3_client
from test_study import touch_one_image

from cxr_ray.generalise import DEPLOYED_DESIGN
from cxr_ray.study.layout import STAGES


# Every knob is overridable: small studies that still run every stage they plan, on S3. Each training costs about
# 20-30 s of fixed cost here, so trainings that only repeat another's path on S3 are left out: the search
# (tests/test_tune.py, tests/test_search.py on S3), the blur/JPEG-trained and raw-fake detectors (the same trainer with
# other inputs: tests/test_evaluate_scan.py) and the claim's pair (tests/test_claim.py); and every perturbation of the
# evaluation but one scores the same models again (test_evaluate_scan.py has them all).
SMALL_S3_STUDY = [
    "--models", "cnn", "--tune-models", "", "--robust-models", "", "--raw-models", "", "--claim-models", "",
    "--gan-epochs", "1", "--gan-width", "8", "--fakes-per-class", "16", "--test-fakes-per-class", "8",
    "--benign-conditions", "ingest,resave,jpeg85", "--perturbations", "none,jpeg75", "--n-boot", "20",
]
# The default run's study: the DCGAN's path alone (no second family, so no leave-one-family-out, and no tampering;
# those stages have their own tests on local storage and in the slow variant below).
CORE = ["--families", "", "--tamper-epochs", "0"]


@pytest.mark.parametrize("extent", ["core", pytest.param("every", marks=pytest.mark.slow)])
def test_full_study_job_on_s3(ray_cluster, s3_server, s3_bucket, extent):
    every = extent == "every"
    env_vars = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_REGION": s3_server.region,
        "CXR_RAY_S3_ENDPOINT": s3_server.endpoint_url,
    }
    storage = f"s3://{s3_bucket}/study"
    cmd = [
        str(Path(sys.executable).with_name("ray")), "job", "submit",
        "--address", ray_cluster["dashboard"],
        "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps({"env_vars": env_vars}),
        "--", "python", "jobs/full_study.py", "--profile", "quick", "--storage", storage, *SMALL_S3_STUDY,
        *([] if every else CORE),
    ]
    proc = submit(cmd)
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    assert_a_quiet_console(proc.stdout + proc.stderr)

    client = boto3_client(s3_server)
    keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket) for o in page.get("Contents", [])}
    from cxr_ray.storage import published

    # Published outputs live in the version folder their _CURRENT pointer names.
    def inside(folder: str) -> str:
        return published(f"s3://{s3_bucket}/study/{folder}", s3_server).split("/", 3)[3]

    def families_and_tampering() -> tuple[str, ...]:  # read only where those stages ran: they publish via _CURRENT
        return (
            f"{inside('data/fake-vae-archive-64')}/_SUCCESS",  # the quick profile's second generator family
            f"{inside('generalise')}/lofo.md",  # leave-one-family-out detection
            f"study/generalise-runs/lofo-{DEPLOYED_DESIGN}-cnn-all/test_metrics.json",  # the deployed detector
            f"{inside('data/tampered-64')}/_SUCCESS",  # local tampering: the edits of every split
            f"{inside('attack')}/attack.md",  # how often they flip the pneumonia classifiers
            "study/tamper-examples/examples.npz",  # the report's side-by-side examples
            "study/report/tamper_examples.png",
        )

    for key in (
        "study/manifest.json",
        f"{inside('data/real-64')}/_SUCCESS",
        f"{inside('data/fake-archive-64')}/_SUCCESS",
        f"{inside('data/fake-raw-64')}/_SUCCESS",
        f"{inside('data/benign-64')}/_SUCCESS",
        *(families_and_tampering() if every else ()),
        "study/runs/deepfake-cnn-real/val_predictions.parquet",  # operating points come from these
        "study/runs/pneumonia-cnn-real/test_metrics.json",
        "study/runs/pneumonia-cnn-fake/test_metrics.json",
        "study/runs/deepfake-cnn-real/test_metrics.json",
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
    assert "data:image/png;base64," in html and "Transfer" in html
    assert "Headline" in html and "False alarms on benignly re-processed" in html and "transfer claim, tested as written" in html
    if every:
        assert "Local tampering" in html and "IoU with the true mask" in html
        assert "Attack success: edits that flip" in html and re.search(r"<td[^>]*>inject</td>", html)  # per direction
    else:  # the stages it does not plan wrote nothing
        unplanned = ("study/data/fake-vae", "study/generalise", "study/data/tampered", "study/attack", "study/tamper")
        assert not [key for key in keys if key.startswith(unplanned)]
    # Credentials reach the workers through the runtime env, never the report.
    assert s3_server.secret_key not in html and s3_server.secret_key not in json.dumps(manifest)

    # The same command again re-uses every finished stage.
    again = submit(cmd)
    for stage in STAGES:
        assert f"[{stage}] done earlier with the same config; skipping" in again.stdout + again.stderr, stage


def trained_inputs(manifest: dict) -> dict[str, tuple[str, list[str]]]:
    """Run dir and recorded table identities of every GAN and classifier the study handed on."""
    runs = {**{f"gan-{cls}": g["run_dir"] for cls, g in manifest["gan"]["outputs"].items()},
            **{name: r["run_dir"] for name, r in manifest["train"]["outputs"].items()}}
    return {name: (d, json.loads((Path(d) / "inputs.json").read_text())["tables"]) for name, d in runs.items()}


@pytest.mark.slow  # two reduced studies in-process and a job between them: about 6 minutes on 2 CPUs
def test_the_same_data_anywhere_re_uses_every_stage_and_a_changed_image_retrains_all(ray_local, ray_cluster, tmp_path):
    from cxr_ray.manifest import Manifest
    from cxr_ray.study import run_study
    from cxr_ray.study.args import build_parser, study_options
    from cxr_ray.study.profile import SAMPLE_DATA

    root = tmp_path / "study"
    # The cheapest study that still runs every stage it plans: one model, no search, robust, raw or claim trainings,
    # no second family, no tampering, two benign conditions, a tiny GAN.
    knobs = ["--profile", "quick", "--storage", str(root), "--models", "cnn", "--tune-models", "", "--robust-models", "",
             "--raw-models", "", "--claim-models", "", "--families", "", "--tamper-epochs", "0", "--gan-epochs", "1",
             "--gan-width", "8", "--fakes-per-class", "16", "--test-fakes-per-class", "8",
             "--benign-conditions", "ingest,jpeg85", "--n-boot", "20"]

    def study(*extra: str) -> tuple[dict, list[str]]:
        lines: list[str] = []
        run_study(study_options(build_parser().parse_args([*knobs, *extra])), address=ray_cluster["address"], log=lines.append)
        return Manifest.load(str(root)).stages, lines

    first, _ = study()
    plan = dry_run(*knobs)
    assert all(f"  skip    {stage:<11}  done earlier with the same settings and inputs" in plan for stage in STAGES), plan
    before = trained_inputs(first)
    reads_real = [name for name in before if name != "pneumonia-cnn-fake"]  # that one reads the fakes only
    assert {before[name][1][0] for name in reads_real} == {first["ingest"]["outputs"]["identity"]}

    # The same command as a job: Ray's copy of the working dir holds the same files under another path.
    cmd = [
        str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", ray_cluster["dashboard"],
        "--working-dir", str(REPO), "--", "python", "jobs/full_study.py", *knobs,
    ]
    out = submit(cmd)
    text = out.stdout + out.stderr
    ingest_line = next(line for line in text.splitlines() if "content fingerprint" in line)
    assert SAMPLE_DATA not in ingest_line  # the job read the sample from Ray's copy of the working dir
    second = Manifest.load(str(root)).stages
    for stage in STAGES:
        assert f"[{stage}] done earlier with the same config; skipping" in text, stage
        assert second[stage]["config_hash"] == first[stage]["config_hash"]

    # One changed image: ingest and every stage below it run again, and no model trained on the old data is used.
    changed = tmp_path / "changed" / "chest_xray"
    shutil.copytree(SAMPLE_DATA, changed)
    touch_one_image(changed)
    plan = dry_run(*knobs, "--data", str(changed))
    assert "  run     ingest       its settings or inputs changed since it ran" in plan, plan
    assert "  run     train        after generate, tune (takes their results)" in plan, plan
    third, lines = study("--data", str(changed))
    reused = [line for line in lines if any(w in line for w in ("skipping", "finished earlier", "nothing to do"))]
    assert not reused, reused
    identity = third["ingest"]["outputs"]["identity"]
    assert identity != first["ingest"]["outputs"]["identity"]
    assert all(third[stage]["config_hash"] != first[stage]["config_hash"] for stage in STAGES)
    after = trained_inputs(third)
    for name, (run_dir, tables) in after.items():
        assert run_dir != before[name][0] and tables != before[name][1], name
        assert identity == tables[0] or name not in reads_real, name
    scored = {r["run_dir"] for r in third["evaluate"]["outputs"]["evaluate"]["runs"]}
    assert scored == {r["run_dir"] for r in third["train"]["outputs"].values()}  # never the stale runs beside them
    encoders = {q["feature"]["encoder"] for q in third["gan_quality"]["outputs"].values()}
    assert encoders.isdisjoint(q["feature"]["encoder"] for q in first["gan_quality"]["outputs"].values())


def dry_run(*args: str) -> str:
    """`jobs/full_study.py --dry-run` as a process that could not reach Ray if it tried (issue 18)."""
    proc = subprocess.run([sys.executable, "jobs/full_study.py", *args, "--dry-run"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"})
    assert proc.returncode == 0 and "Ray not started" in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout


def assert_a_quiet_console(out: str) -> None:
    """Issue 18: the study's console is its stage lines, the dashboard, the log's path and the closing table; what
    Ray's workers and internals print is in the log file it names."""
    for noise in ("RayTrainWorker", "TrainController", "core_worker.cc", "does not have any available CPUs",
                  "Progress bars disabled", "Checkpoint successfully created"):
        assert noise not in out, noise
    assert re.search(r"^dashboard: http", out, re.M) and "Ray's own logs: " in out
    for stage in STAGES:
        assert re.search(rf"^\[{stage}\] done in \d+ s$", out, re.M), stage
        assert re.search(rf"^{stage} +ran +\d+$", out, re.M), stage  # the closing table
    assert re.search(r"^report: s3://.+/report\.html$", out, re.M)
    lines = out.splitlines()
    study = lines[next(i for i, line in enumerate(lines) if line.startswith("log: ")):]  # from the console's first line
    assert len(study) < 30 + 3 * len(STAGES), "\n".join(study)  # was 600+ lines
    log = Path(re.search(r"^log: (\S+)", out, re.M).group(1))
    text = log.read_text()
    assert "RayTrainWorker" in text and "[train] done in" in text  # everything, in the file the console names


def submit(cmd: list[str]) -> subprocess.CompletedProcess:
    # A training costs 20-30 s of fixed cost on 2 CPUs (issue 18): the every-stage S3 study's dozen take ~10 minutes.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=dict(os.environ))  # token auth: RAY_AUTH_MODE and the token
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc
