"""Starting or joining Ray, with the project's defaults.

Under `ray job submit` (or with RAY_ADDRESS set) this joins that cluster;
otherwise it starts a local one. Ray Data's console progress bars are off
unless asked for: batch jobs write summaries, not redraws.
"""

from __future__ import annotations

import logging
import os
from typing import Any


def init_ray(address: str | None = None, num_cpus: int | None = None, progress_bars: bool = False) -> Any:
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
        if address or os.environ.get("RAY_ADDRESS"):
            kwargs["address"] = address or os.environ["RAY_ADDRESS"]
        else:
            # "local": always a fresh cluster for this process, never a stale
            # one recorded in /tmp/ray by an earlier `ray start`.
            kwargs["address"] = "local"
            kwargs["include_dashboard"] = False
            if num_cpus:
                kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress_bars
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray
