"""Every value is checked where it enters (CLI, YAML, study options): one `error:` line naming the field, exit 2,
no traceback, in seconds, before Ray starts or any stage runs (issue 13, point 6).

Most rows need no Ray at all: RAY_ADDRESS points at an unused loopback port, so a
row whose value slipped through would fail on the address line instead of
starting a cluster (and the row would fail on its expected text).
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from conftest import free_port
from cxr_ray.cli.app import app
from cxr_ray.config import ConfigError, IngestConfig, from_dict


@pytest.fixture()
def no_ray(monkeypatch):
    """Any attempt to join Ray fails at once on the address check (nothing listens on the port)."""
    port = free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    return port


# (id, argv, YAML config or None, text the one error line must hold)
CLI_CASES = [
    ("ingest-seed", ["ingest", "SRC", "DEST", "--seed", "-1"], None, "seed must be at least 0, got -1"),
    ("scan-max-actors", ["scan", "SRC", "--detector", "D", "--out", "OUT", "--max-actors", "-3"], None,
     "max_actors must be at least 1, got -3"),
    ("yaml-epochs-float", ["train", "--data", "T"], "epochs: 2.5\n", "epochs: expected an integer, got 2.5"),
    ("yaml-epochs-text", ["train", "--data", "T"], 'epochs: "ten"\n', "epochs: expected an integer, got 'ten'"),
    ("yaml-n-boot-0", ["train", "--data", "T"], "n_boot: 0\n", "n_boot must be at least 1, got 0"),
    ("yaml-label-smoothing", ["train", "--data", "T"], "label_smoothing: 5\n", "label_smoothing must be in [0, 1), got 5"),
    ("yaml-lr-text", ["train", "--data", "T"], "lr: 1e-3\n", "lr: expected a finite number, got '1e-3' (YAML reads"),
    ("yaml-workers-bool", ["tune", "--data", "T"], "workers_per_trial: true\n",
     "workers_per_trial: expected an integer, got True"),
    ("yaml-lr-range-text", ["tune", "--data", "T"], "lr_range: [0.001, high]\n", "lr_range: expected a finite number"),
    ("weight-decay", ["train", "--data", "T", "--weight-decay", "-5"], None, "weight_decay must be at least 0, got -5"),
    ("max-failures", ["train", "--data", "T", "--max-failures", "-1"], None, "max_failures must be at least 0, got -1"),
    ("gan-max-failures", ["train-gan", "T", "--class", "NORMAL", "--max-failures", "-1"], None, "max_failures must be >= 0"),
    ("lr-inf", ["train", "--data", "T", "--lr", "inf"], None, "lr: expected a finite number, got inf"),
    ("gan-lr-nan", ["train-gan", "T", "--class", "NORMAL", "--lr", "nan"], None, "lr: expected a finite number, got nan"),
    ("train-name", ["train", "--data", "T", "--name", "../../.."], None, "name must be a plain folder name"),
    ("tune-name", ["tune", "--data", "T", "--name", ".."], None, "name must be a plain folder name"),
    ("tune-gan-name", ["tune-gan", "--data", "T", "--name", "a/b"], None, "name must be a plain folder name"),
    ("train-gan-name", ["train-gan", "T", "--class", "NORMAL", "--name", "."], None, "name must be a plain folder name"),
    ("study-epochs", ["study", "--epochs", "-1"], None, "--epochs must be at least 1, got -1"),
    ("study-fakes", ["study", "--fakes-per-class", "1"], None, "--fakes-per-class must be at least 2, got 1"),
    ("study-robust-aug", ["study", "--robust-aug", "2"], None, "--robust-aug must be in [0, 1], got 2.0"),
    ("study-seed", ["study", "--seed", "-4"], None, "--seed must be at least 0, got -4"),
]


def one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output, output
    return errors[0]


@pytest.mark.parametrize("argv, yaml_text, expected", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_value_is_one_line_naming_the_field(argv, yaml_text, expected, no_ray, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the study's default root (runs/study) must stay unwritten
    if yaml_text is not None:
        (tmp_path / "config.yaml").write_text(yaml_text)
        argv = [*argv, "--config", str(tmp_path / "config.yaml")]
    t0 = time.monotonic()
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert expected in one_error_line(result.output)
    assert time.monotonic() - t0 < 30
    assert sorted(p.name for p in tmp_path.iterdir()) == (["config.yaml"] if yaml_text else [])


def test_study_with_a_bad_value_refuses_before_anything_runs(tmp_path):
    """The issue's case, as a real process: today it ran ingest, the GANs, quality, generation and Tune first."""
    root = tmp_path / "study"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_ray.cli.app", "study", "--epochs", "-1", "--storage", str(root)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RAY_AUTH_MODE": "token"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "--epochs must be at least 1, got -1" in one_error_line(proc.stderr)
    assert time.monotonic() - t0 < 60  # an interpreter and torch import on a busy 2-CPU machine
    assert not root.exists()


