"""The study's stages, one function each: configs from cxr_ray/study/plan.py, run through the manifest.

Each stage takes the study context and the upstream stages it depends on and
returns its own StageResult (manifest hash + outputs), so the dependency
between stages is visible in the arguments. A stage the manifest records as
done with the same hash is skipped and hands back its recorded outputs.
Ingest is keyed by the source's content fingerprint and hands on the
ingested table's content identity (cxr_ray/data/fingerprint.py), so a
study re-uses its stages wherever its data lives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from cxr_ray import storage
from cxr_ray.data import fingerprint
from cxr_ray.data.layout import CLASS_NAMES
from cxr_ray.manifest import Manifest, stage_hash
from cxr_ray.storage import S3Settings
from cxr_ray.study import plan
from cxr_ray.study.concurrency import Timeline, parallel
from cxr_ray.study.console import PlainConsole
from cxr_ray.study.layout import TIMELINE, StudyLayout
from cxr_ray.study.profile import Profile


@dataclass(frozen=True)
class StudyContext:
    """What every stage shares: the resolved profile, where things go, and how to run and record them."""

    profile: Profile
    layout: StudyLayout
    manifest: Manifest
    s3: S3Settings
    log: Callable[[str], None]
    timeline: Timeline
    width: int  # trainings at once
    cpu_share: float | None  # CPUs per training worker when trainings share a CPU-only cluster
    address: str | None = None  # Ray address (the driver has joined it already)
    console: PlainConsole | None = None  # stage lines and the closing table (None: every line through `log`)

    def stage(self, name: str, digest: str, fn: Callable[[], dict[str, Any]]) -> StageResult:
        """Run `fn` as stage `name` through the manifest; when it runs, say what it asks of the cluster (its start
        line), ask the autoscaler for that shape until it ends, and say how it ended."""
        from cxr_ray.resources import requested
        from cxr_ray.study.asks import stage_ask

        console = self.console or PlainConsole(self.log)
        ran = False

        def run() -> dict[str, Any]:
            nonlocal ran
            ran = True
            ask = stage_ask(name, self.profile, plan.declared(self.profile), self.width, self.cpu_share)
            console.say(f"[{name}] asks for {ask.text}")
            with console.stage(name), requested(ask.bundles, self.log):
                return fn()

        outputs = self.manifest.run(name, digest, run, console.say)
        if not ran:
            console.skipped(name)
        return StageResult(digest, outputs)

    def say(self, line: str) -> None:
        """A line the user sees on the console (not only in the log)."""
        (self.console or PlainConsole(self.log)).say(line)

    def timed(self, stage: str, name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        """`fn` as a job whose start and end go into the timeline."""
        return lambda: self.timeline.run(stage, name, fn)

    def stage_args(self) -> dict[str, Any]:
        """The keyword arguments every stage entry point takes."""
        return {"s3": self.s3, "log": self.log, "address": self.address}


@dataclass(frozen=True)
class StageResult:
    digest: str  # what downstream hashes fold in: the stage's manifest hash (ingest: its table's content identity)
    outputs: dict[str, Any]


def ingest(ctx: StudyContext) -> StageResult:
    """The source folder -> the real image table at the study resolution.

    Keyed by what the source holds, not where: the same files under another
    path skip it. Hands on the table's content identity, so an unchanged
    re-ingest keeps every stage below it.
    """
    from cxr_ray.data.ingest import format_summary, run_ingest

    cfg = plan.ingest_config(ctx.profile, ctx.layout)
    source = fingerprint.source_fingerprint(cfg.src, ctx.s3)
    ctx.say(f"[ingest] {cfg.src}: {source['files']} files, content fingerprint {source['digest']}")  # which data

    def run() -> dict[str, Any]:
        summary = run_ingest(cfg, **ctx.stage_args())
        ctx.log(format_summary(summary))
        return {"table": cfg.dest, "summary": summary, "source": source,
                "identity": fingerprint.table_identity(cfg.dest, ctx.s3)}

    done = ctx.stage("ingest", plan.ingest_hash(ctx.profile, source["digest"]), run)
    identity = done.outputs.get("identity") or fingerprint.table_identity(cfg.dest, ctx.s3)
    return StageResult(identity, done.outputs)


def gan(ctx: StudyContext, ingested: StageResult) -> StageResult:
    """One DCGAN per class, side by side."""
    from cxr_ray.train.gan import train_gan

    cfgs = plan.gan_configs(ctx.profile, ctx.layout)

    def run() -> dict[str, Any]:
        jobs = [
            (cls, ctx.timed("gan", f"dcgan-{cls}", lambda cfg=cfg: train_gan(cfg, **ctx.stage_args())))
            for cls, cfg in cfgs.items()
        ]
        return parallel(jobs, min(ctx.width, len(jobs)))

    return ctx.stage("gan", plan.gan_hash(cfgs, ingested.digest), run)


def gan_quality(ctx: StudyContext, gans: StageResult) -> StageResult:
    """Frechet distance and KID of each generator in a project-trained X-ray encoder's feature space.

    The final generator against the test split (the reference the issue names),
    and the curve over training from each epoch's sample grid against val.
    """
    from cxr_ray.gan_curve import quality_curve
    from cxr_ray.gan_quality import evaluate_generator

    seed, s3, log = ctx.profile.seed, ctx.s3, ctx.log

    def quality(gan_run: dict[str, Any], encoder: str) -> dict[str, Any]:
        return {
            **evaluate_generator(gan_run["checkpoint"], seed=seed, s3=s3, log=log, encoder_uri=encoder),
            "curve": quality_curve(gan_run["run_dir"], split="val", seed=seed, s3=s3, log=log, encoder_uri=encoder),
        }

    def run() -> dict[str, Any]:
        encoder = quality_encoder_uri(ctx)
        return {cls: quality(gans.outputs[cls], encoder) for cls in CLASS_NAMES}

    return ctx.stage("gan_quality", plan.gan_quality_hash(gans.digest), run)


def quality_encoder_uri(ctx: StudyContext) -> str:
    """The feature encoder's cache, named after the real table it trains on: never one trained on other data."""
    real = ctx.layout.real(ctx.profile.resolution)
    identity = fingerprint.table_identity(real, ctx.s3)
    return storage.join(ctx.layout.gan, f"quality-encoder-{ctx.profile.resolution}px{fingerprint.INPUTS_SUFFIX}{identity[:8]}.pt")


