"""How a local Ray is started: the dashboard that Ray Train's cleaner needs, only where Ray has one."""

from __future__ import annotations

import importlib.util
import os

from cxr_ray import runtime


def test_local_cluster_gets_a_dashboard_on_a_free_port(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    options = runtime._state_api_for_this_cluster()
    assert options["include_dashboard"] is True
    assert os.environ["RAY_API_SERVER_ADDRESS"] == f"http://127.0.0.1:{options['dashboard_port']}"


def test_ray_without_dashboard_dependencies_starts_without_one(monkeypatch):
    # A minimal `ray` (no [default] extra) lacks aiohttp_cors; asking it for a
    # dashboard makes ray.init() fail (seen on the GPU machine's slim Ray).
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aiohttp_cors" else real_find_spec(name, *a))
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert runtime._state_api_for_this_cluster() == {"include_dashboard": False}
    assert "RAY_API_SERVER_ADDRESS" not in os.environ


def test_local_means_a_fresh_cluster_like_no_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert runtime.cluster_to_join(None) is None
    assert runtime.cluster_to_join("local") is None
    assert runtime.cluster_to_join("127.0.0.1:6379") == "127.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert runtime.cluster_to_join(None) == "10.0.0.5:6379"
    assert runtime.cluster_to_join("local") is None  # an explicit argument wins over the environment
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert runtime.cluster_to_join(None) is None


def test_training_workers_leave_one_cpu_to_ray_data(ray_local):
    from cxr_ray.train.launch import cpus_per_worker

    assert ray_local.cluster_resources()["CPU"] == 2  # the session cluster
    assert cpus_per_worker(1) == 1.0  # alone, one spare CPU left: a whole CPU
    assert cpus_per_worker(2) == 0.5  # alone but 2 workers: they share the one non-spare CPU
    assert cpus_per_worker(1, concurrent=2) == 0.5
    assert cpus_per_worker(2, concurrent=2) == 0.25
