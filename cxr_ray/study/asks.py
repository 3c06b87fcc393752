"""What each study stage asks of the cluster: the line the study prints when a stage starts, and the shape it
asks the autoscaler for up front (cxr_ray.resources.requested).

Trainings ask for `width` trainings of `workers` workers each; Ray Data
stages for their actor pool's minimum (the pool grows on its own as nodes
come); ingest for read tasks; the quality metric and the report run in the
driver and ask for nothing. Only declared resources are asked of the
autoscaler: "auto" sizes itself from the local node.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxr_ray.resources import Resources, describe, of
from cxr_ray.study.profile import Profile

# Stages that train with Ray Train, and stages whose work is a Ray Data actor pool (some do both).
TRAINING_STAGES = frozenset({"gan", "families", "tune", "train", "generalise", "tamper", "claim"})
POOL_STAGES = frozenset({"generate", "families", "benign", "evaluate", "tamper", "attack", "generalise", "claim"})
DRIVER_STAGES = frozenset({"gan_quality", "report"})


@dataclass(frozen=True)
class StageAsk:
    text: str  # for the console: "2 trainings x 1 worker of (4 CPU + 1 GPU); actor pool 1-4 x (4 CPU + 1 GPU)"
    bundles: list[dict[str, float]]  # asked of the autoscaler up front ([]: nothing)


def stage_ask(stage: str, profile: Profile, declared: dict | None, width: int, cpu_share: float | None) -> StageAsk:
    """What `stage` asks for, given the study's declared resources, trainings side by side and CPU share."""
    from cxr_ray.resources import resolve_use_gpu

    res: Resources = of(declared)
    use_gpu = resolve_use_gpu(None, res)
    worker = res.bundle(use_gpu, cpu_share or 1.0)
    parts: list[str] = []
    bundles: list[dict[str, float]] = []
    if stage in TRAINING_STAGES:
        parts.append(f"{width} training(s) at once x {profile.workers} worker(s) of ({describe(worker)})")
        bundles += [worker] * (width * profile.workers)
    if stage in POOL_STAGES:
        actor = res.bundle(use_gpu, 1.0) if res.declared else None
        if actor:
            top = res.max_actors or res.min_actors
            parts.append(f"an actor pool of {res.min_actors}-{top} x ({describe(actor)})")
            if stage not in TRAINING_STAGES:
                bundles += [actor] * res.min_actors
        else:
            parts.append("an actor pool sized to the local node's free CPUs/GPUs (auto)")
    if stage == "ingest":
        parts.append("Ray Data read tasks of 1 CPU")
    if stage in DRIVER_STAGES or not parts:
        return StageAsk("nothing: it runs in the driver", [])
    if not res.declared:  # "auto" is for one machine: nothing to ask an autoscaler for
        return StageAsk("; ".join(parts) + " [auto: sized from the local node]", [])
    return StageAsk("; ".join(parts), bundles)