def generate(ctx: StudyContext, gans: StageResult, ingested: StageResult) -> StageResult:
    """The fake image tables: detector train/val fakes and held-out test fakes per class, stored as the archive
    (the ingested source files' format, recorded by ingest) and as raw generator pixels."""
    from cxr_ray.data.archive import read_archive_format
    from cxr_ray.generate import run_generate

    archive = read_archive_format(ingested.outputs["table"], ctx.s3).to_dict()
    cfgs = plan.generate_configs(ctx.profile, ctx.layout, gans.outputs, archive)

    def run() -> dict[str, Any]:
        summaries = {name: run_generate(cfg, **ctx.stage_args()) for name, cfg in cfgs.items()}
        return {"table": cfgs["archive"].dest, "raw_table": cfgs["raw"].dest, "summary": summaries["archive"],
                "raw_summary": summaries["raw"], "train_per_class": plan.fake_train_per_class(cfgs["archive"])}

    return ctx.stage("generate", plan.generate_hash(cfgs, gans.digest), run)


def families(ctx: StudyContext, ingested: StageResult) -> StageResult:
    """The generator families beside the DCGAN: per family one generator per class (side by side), its fakes in the
    archive format and raw (the DCGAN's seeds), and its Frechet distance / KID against the test split."""
    from cxr_ray.data.archive import read_archive_format
    from cxr_ray.gan_quality import evaluate_generator
    from cxr_ray.generate import run_generate
    from cxr_ray.train.gan import train_gan

    gan_cfgs = plan.family_gan_configs(ctx.profile, ctx.layout)
    archive = read_archive_format(ingested.outputs["table"], ctx.s3).to_dict()
    planned = plan.planned_family_runs(gan_cfgs)
    digest = plan.families_hash(gan_cfgs, plan.family_generate_configs(ctx.profile, ctx.layout, planned, archive), ingested.digest)

    def run() -> dict[str, Any]:
        jobs = [
            (f"{family}/{cls}", ctx.timed("families", f"{family}-{cls}", lambda cfg=cfg: train_gan(cfg, **ctx.stage_args())))
            for family, by_class in gan_cfgs.items() for cls, cfg in by_class.items()
        ]  # fmt: skip
        done = parallel(jobs, min(ctx.width, len(jobs)))
        gans = {family: {cls: done[f"{family}/{cls}"] for cls in by_class} for family, by_class in gan_cfgs.items()}
        encoder = quality_encoder_uri(ctx)
        out = {}
        for family, cfgs in plan.family_generate_configs(ctx.profile, ctx.layout, gans, archive).items():
            summaries = {name: run_generate(cfg, **ctx.stage_args()) for name, cfg in cfgs.items()}
            quality = {cls: evaluate_generator(gans[family][cls]["checkpoint"], seed=ctx.profile.seed, s3=ctx.s3, log=ctx.log,
                                               encoder_uri=encoder) for cls in CLASS_NAMES}  # fmt: skip
            out[family] = {"gans": gans[family], "table": cfgs["archive"].dest, "raw_table": cfgs["raw"].dest,
                           "summary": summaries["archive"], "raw_summary": summaries["raw"], "quality": quality}  # fmt: skip
        return out

    return ctx.stage("families", digest, run)


