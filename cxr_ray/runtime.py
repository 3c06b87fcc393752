"""Starting or joining Ray, with the project's defaults.

Under `ray job submit` (or with RAY_ADDRESS set) this joins that cluster;
otherwise it starts a local one. Ray Data's console progress bars are off
unless asked for: batch jobs write summaries, not redraws.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

# How long the address check waits for a TCP connection: well inside the
# 30 s a user should wait to hear that a cluster cannot be reached.
CONNECT_TIMEOUT_S = 10.0

# True once this process has started its own local cluster: it has no
# autoscaler, so what its nodes hold now is all it will ever hold.
_started_local = False

# What ray.init answered in this process (its dashboard URL and session folder), or None.
_context: Any = None


def _state_api_for_this_cluster() -> dict[str, Any]:
    """ray.init arguments (and one environment variable) that point Ray's state API at the cluster we start.

    Ray Train's PlacementGroupCleaner, a detached actor, asks the state API
    whether a trainer's controller is still alive, and frees the trainer's
    placement group when it is not (e.g. a Tune trial stopped early by
    ASHA). Left alone, the state API finds "the" cluster through
    /tmp/ray/ray_current_cluster, which an earlier `ray start` may have left
    pointing at a dead cluster; the cleaner then crashed, the placement group
    stayed reserved, and the next trial waited forever (seen on 2 CPUs). So
    the local cluster gets a dashboard (which serves the state API) on a
    free port, and RAY_API_SERVER_ADDRESS, inherited by every Ray process
    started from here, names it.
    """
    import importlib.util
    import socket

    if importlib.util.find_spec("aiohttp_cors") is None:
        # A minimal Ray (no ray[default]) has no dashboard to start; only the
        # early-stopped Tune trial case above is then exposed.
        return {"include_dashboard": False}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    return {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port}


def cluster_to_join(address: str | None) -> str | None:
    """The running cluster to join (the argument, else RAY_ADDRESS), or None for a fresh local one.

    "local" means a fresh local cluster too, and gets the same dashboard set-up:
    started by ray.init("local") alone, every Ray Train run stalled 12 s at
    its end while the placement-group cleaner asked a stale cluster's state API.
    """
    target = address or os.environ.get("RAY_ADDRESS")
    return target if target and target != "local" else None


def check_reachable(target: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """ConfigError in seconds when a HOST:PORT (or ray://HOST:PORT) Ray address does not accept a TCP connection.

    ray.init waits minutes on an unreachable address, and ignores SIGTERM
    while it does; a connect with a timeout answers first, and Ctrl-C
    interrupts it. Other forms ("auto", other schemes) are left to Ray.
    """
    from cxr_ray.config import ConfigError

    hostport = target[len("ray://"):] if target.startswith("ray://") else target
    if target == "auto" or "://" in hostport:
        return
    host, sep, port = hostport.partition("/")[0].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"address: expected HOST:PORT or ray://HOST:PORT, got {target!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConfigError(f"address: cannot reach a Ray cluster at {host}:{port} ({reason})") from None


def cluster_is_fixed() -> bool:
    """Whether the cluster this process uses can never grow: a local one it started itself (no autoscaler)."""
    return _started_local


def init_ray(address: str | None = None, num_cpus: int | None = None, progress_bars: bool = False) -> Any:
    global _started_local, _context
    import ray

    if not ray.is_initialized():
        _context = None
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
        target = cluster_to_join(address)
        if target:
            check_reachable(target)
            kwargs["address"] = target
        else:
            # "local": always a fresh cluster for this process, never a stale
            # one recorded in /tmp/ray by an earlier `ray start`.
            kwargs["address"] = "local"
            kwargs.update(_state_api_for_this_cluster())
            if num_cpus:
                kwargs["num_cpus"] = num_cpus
        _context = ray.init(**kwargs)
        _started_local = not target
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress_bars
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray


def ray_links() -> list[str]:
    """Lines naming the dashboard and the folder of Ray's own logs, when this process started or joined Ray."""
    import ray

    if _context is None or not ray.is_initialized():
        return []
    lines = []
    if getattr(_context, "dashboard_url", None):
        url = _context.dashboard_url
        lines.append(f"dashboard: {url if '://' in url else 'http://' + url}")
    session = (getattr(_context, "address_info", None) or {}).get("session_dir")
    if session:
        lines.append(f"Ray's own logs: {os.path.join(session, 'logs')}")
    return lines


def stop_ray() -> None:
    """Stop the local Ray this process started, or leave (only disconnect from) the cluster it joined."""
    global _started_local, _context
    import ray

    ray.shutdown()
    _started_local, _context = False, None
