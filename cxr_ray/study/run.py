"""The full study as one job: ingest -> GAN per class -> GAN quality -> generate (archive-format and raw fakes)
-> tune -> train -> benign re-processing of reals -> evaluate -> leave-one-family-out -> local tampering -> the attack
on the pneumonia classifiers -> the seed's transfer claim -> report.

Shared by `jobs/full_study.py` (for `ray job submit`) and `cxr-ray study`.
Every stage is recorded in the study manifest (cxr_ray/manifest.py): a
re-run skips finished stages, resumes an interrupted one, and re-runs only
what a changed setting feeds into. Independent trainings (the two GANs, the
classifiers, the detectors) run side by side when the cluster has room.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from cxr_ray.manifest import Manifest
from cxr_ray.storage import S3Settings
from cxr_ray.study import plan, stages
from cxr_ray.study.concurrency import Timeline, cpu_share, slots
from cxr_ray.study.console import PlainConsole
from cxr_ray.study.layout import StudyLayout
from cxr_ray.study.profile import Profile, StudyOptions, resolve_profile


def check_training_fits(profile: Profile) -> None:
    """A study's trainings (profile.workers each) that no node set can ever host fail now, not after ingest: on a
    local cluster from its nodes, on a joined one from what its autoscaler says of one worker."""
    from cxr_ray.config import ConfigError
    from cxr_ray.resources import autoscaler_can_grow, autoscaler_refusal, describe, of
    from cxr_ray.train.launch import LaunchSpec, check_resources, cpus_per_worker, resolve_use_gpu, worker_resources

    declared = of(plan.declared(profile))
    spec = LaunchSpec(name="study-check", storage=".", num_workers=profile.workers,
                      cpus_per_worker=cpus_per_worker(profile.workers), resources=declared)
    use_gpu = resolve_use_gpu(None, declared)
    check_resources(spec, use_gpu)
    if autoscaler_can_grow():
        worker = worker_resources(spec, use_gpu)
        refusal = autoscaler_refusal(worker)
        if refusal:
            raise ConfigError(f"resources: no node type of this cluster can ever offer a worker of {describe(worker)} "
                              f"(its autoscaler: {refusal.split('. ')[0]})")


def run_study(
    options: StudyOptions,
    *,
    s3: S3Settings | None = None,
    log: Callable[[str], None] = print,
    address: str | None = None,
    console: PlainConsole | None = None,
) -> dict[str, Any]:
    """Run (or resume) every stage of the study; returns its root and the report's URIs.

    `console` says what the user sees (cxr_ray/study/console.py); without one every line goes through `log`.
    """
    from cxr_ray.runtime import init_ray, ray_links

    console = console or PlainConsole(log)
    profile = resolve_profile(options.profile)
    layout = StudyLayout.at(options.storage)
    plan.check_stages(profile, layout)
    s3 = s3 or S3Settings.from_env()
    ray = init_ray(address)
    check_training_fits(profile)
    manifest = Manifest.load(layout.root, s3)
    if options.overwrite:
        manifest.stages.clear()
    declared = plan.declared(profile)
    width = 1 if options.sequential else slots(ray, profile.workers, declared)
    ctx = stages.StudyContext(
        profile=profile, layout=layout, manifest=manifest, s3=s3, log=console.detail, timeline=Timeline(), width=width,
        cpu_share=None if declared else cpu_share(ray, profile.workers, width), address=address, console=console,
    )
    t_study = time.time()
    console.say(f"study {profile.name}: data {profile.data} -> {layout.root}; up to {width} trainings at once")
    for line in ray_links():
        console.say(line)

    results: dict[str, stages.StageResult] = {}
    for name, stage, inputs in stages.PIPELINE:
        results[name] = stage(ctx, *(results[i] for i in inputs))
    report = stages.report(ctx, t_study)
    console.summary(time.time() - t_study, report["html"])
    return {"root": layout.root, "report": report}


def run_study_cli(argv: Sequence[str] | None = None) -> int:
    """argv -> StudyOptions -> run_study; bad input prints one line and returns 2 (cli.common.guarded)."""
    import typer

    from cxr_ray.cli.common import guarded, s3_settings
    from cxr_ray.study.args import build_parser, study_options

    args = build_parser().parse_args(argv)
    s3 = s3_settings(args.s3_endpoint, args.s3_region)
    try:
        if args.dry_run:
            from cxr_ray.study.dry_run import dry_run, format_plan

            options = study_options(args)
            guarded(lambda: print(format_plan(dry_run(options, s3=s3), StudyLayout.at(options.storage).root)))
        else:
            guarded(lambda: _run_in_console(study_options(args), s3, args.address, args.verbose))
    except typer.Exit as exc:
        return exc.exit_code
    return 0


def _run_in_console(options: StudyOptions, s3: S3Settings, address: str | None, verbose: bool) -> dict[str, Any]:
    """The study behind its console; the Ray this run started or joined is let go inside it. An error leaves the
    console first, so its one line reaches the terminal."""
    import ray

    from cxr_ray.runtime import stop_ray
    from cxr_ray.study.console import study_console

    layout = StudyLayout.at(options.storage)
    plan.check_stages(resolve_profile(options.profile), layout)  # bad input: one line, and no log file for it
    ours = not ray.is_initialized()
    with study_console(layout.root, verbose, s3) as console:
        try:
            return run_study(options, s3=s3, address=address, console=console)
        finally:
            if ours:
                stop_ray()  # inside the console: Ray's shutdown messages go to the log too
