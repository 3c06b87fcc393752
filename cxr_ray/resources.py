"""What a stage's workers and actors ask of a node: declared in its config, not discovered from the cluster.

A stage that sized itself from `ray.cluster_resources()` when it started saw
0 GPUs on an autoscaling cluster whose GPU nodes start at zero, trained on
CPU, and never asked the autoscaler for a GPU node. So every training and
Ray Data job carries a `resources` mapping (plain data, so configs stay YAML
and hashable), read here:

- accelerator: "gpu" (one or more GPUs per worker or actor: the `full`
  profile), "cpu", or "auto" (use what the local node has right now: for a
  laptop or a fixed local cluster, never for an autoscaling one);
- gpus / cpus: per training worker or Ray Data actor;
- custom: resources only some node type offers ({"accel": 1} in the
  autoscaling test), so the autoscaler knows which node type to start;
- min_actors / max_actors: Ray Data actor pools are elastic between these.

Where a stage needs a shape up front, `requested` asks the autoscaler for it
and withdraws the request when the stage ends.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from cxr_ray.config import ConfigError

ACCELERATORS = ("auto", "cpu", "gpu")
# The execution-only key every config that launches work carries; stage hashes leave it out (study.plan).
RESOURCES_FIELD = "resources"


@dataclass(frozen=True)
class Resources:
    """One training worker's or Ray Data actor's ask of a node."""

    accelerator: str = "auto"
    gpus: float = 1.0  # per worker or actor, on "gpu"
    cpus: float | None = None  # per worker or actor; None: 1 (trainings), the local node's share (pools)
    custom: Mapping[str, float] = field(default_factory=dict)
    min_actors: int = 1
    max_actors: int | None = None  # None: what fits now ("auto"), min_actors otherwise

    def __post_init__(self) -> None:
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(f"resources.accelerator must be one of {', '.join(ACCELERATORS)}, got {self.accelerator!r}")
        if not self.gpus > 0:
            raise ConfigError(f"resources.gpus must be positive, got {self.gpus}")
        if self.cpus is not None and not self.cpus > 0:
            raise ConfigError(f"resources.cpus must be positive, got {self.cpus}")
        for name, amount in self.custom.items():
            if name in ("CPU", "GPU") or not isinstance(amount, (int, float)) or not amount > 0:
                raise ConfigError(f"resources.custom: {name}={amount!r} must be a positive amount of a custom resource")
        if self.min_actors < 1 or (self.max_actors is not None and self.max_actors < self.min_actors):
            raise ConfigError(f"resources: need 1 <= min_actors <= max_actors, got {self.min_actors}..{self.max_actors}")

    @property
    def declared(self) -> bool:
        """Whether the shape is fixed by the config (not read off the local node)."""
        return self.accelerator != "auto"

    def use_gpu(self) -> bool | None:
        """True/False when declared; None ("auto"): whatever the cluster has now."""
        return None if self.accelerator == "auto" else self.accelerator == "gpu"

    def bundle(self, use_gpu: bool, cpus: float) -> dict[str, float]:
        """One worker's or actor's resources (a placement-group bundle)."""
        shape = {"CPU": self.cpus if self.cpus is not None else cpus}
        if use_gpu:
            shape["GPU"] = self.gpus
        return {**shape, **{k: float(v) for k, v in self.custom.items()}}

    def task_options(self, cpus: float = 1.0) -> dict[str, Any]:
        """`.options(...)` for one Ray task or actor of this shape ("auto": a GPU when the cluster has one)."""
        use_gpu = resolve_use_gpu(None, self)
        return {"num_cpus": self.cpus if self.cpus is not None else cpus, "num_gpus": self.gpus if use_gpu else 0,
                "resources": {k: float(v) for k, v in self.custom.items()}}


def of(value: Mapping[str, Any] | None, *, where: str = "resources") -> Resources:
    """A config's `resources` mapping (None: "auto") as Resources; ConfigError names a bad key."""
    if value is None:
        return Resources()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - set(Resources.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(Resources.__dataclass_fields__)}")
    try:
        return Resources(**{**value, "custom": dict(value.get("custom") or {})})
    except (TypeError, ValueError) as exc:  # a string where a number belongs, a list for custom
        raise ConfigError(f"{where}: {exc}; got {dict(value)!r}") from None


