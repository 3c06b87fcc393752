"""A study on Ray's own autoscaler (issue 17): a head with 0 CPUs and one worker node type that starts at zero, a
custom resource standing in for the accelerator. Worker nodes come up for the study's declared resources, every
stage finishes on them, and they go away after the idle timeout; a shape no node type offers fails in seconds.

Ray's fake multi-node provider (what `ray.cluster_utils.AutoscalingCluster` starts) runs each "node" as a raylet
on this machine. AutoscalingCluster itself cannot be used: Ray 2.60's wheel lacks the example config it reads,
and its start runs `ray stop --force`. The same cluster is started here through `ray start --autoscaling-config`.
Its worker nodes join the head at Ray's default port, and the machine holds one Ray instance at a time: this
module runs before the session's cluster starts (file order), and is skipped if it already has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SESSION_CLUSTER, free_port, start_head, stop_head

# Slow (CXR_RAY_SLOW=1 bash scripts/test.sh): about 12 minutes on 2 CPUs, where every fake node's raylet, its
# prestarted workers and each stage's Train and Data processes share two cores.
pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
HEAD_PORT = 6379  # the fake provider's worker nodes join the head here
IDLE_S = 15
NODE_TYPE = "accel_node"


def cluster_config() -> dict:
    """Ray's cluster-launcher schema for the fake provider: a 0-CPU head, worker nodes of 2 CPUs and 1 'accel'."""
    return {
        "cluster_name": "cxr-autoscaling-test", "max_workers": 2,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            NODE_TYPE: {"resources": {"CPU": 2, "accel": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": IDLE_S / 60,
        "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [], "rsync_exclude": [], "rsync_filter": [],
    }


def env() -> dict[str, str]:
    out = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    out.pop("RAY_ADDRESS", None)
    return out


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    if SESSION_CLUSTER["running"]:
        pytest.skip("the session's Ray cluster is already up: one Ray instance per machine (run this module first)")
    config = tmp_path_factory.mktemp("autoscaler") / "cluster.json"
    config.write_text(json.dumps(cluster_config()))
    dashboard = free_port()
    proc = start_head(["--num-cpus=0", f"--port={HEAD_PORT}", f"--autoscaling-config={config}"], dashboard,
                      {**env(), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    yield {"address": f"127.0.0.1:{HEAD_PORT}", "dashboard": f"http://127.0.0.1:{dashboard}"}
    stop_head(proc)
    # The fake worker nodes were started by the autoscaler, outside the head's process group.
    subprocess.run([RAY, "stop", "--force"], env=env(), capture_output=True, timeout=60)


def worker_nodes(dashboard: str) -> int:
    from ray.util.state import list_nodes

    return sum(1 for n in list_nodes(address=dashboard, limit=100) if n.state == "ALIVE" and not n.is_head_node)


def autoscaler_messages(dashboard: str) -> list[str]:
    from ray.util.state import list_cluster_events

    events = list_cluster_events(address=dashboard, filters=[("source_type", "=", "AUTOSCALER")], limit=10_000)
    return [str(e["message"]) for e in events]


SMALL_STUDY = [
    "--profile", "quick", "--models", "cnn", "--tune-models", "", "--robust-models", "", "--raw-models", "",
    "--claim-models", "", "--families", "", "--tamper-epochs", "0", "--gan-epochs", "1", "--gan-width", "8",
    "--fakes-per-class", "16", "--test-fakes-per-class", "8", "--benign-conditions", "ingest,resave", "--n-boot", "20",
    # Declared: every worker and actor asks for 1 CPU and the node type's 'accel'; up to 2 at once.
    "--accelerator", "cpu", "--cpus-per-worker", "1", "--pool-max", "2",
]


def test_a_study_job_brings_worker_nodes_up_from_zero_finishes_on_them_and_they_go(autoscaling_cluster, tmp_path):
    dashboard = autoscaling_cluster["dashboard"]
    assert worker_nodes(dashboard) == 0
    # The code as an image holds it (the RayJob's way), not a --working-dir upload: the fake nodes share one session
    # folder, and a removed node's runtime-env cleanup deleted the uploaded folder under the running driver.
    cmd = [RAY, "job", "submit", "--address", dashboard, "--",
           sys.executable, str(REPO / "jobs" / "full_study.py"), *SMALL_STUDY, "--custom-resources", "accel=1", "--storage", str(tmp_path / "study")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in out.lower(), out[-4000:]
    assert "[train] asks for 2 training(s) at once x 1 worker(s) of (1 CPU + 1 accel)" in out, out[-4000:]
    assert "[generate] asks for an actor pool of 1-2 x (1 CPU + 1 accel)" in out
    assert (tmp_path / "study" / "report").exists() or any((tmp_path / "study").glob("report*"))
    added = [m for m in autoscaler_messages(dashboard) if m.startswith("Adding") and NODE_TYPE in m]
    assert added, "the autoscaler never added a worker node"
    deadline = time.time() + IDLE_S + 90
    while worker_nodes(dashboard) and time.time() < deadline:
        time.sleep(3)
    assert worker_nodes(dashboard) == 0, "idle worker nodes were not removed"


def test_a_shape_no_node_type_offers_fails_in_seconds_with_one_line(autoscaling_cluster, tmp_path):
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "jobs/full_study.py", *SMALL_STUDY, "--custom-resources", "big_accel=1",
         "--address", autoscaling_cluster["address"], "--storage", str(tmp_path / "study")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env(),
    )
    elapsed = time.time() - t0
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "no node type of this cluster can ever offer a worker of 1 CPU + 1 big_accel" in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert elapsed < 60, elapsed
    assert not (tmp_path / "study" / "manifest.json").exists()  # refused before any stage