# ---------------------------------------------------------------- the Ray address


def test_unreachable_address_fails_in_seconds_with_one_line(kaggle_tree, tmp_path):
    port = free_port()  # bound and released: nothing listens there
    dest = tmp_path / "out"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_ray.cli.app", "ingest", str(kaggle_tree), str(dest), "--address", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RAY_AUTH_MODE": "token"},
    )
    assert proc.returncode == 2, proc.stderr
    assert f"address: cannot reach a Ray cluster at 127.0.0.1:{port}" in one_error_line(proc.stderr)
    assert time.monotonic() - t0 < 30
    assert not dest.exists()


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_address_check_connects_to_host_and_port(form):
    from cxr_ray.runtime import check_reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(form.format(port=server.getsockname()[1]), timeout=5)  # listening: passes
    with pytest.raises(ConfigError, match="address: cannot reach a Ray cluster"):
        check_reachable(form.format(port=free_port()), timeout=5)


@pytest.fixture()
def black_hole():
    """A loopback port that never answers a connect: a listener with its one-place backlog already full."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=5)
    yield f"127.0.0.1:{port}"
    filler.close()
    server.close()


def test_an_address_that_never_answers_fails_after_the_timeout(black_hole):
    from cxr_ray.runtime import check_reachable

    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"address: cannot reach a Ray cluster at .* \(no answer within 2 s\)"):
        check_reachable(black_hole, timeout=2)
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_stop_the_wait(black_hole, signal_name):
    import signal

    code = f"from cxr_ray.runtime import check_reachable; print('waiting', flush=True); check_reachable({black_hole!r}, timeout=120)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "waiting"
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(getattr(signal, signal_name))
    assert proc.wait(timeout=10) != 0
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("address", ["127.0.0.1", "host:port", ":6379"])
def test_malformed_address_is_named(address):
    from cxr_ray.runtime import check_reachable

    with pytest.raises(ConfigError, match="address: expected HOST:PORT"):
        check_reachable(address)


def test_auto_and_other_schemes_are_left_to_ray():
    from cxr_ray.runtime import check_reachable

    check_reachable("auto")
    check_reachable("http://127.0.0.1:1")


# ---------------------------------------------------------------- types in from_dict

BASE = {"src": "a", "dest": "b"}
TYPE_CASES = [
    # (field values, the error text, or None when accepted)
    ({"resolution": 64.0}, "resolution: expected an integer, got 64.0"),
    ({"resolution": "64"}, "resolution: expected an integer, got '64'"),
    ({"seed": True}, "seed: expected an integer, got True"),
    ({"val_fraction": "0.1"}, "val_fraction: expected a finite number, got '0.1'"),
    ({"val_fraction": math.inf}, "val_fraction: expected a finite number, got inf"),
    ({"val_fraction": math.nan}, "val_fraction: expected a finite number, got nan"),
    ({"val_fraction": False}, "val_fraction: expected a finite number, got False"),
    ({"src": 3}, "src: expected a string, got 3"),
    ({"overwrite": "yes"}, "overwrite: expected true or false, got 'yes'"),
    ({"val_fraction": 0}, None),  # an integer is a number
    ({"seed": 7, "overwrite": True}, None),
]


@pytest.mark.parametrize("values, error", TYPE_CASES)
def test_from_dict_checks_values_against_the_type_hints(values, error):
    if error is None:
        from_dict(IngestConfig, {**BASE, **values})
        return
    with pytest.raises(ConfigError) as exc:
        from_dict(IngestConfig, {**BASE, **values})
    assert str(exc.value) == error


def test_optional_tuple_and_dict_hints():
    from cxr_ray.train.classifier import ClassifierConfig
    from cxr_ray.tune import SearchConfig

    assert from_dict(ClassifierConfig, {"data": "t", "fakes": None, "cpus_per_worker": None}).fakes is None
    assert from_dict(ClassifierConfig, {"data": "t", "inject_failure": {"epoch": 1}}).inject_failure == {"epoch": 1}
    assert from_dict(SearchConfig, {"data": "t", "batch_sizes": [16, 32]}).batch_sizes == (16, 32)
    for values, error in [
        ({"batch_sizes": [16, 2.5]}, "batch_sizes: expected an integer, got 2.5 in [16, 2.5]"),
        ({"lr_range": [0.001]}, "lr_range: expected a list of 2 values, got [0.001]"),
        ({"lr_range": 0.001}, "lr_range: expected a list, got 0.001"),
        ({"fakes": 5}, "fakes: expected a string, got 5"),
    ]:
        with pytest.raises(ConfigError) as exc:
            from_dict(SearchConfig, {"data": "t", **values})
        assert str(exc.value) == error


def test_direct_construction_is_checked_too():
    """Stage functions build configs directly (train-gan, the study): their values are checked the same way."""
    from cxr_ray.train.gan import GanConfig

    with pytest.raises(ConfigError, match="epochs: expected an integer, got 2.5"):
        GanConfig(data="t", epochs=2.5)


# ---------------------------------------------------------------- the study's stages


def test_every_stage_config_is_built_before_ray(tmp_path):
    from cxr_ray.study.layout import StudyLayout
    from cxr_ray.study.profile import PROFILES, resolve_profile
    from cxr_ray.study.plan import check_stages

    layout = StudyLayout.at(str(tmp_path / "study"))
    check_stages(resolve_profile(PROFILES["quick"]), layout)  # the defaults pass
    check_stages(resolve_profile(replace(PROFILES["full"], data="s3://b/x")), layout)
    with pytest.raises(ConfigError, match="image_size|resolution"):
        check_stages(replace(resolve_profile(PROFILES["quick"]), resolution=100), layout)
    assert not (tmp_path / "study").exists()


# ---------------------------------------------------------------- resource requests

RESOURCE_CASES = [
    # (workers, per worker, nodes' resources, text of the refusal or None)
    (100, {"CPU": 1.0}, [{"CPU": 2.0}], "100 training workers of 1 CPU each can never run here"),
    (2, {"CPU": 1.0, "GPU": 1}, [{"CPU": 2.0}], "(short of GPU); drop --gpu"),
    (3, {"CPU": 1.5}, [{"CPU": 2.0}, {"CPU": 2.0}], "room for 2 such worker(s)"),
    (2, {"CPU": 1.0}, [{"CPU": 2.0}], None),
    (2, {"CPU": 1.0}, [{"CPU": 1.0}, {"CPU": 1.0}], None),
    (10, {"CPU": 0.1}, [{"CPU": 1.0}], None),
    (4, {"CPU": 1.0, "GPU": 1}, [{"CPU": 0.0}, {"CPU": 8.0, "GPU": 4.0}], None),
]


@pytest.mark.parametrize("workers, per_worker, nodes, refusal", RESOURCE_CASES)
def test_placement_shortfall(workers, per_worker, nodes, refusal):
    from cxr_ray.train.launch import placement_shortfall

    why = placement_shortfall(workers, per_worker, nodes)
    assert why is None if refusal is None else refusal in why and why.startswith("workers:")


def test_a_cluster_that_may_grow_is_never_refused():
    """Issue 17: a joined cluster may autoscale (a 0-CPU head, GPU groups from 0); only Ray can tell, so it is left to Ray."""
    from cxr_ray.train.launch import LaunchSpec, check_resources

    check_resources(LaunchSpec(name="x", storage=".", num_workers=1000), use_gpu=True, fixed=False)


def test_impossible_request_on_a_real_cluster_fails_in_seconds(ray_local):
    from cxr_ray import runtime
    from cxr_ray.train.launch import LaunchSpec, check_resources

    assert not runtime.cluster_is_fixed()  # joined, not started here
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="100 training workers of 1 CPU each"):
        check_resources(LaunchSpec(name="x", storage=".", num_workers=100), use_gpu=False, fixed=True)
    with pytest.raises(ConfigError, match="short of GPU"):
        check_resources(LaunchSpec(name="x", storage=".", num_workers=1), use_gpu=True, fixed=True)
    check_resources(LaunchSpec(name="x", storage=".", num_workers=2), use_gpu=False, fixed=True)
    assert time.monotonic() - t0 < 10


@pytest.fixture(scope="module")
def small_table(ray_local, tmp_path_factory) -> str:
    from conftest import make_kaggle_tree
    from cxr_ray.data.ingest import run_ingest

    root = tmp_path_factory.mktemp("validation")
    make_kaggle_tree(root / "src", per_class=4, test_per_class=2)
    run_ingest(IngestConfig(src=str(root / "src"), dest=str(root / "table"), resolution=64), log=lambda m: None)
    return str(root / "table")


@pytest.mark.parametrize("flags, expected", [
    (["--workers", "100"], "workers: 100 training workers of 1 CPU each can never run here"),
    (["--gpu", "--workers", "1"], "(short of GPU); drop --gpu"),
])
def test_train_with_an_impossible_request_fails_in_seconds(flags, expected, small_table, ray_cluster, tmp_path, monkeypatch):
    """Through the real command on the 2-CPU test cluster (today: ControllerError after 201 s, or no result in 150 s).

    The session cluster is joined, so it counts as one that may grow; the flag says what
    `init_ray` records when this process starts its own (no autoscaler) local Ray.
    """
    from cxr_ray import runtime

    monkeypatch.setattr(runtime, "_started_local", True)
    storage = tmp_path / "runs"
    t0 = time.monotonic()
    result = CliRunner().invoke(app, ["train", "--data", small_table, "--storage", str(storage), "--name", "impossible",
                                      "--address", ray_cluster["address"], *flags])
    assert result.exit_code == 2, result.output
    assert expected in one_error_line(result.output)
    assert time.monotonic() - t0 < 30
    assert not list(storage.rglob("checkpoint_*"))  # Ray Train never started