def parse_custom(items: tuple[str, ...] | list[str]) -> dict[str, float]:
    """NAME=AMOUNT strings (the command line's --custom-resources) as a mapping."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, amount = str(item).partition("=")
        try:
            out[name.strip()] = float(amount)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ConfigError(f"--custom-resources: expected NAME=AMOUNT (e.g. accel=1), got {item!r}")
    Resources(custom=out)  # checks the amounts
    return out


def describe(bundle: Mapping[str, float]) -> str:
    """{"CPU": 1, "GPU": 1} -> "1 CPU + 1 GPU"."""
    return " + ".join(f"{amount:g} {name}" for name, amount in bundle.items())


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) >= 1


def resolve_use_gpu(use_gpu: bool | None, resources: Resources) -> bool:
    """An explicit choice (--gpu/--no-gpu), else the declared accelerator; only "auto" looks at the cluster."""
    if use_gpu is not None:
        return use_gpu
    declared = resources.use_gpu()
    return cluster_has_gpus() if declared is None else declared


def placement_room(per_worker: dict[str, float], nodes: list[dict[str, float]]) -> int:
    """How many bundles of `per_worker` these nodes (their total resources) hold; a bundle never spans nodes."""
    def room(node: dict[str, float]) -> int:
        # The small epsilon keeps 0.1 * 10 from counting as 9 bundles.
        return min(int(node.get(key, 0.0) / amount + 1e-9) for key, amount in per_worker.items() if amount > 0)

    return sum(room(node) for node in nodes)


def live_nodes() -> list[dict[str, float]]:
    """Each live node's total resources."""
    import ray

    return [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]


def actor_pool_options(max_actors: int | None = None, declared: dict | None = None) -> dict[str, Any]:
    """map_batches arguments (an elastic ActorPoolStrategy, each actor's resources) for a stage's actor pool.

    Declared (cxr_ray.resources, accelerator "gpu" or "cpu"): elastic between
    its min_actors and max_actors, each actor asking what it declares; the
    pool grows as an autoscaler adds nodes. "auto" (a laptop or one machine,
    which never grows): a fixed pool of what is free *now*, one actor per free
    GPU when there are GPUs, on CPUs the free CPUs (earlier stages may still
    hold some) less one, so the read/perturb/write tasks around the actors can
    always be scheduled; with every CPU held by actors they never could, and
    the job would hang; an elastic pool there would only start small.
    `max_actors` caps either.
    """
    import ray

    from cxr_ray.runtime import cluster_is_fixed

    res = of(declared)
    if res.declared:
        high = res.max_actors or res.min_actors
        options: dict[str, Any] = res.task_options()
        low = res.min_actors
        if cluster_is_fixed():  # no autoscaler will add room: no more actors than the nodes hold
            shape = {"CPU": options["num_cpus"], "GPU": options["num_gpus"], **options["resources"]}
            high = max(1, min(high, placement_room(shape, live_nodes())))
    else:
        free = ray.available_resources()
        gpus = int(free.get("GPU", 0))
        if gpus >= 1:
            high, options = gpus, {"num_gpus": 1, "num_cpus": 1}
        else:
            high, options = auto_cpu_pool(float(free.get("CPU", 1.0)))
        low = high
    if max_actors:
        high, low = min(high, max_actors), min(low, max_actors)
    if not options.get("resources"):
        options.pop("resources", None)
    return {"compute": ray.data.ActorPoolStrategy(min_size=min(low, high), max_size=high), **options}