def tune(ctx: StudyContext, ingested: StageResult) -> StageResult:
    """Hyperparameter searches (validation AUC only) on real data, one model after another."""
    from cxr_ray.tune import run_search

    cfgs = plan.tune_configs(ctx.profile, ctx.layout, ingested.digest)

    def run() -> dict[str, Any]:
        return {m: ctx.timed("tune", f"tune-{m}", lambda cfg=cfg: run_search(cfg, **ctx.stage_args()))()
                for m, cfg in cfgs.items()}

    return ctx.stage("tune", plan.tune_hash(cfgs, ingested.digest), run)


def train(ctx: StudyContext, fakes: StageResult, tuned: StageResult) -> StageResult:
    """Classifiers (real, fake) and detectors, side by side; each with its tuned hyperparameters if any.

    Outputs are keyed by the study's run names; each run_dir is the folder the
    training really used (`name-inputs-<digest>` when `name` holds a run on other inputs).
    """
    from cxr_ray.train.classifier import train_classifier

    cfgs = plan.classifier_configs(ctx.profile, ctx.layout, tuned.outputs, ctx.cpu_share)

    def run() -> dict[str, Any]:
        jobs = [
            (cfg.run_name(), ctx.timed("train", cfg.run_name(), lambda cfg=cfg: train_classifier(cfg, **ctx.stage_args())))
            for cfg in cfgs
        ]
        return {name: {"run_dir": ctx.layout.run(out["run"]), "test": out["test"]}
                for name, out in parallel(jobs, ctx.width).items()}

    return ctx.stage("train", plan.train_hash(cfgs, fakes.digest, tuned.digest), run)


def benign(ctx: StudyContext, ingested: StageResult) -> StageResult:
    """The real val and test images re-processed as a hospital's own software does (re-encoding, resizing,
    window/level): val fixes each detector's benign-robust 1% point, test gives its false alarms."""
    from cxr_ray.benign import format_summary, run_benign

    cfg = plan.benign_config(ctx.profile, ctx.layout)

    def run() -> dict[str, Any]:
        summary = run_benign(cfg, **ctx.stage_args())
        ctx.log(format_summary(summary))
        return {"table": cfg.dest, "summary": summary}

    return ctx.stage("benign", plan.benign_hash(cfg, ingested.digest), run)


