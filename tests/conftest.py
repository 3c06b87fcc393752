"""Real parts for tests: a local Ray, a real HTTP S3 endpoint (moto's server), tiny real images."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "cxr_ray" / "sample" / "chest_xray"
SHARED_DATA = REPO.parent / "shared" / "data" / "chest_xray"

# Ray's token authentication, as the README and the cluster configs use it: one random token for the session's
# clusters, drivers and `ray job submit` calls, inherited by every process the tests start.
if "ray" in sys.modules and "RAY_AUTH_MODE" not in os.environ:
    # Ray reads RAY_AUTH_MODE once, when it is imported, and pytest imported it before this file ran (pyproject's
    # filterwarnings names RayDeprecationWarning): this process is without auth, so every process of the session is.
    # scripts/test.sh (the README's command) exports RAY_AUTH_MODE=token first: the suite runs with token auth there.
    os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

# Ray Train's own switches, set before any cluster starts so its controllers and workers inherit them. A training's
# fixed cost here is Python processes starting on two cores (docs/performance.md): the preemption watcher is one more
# per training, and no node of a cluster on this one machine is ever drained or preempted; the controller polls its
# workers every 2 s by default, a wait at each start and end of a run that takes seconds.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


# Set while the session's `ray_cluster` runs: a test that needs the machine's only Ray instance to itself (the
# autoscaling cluster) runs before it or not at all.
SESSION_CLUSTER = {"running": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """A real `ray start --head` cluster for the whole session: tests join it, jobs are submitted to it.

    One Ray instance on the machine (a second one confuses Ray's own
    placement-group cleaner); `--block` ties its processes to this one, so
    terminating it stops exactly this cluster and nothing else.
    """
    port, dashboard = free_port(), free_port()
    # Started from the project's venv: a submitted job's `python` is then the venv's.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    proc = start_head(["--num-cpus=2", f"--port={port}"], dashboard, env)
    SESSION_CLUSTER["running"] = True
    yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}"}
    SESSION_CLUSTER["running"] = False
    stop_head(proc)


def start_head(args: list[str], dashboard: int, env: dict[str, str]) -> subprocess.Popen:
    """`ray start --head --block ARGS` in its own process group, returned once its dashboard answers."""
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", *args, f"--dashboard-port={dashboard}",
         "--dashboard-host=127.0.0.1", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", dashboard), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None, "ray start --head exited"
            time.sleep(0.5)
    return proc


def stop_head(proc: subprocess.Popen) -> None:
    """Stop a `start_head` cluster: its process group, killed when it does not end within 10 s."""
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        # Seen after a whole suite: `ray start --block` sat out the whole wait on SIGTERM; its group is killed sooner.
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def ray_local(ray_cluster):
    """This test process as a Ray driver on the session's cluster."""
    import ray

    from cxr_ray.runtime import init_ray

    init_ray(ray_cluster["address"])
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample64(ray_local, tmp_path_factory) -> str:
    """The embedded sample ingested once at 64 px, for every test that only reads it (ingest has its own tests)."""
    from cxr_ray.config import IngestConfig
    from cxr_ray.data.ingest import run_ingest

    dest = tmp_path_factory.mktemp("sample") / "real-64"
    run_ingest(IngestConfig(src=str(SAMPLE), dest=str(dest), resolution=64), log=lambda m: None)
    return str(dest)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1: a real endpoint that Ray workers reach over HTTP."""
    from moto.server import ThreadedMotoServer

    from cxr_ray.storage import S3Settings

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings = S3Settings(
        endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1", access_key="cxr-test-key", secret_key="cxr-test-secret-5b1e"
    )
    yield settings
    server.stop()


@pytest.fixture()
def s3_bucket(s3_server, request):
    """A fresh bucket per test, named after it."""
    import boto3

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    client = boto3_client(s3_server)
    client.create_bucket(Bucket=name)
    yield name


def boto3_client(settings):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
    )


def upload_tree(settings, local_root: Path, bucket: str, prefix: str) -> None:
    client = boto3_client(settings)
    for path in sorted(local_root.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(local_root).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


@pytest.fixture(scope="session")
def auth_s3_server():
    """A second moto server that enforces authentication: every key pair is unknown to it."""
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def make_kaggle_tree(root: Path, per_class: int = 6, test_per_class: int = 3) -> dict[str, int]:
    """Copy a few real X-rays from the embedded sample into a Kaggle layout; returns counts."""
    counts = {}
    for split, n in (("train", per_class), ("test", test_per_class)):
        for cls in ("NORMAL", "PNEUMONIA"):
            files = sorted((SAMPLE / split / cls).iterdir())[:n]
            out = root / split / cls
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy2(f, out / f.name)
            counts[f"{split}/{cls}"] = len(files)
    return counts


@pytest.fixture()
def kaggle_tree(tmp_path) -> Path:
    root = tmp_path / "chest_xray"
    make_kaggle_tree(root)
    return root
