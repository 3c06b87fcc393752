"""The study's plan without running it: each stage's fate (run, resume or skip) and why, from its manifest.

The same stage functions as the study compute each stage's hash; a context
whose `stage` decides instead of running stands in for the real one. A stage
that will run hands on no results, so the stages that take them are planned
to run after it: their hashes depend on what it will produce. Nothing here
starts Ray: it reads the manifest, the source files' fingerprint and the
finished stages' recorded outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from cxr_ray.manifest import Manifest
from cxr_ray.storage import S3Settings
from cxr_ray.study import plan, stages
from cxr_ray.study.concurrency import Timeline
from cxr_ray.study.layout import StudyLayout
from cxr_ray.study.profile import StudyOptions, resolve_profile


@dataclass(frozen=True)
class PlannedStage:
    name: str
    action: str  # "run", "resume" or "skip"
    why: str


class WillRun(Exception):
    """Raised by the planning context for a stage that is not done with its current hash."""

    def __init__(self, action: str, why: str) -> None:
        super().__init__(why)
        self.action, self.why = action, why


def decision(manifest: Manifest, name: str, digest: str) -> tuple[str, str]:
    """(action, why) for stage `name` whose inputs and settings hash to `digest`, as Manifest.run would decide."""
    entry = manifest.stages.get(name)
    if manifest.is_done(name, digest):
        return "skip", "done earlier with the same settings and inputs"
    if not entry:
        return "run", "never run under this study root"
    status, same = entry.get("status"), entry.get("config_hash") == digest
    if status in ("running", "failed") and same:
        return "resume", f"was {status} last time with the same settings (resumes from its checkpoints)"
    if status in ("running", "failed"):
        return "run", f"was {status} last time, with other settings or inputs"
    return "run", "its settings or inputs changed since it ran"


@dataclass(frozen=True)
class PlanningContext(stages.StudyContext):
    """A StudyContext whose stages are decided, not run."""

    def stage(self, name: str, digest: str, fn: Callable[[], dict[str, Any]]) -> stages.StageResult:
        action, why = decision(self.manifest, name, digest)
        if action != "skip":
            raise WillRun(action, why)
        return stages.StageResult(digest, self.manifest.outputs(name))


def dry_run(options: StudyOptions, *, s3: S3Settings | None = None) -> list[PlannedStage]:
    """Every stage's planned action, in the order the study runs them; the report is always rebuilt."""
    profile = resolve_profile(options.profile)
    layout = StudyLayout.at(options.storage)
    plan.check_stages(profile, layout)
    s3 = s3 or S3Settings.from_env()
    manifest = Manifest.load(layout.root, s3)
    if options.overwrite:
        manifest.stages.clear()
    ctx = PlanningContext(profile=profile, layout=layout, manifest=manifest, s3=s3, log=lambda _: None,
                          timeline=Timeline(), width=1, cpu_share=None)  # fmt: skip
    results: dict[str, stages.StageResult | None] = {}
    planned = []
    for name, stage, inputs in stages.PIPELINE:
        waiting = [i for i in inputs if results[i] is None]
        results[name] = None
        if waiting:
            whose = "its" if len(waiting) == 1 else "their"
            planned.append(PlannedStage(name, "run", f"after {', '.join(waiting)} (takes {whose} results)"))
            continue
        try:
            results[name] = stage(ctx, *(results[i] for i in inputs))
        except WillRun as will:
            planned.append(PlannedStage(name, will.action, will.why))
            continue
        planned.append(PlannedStage(name, "skip", "done earlier with the same settings and inputs"))
    planned.append(PlannedStage("report", "run", "always rebuilt"))
    return planned


def format_plan(planned: list[PlannedStage], root: str) -> str:
    """A header, then one line per stage: `  skip    gan          done earlier with ...`."""
    width = max(len(p.name) for p in planned)
    lines = [f"study {root}: the plan (dry run; Ray not started)"]
    return "\n".join(lines + [f"  {p.action:<7} {p.name:<{width}}  {p.why}" for p in planned])