def evaluate(ctx: StudyContext, trained: StageResult, reprocessed: StageResult) -> StageResult:
    """Cross-evaluation of the runs the train stage handed on (perturbations, raw fakes, benign re-processing of
    reals, at each run's operating points) and the transfer matrix."""
    from cxr_ray.evaluate import run_evaluate
    from cxr_ray.transfer import run_transfer

    run_dirs = [run["run_dir"] for run in trained.outputs.values()]
    eval_cfg, transfer_cfg = plan.evaluate_configs(ctx.profile, ctx.layout, run_dirs)

    def run() -> dict[str, Any]:
        return {"evaluate": run_evaluate(eval_cfg, **ctx.stage_args()),
                "transfer": run_transfer(transfer_cfg, **ctx.stage_args())}

    digest = plan.evaluate_hash(eval_cfg, transfer_cfg, trained.digest, reprocessed.digest)
    return ctx.stage("evaluate", digest, run)


def generalise(ctx: StudyContext, fakes: StageResult, families: StageResult, reprocessed: StageResult) -> StageResult:
    """Leave-one-family-out: detectors trained on some generator families, tested on those they never saw, and the
    deployed detector (generalise.DEPLOYED_DESIGN on every family) that `cxr-ray scan` is pointed at."""
    from cxr_ray.generalise import run_generalise

    if not ctx.profile.families:
        # Recorded as done, nothing to run; the hash still follows the data, like every stage's.
        return ctx.stage("generalise", stage_hash("no families", [fakes.digest, reprocessed.digest]), lambda: {})
    cfg = plan.generalise_config(ctx.profile, ctx.layout, ctx.cpu_share)

    def run() -> dict[str, Any]:
        return ctx.timed("generalise", "generalise", lambda: run_generalise(cfg, **ctx.stage_args()))()

    return ctx.stage("generalise", plan.generalise_hash(cfg, fakes.digest, families.digest, reprocessed.digest), run)


def tamper(ctx: StudyContext, ingested: StageResult, reprocessed: StageResult) -> StageResult:
    """Local tampering (issue 16): the tamper model, every split's reals edited (inject into NORMAL, remove from
    PNEUMONIA), the localiser that finds and marks the edits (false alarms on the benign table), and the report's
    side-by-side examples. --tamper-epochs 0 skips it (and the attack)."""
    from cxr_ray.tamper.examples import write_examples
    from cxr_ray.tamper.job import run_tamper
    from cxr_ray.train.localiser import train_localiser
    from cxr_ray.train.tamper_model import train_tamper_model

    p, layout = ctx.profile, ctx.layout
    if not p.tamper_epochs:
        return ctx.stage("tamper", stage_hash("no tampering", [ingested.digest]), lambda: {})
    model_cfg, localiser_cfg = plan.tamper_model_config(p, layout), plan.localiser_config(p, layout)

    def run() -> dict[str, Any]:
        model = ctx.timed("tamper", "tamper-model", lambda: train_tamper_model(model_cfg, **ctx.stage_args()))()
        model_run = storage.join(model_cfg.storage, model["run"])
        edits = run_tamper(plan.tamper_job_config(p, layout, model_run), **ctx.stage_args())
        localiser = ctx.timed("tamper", "localiser", lambda: train_localiser(localiser_cfg, **ctx.stage_args()))()
        localiser_run = storage.join(localiser_cfg.storage, localiser["run"])
        examples = write_examples(layout.real(p.resolution), edits["dest"], localiser_run, layout.tamper_examples, ctx.s3)
        return {"model": {"run_dir": model_run, "val_l1": model["val_l1"], "epochs": model["epochs"]},
                "table": edits["dest"], "edits": edits, "localiser": {"run_dir": localiser_run, "test": localiser["test"]},
                "examples": examples}  # fmt: skip

    return ctx.stage("tamper", plan.tamper_hash(p, layout, ingested.digest, reprocessed.digest), run)