def auto_cpu_pool(free_cpus: float) -> tuple[int, dict[str, Any]]:
    """("auto" on a CPU-only node) how many actors, and what each asks for, given the CPUs free now.

    The free CPUs less one, so Ray Data's read, perturb and write tasks around
    the actors can always be scheduled. Ray starts an actor's PyTorch with one
    intra-op thread per CPU it asked for, so on 2 CPUs the one actor scored on
    one core while the other waited for those light tasks (the quick study's
    evaluate stage: 14 models x 8 perturbations). Its threads are set to its
    share of every free CPU instead (OMP_NUM_THREADS in its runtime env, which
    Ray merges with the job's own env vars).
    """
    spare = max(free_cpus - 1.0, 0.5)
    high = max(1, int(spare))
    options: dict[str, Any] = {"num_cpus": round(min(1.0, spare / high), 2)}
    threads = int(free_cpus) // high
    if threads > 1:
        options["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": str(threads)}}
    return high, options


def pool_size(options: dict[str, Any]) -> int:
    """How many actors an `actor_pool_options` pool holds."""
    return int(options["compute"].max_size)


# What Ray's autoscaler says of a demand that no node type of the cluster can ever hold.
_INFEASIBLE = "No available node types can fulfill resource request"


def _autoscaler_events() -> list[dict[str, Any]] | None:
    """The autoscaler's events, or None where they cannot be read (a minimal Ray without the dashboard).

    No public Ray API reports a demand the autoscaler refuses; its events come through the state API's
    `list_cluster_events` (a DeveloperAPI), which the dashboard serves.
    """
    try:
        from ray.util.state import list_cluster_events

        return list_cluster_events(filters=[("source_type", "=", "AUTOSCALER")], limit=10_000,
                                   raise_on_missing_output=False, timeout=10)
    except Exception:  # no dashboard, or its state API not answering: nothing to read
        return None


def autoscaler_refusal(bundle: dict[str, float], wait_s: float = 30.0) -> str | None:
    """On a cluster with an autoscaler: its own words when no node type can ever hold `bundle`, else None.

    Ray would wait forever for such a request. A placement group of the one
    bundle is made (the autoscaler refuses an impossible one within a few of
    its update intervals; a possible one makes it start a node, the stage's
    first) and removed again once it is placed, refused, or `wait_s` has
    passed (nodes still booting: the study goes on and waits for them as Ray
    does). A cluster without autoscaler events (none runs) is not asked.
    """
    import time

    from ray.util.placement_group import placement_group, remove_placement_group

    seen = _autoscaler_events()
    if not seen:
        return None
    seen_ids = {event.get("event_id") for event in seen}
    group = placement_group([dict(bundle)])
    deadline = time.monotonic() + wait_s
    try:
        while time.monotonic() < deadline:
            if group.wait(timeout_seconds=1):
                return None
            for event in _autoscaler_events() or []:
                if event.get("event_id") not in seen_ids and _INFEASIBLE in str(event.get("message", "")):
                    return str(event["message"])
        return None
    finally:
        remove_placement_group(group)


def autoscaler_can_grow() -> bool:
    """Whether requests to the autoscaler can mean anything: a joined cluster (this process did not start it)."""
    from cxr_ray.runtime import cluster_is_fixed

    return not cluster_is_fixed()


@contextmanager
def requested(bundles: list[dict[str, float]], log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Ask the autoscaler for `bundles` up front (a stage's whole shape), and withdraw the ask when the stage ends.

    Placement groups and actors ask for themselves one at a time; asking for
    the shape first lets the autoscaler start every node the stage will use in
    one step. Only on a joined cluster: a local one has no autoscaler.
    """
    if not bundles or not autoscaler_can_grow():
        yield
        return
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)
    if log:
        log(f"  asked the autoscaler for {len(bundles)} x ({describe(bundles[0])})")
    try:
        yield
    finally:
        request_resources(bundles=[])  # withdrawn: idle nodes may go again