def attack(ctx: StudyContext, tampered: StageResult, trained: StageResult) -> StageResult:
    """How often the test edits flip the pneumonia classifiers the train stage handed on, against the same images
    unedited: its own stage, so a retrained classifier re-runs the attack, not the edits."""
    from cxr_ray.tamper.attack import run_attack

    if not tampered.outputs:
        return ctx.stage("attack", stage_hash("no tampering", [tampered.digest]), lambda: {})
    cfg = plan.attack_config(ctx.profile, ctx.layout, plan.pneumonia_runs(trained.outputs))
    return ctx.stage("attack", plan.attack_hash(cfg, tampered.digest, trained.digest), lambda: run_attack(cfg, **ctx.stage_args()))


def claim(ctx: StudyContext, fakes: StageResult) -> StageResult:
    """The seed's transfer claim in both readings: per model and seed a classifier trained on fakes and a real
    control matched in images per class and steps, side by side, then scored on real and fake test images."""
    from cxr_ray.claim import run_claim
    from cxr_ray.train.classifier import train_classifier

    pairs = plan.claim_trainings(ctx.profile, ctx.layout, fakes.outputs["train_per_class"], ctx.cpu_share)

    def run() -> dict[str, Any]:
        if not pairs:
            return {}  # no claim models: recorded as done, nothing to train
        cfgs = [cfg for pair in pairs for cfg in pair]
        jobs = [(cfg.run_name(), ctx.timed("claim", cfg.run_name(), lambda cfg=cfg: train_classifier(cfg, **ctx.stage_args())))
                for cfg in cfgs]
        done = parallel(jobs, ctx.width)
        run_dir = lambda cfg: storage.join(ctx.layout.claim_runs, done[cfg.run_name()]["run"])  # noqa: E731
        claim_cfg = plan.claim_config(ctx.profile, ctx.layout, [run_dir(a) for a, _ in pairs], [run_dir(b) for _, b in pairs])
        return {"runs": {name: out["test"] for name, out in done.items()}, "claim": run_claim(claim_cfg, **ctx.stage_args())}

    return ctx.stage("claim", plan.claim_hash(pairs, fakes.digest), run)


# Every stage in the order the study runs it, with the stages whose results it takes (run.run_study, dry_run).
PIPELINE: tuple[tuple[str, Callable[..., StageResult], tuple[str, ...]], ...] = (
    ("ingest", ingest, ()),
    ("gan", gan, ("ingest",)),
    ("gan_quality", gan_quality, ("gan",)),
    ("generate", generate, ("gan", "ingest")),
    ("families", families, ("ingest",)),
    ("tune", tune, ("ingest",)),
    ("train", train, ("generate", "tune")),
    ("benign", benign, ("ingest",)),
    ("evaluate", evaluate, ("train", "benign")),
    ("generalise", generalise, ("generate", "families", "benign")),
    ("tamper", tamper, ("ingest", "benign")),
    ("attack", attack, ("tamper", "train")),
    ("claim", claim, ("generate",)),
)


def report(ctx: StudyContext, t_study: float) -> dict[str, str]:
    """The timeline, then the report (always rebuilt: cheap, and it should show this run's timeline)."""
    from cxr_ray.report.build import build_report

    record_timeline(ctx, t_study)
    return build_report(ctx.layout, ctx.s3, log=ctx.log)


def record_timeline(ctx: StudyContext, t_study: float) -> None:
    """Keep the trainings' start/end across re-runs: a skipped stage keeps its earlier rows."""
    manifest, rows = ctx.manifest, ctx.timeline.rows
    previous = manifest.stages.get(TIMELINE, {}).get("outputs", {}).get("rows", [])
    fresh = {r["name"] for r in rows}
    kept = [r for r in previous if r["name"] not in fresh] + rows
    manifest.start(TIMELINE, "-")
    manifest.finish(TIMELINE, {"rows": kept, "max_parallel": ctx.width, "study_seconds": time.time() - t_study})
