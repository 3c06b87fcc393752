"""Each stage's configs and manifest hash, from the profile, the layout and the upstream stages' outputs.

Pure (nothing runs, no Ray), so tests can check them. The hash inputs are
the study's promise to earlier study roots: a re-run skips a stage only when
its hash is unchanged, so the dicts hashed here (keys, values, upstream
hashes) must stay exactly as they are. Config classes load inside the
functions: they import torch.

Identity is content, not location (issue 13): ingest hashes the source's
fingerprint (cxr_ray/data/fingerprint.py), never its path, and the stages
below it fold in the ingested table's content identity, so the same data
under another path, or re-ingested unchanged, re-uses every stage.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, Sequence

from cxr_ray import storage
from cxr_ray.data.fingerprint import INPUTS_SUFFIX
from cxr_ray.data.layout import CLASS_NAMES
from cxr_ray.manifest import stage_hash
from cxr_ray.resources import RESOURCES_FIELD
from cxr_ray.study.layout import StudyLayout
from cxr_ray.study.profile import Profile

if TYPE_CHECKING:
    from cxr_ray.benign import BenignConfig
    from cxr_ray.claim import ClaimConfig
    from cxr_ray.config import IngestConfig
    from cxr_ray.evaluate import EvaluateConfig
    from cxr_ray.generalise import GeneraliseConfig
    from cxr_ray.generate import GenerateConfig
    from cxr_ray.tamper.attack import AttackConfig
    from cxr_ray.tamper.job import TamperConfig
    from cxr_ray.train.classifier import ClassifierConfig
    from cxr_ray.train.localiser import LocaliserConfig
    from cxr_ray.train.tamper_model import TamperModelConfig
    from cxr_ray.train.gan import GanConfig
    from cxr_ray.transfer import TransferConfig
    from cxr_ray.tune import SearchConfig


def declared(p: Profile) -> dict[str, Any] | None:
    """What each training worker and Ray Data actor of the study asks of a node (cxr_ray.resources); None: "auto"."""
    from cxr_ray.resources import parse_custom

    if p.accelerator == "auto" and not p.custom_resources and not p.cpus_per_worker:
        return None
    return {"accelerator": p.accelerator, "gpus": p.gpus_per_worker, "cpus": p.cpus_per_worker or None,
            "custom": parse_custom(p.custom_resources), "min_actors": p.pool_min, "max_actors": p.pool_max or None}


# Execution settings that do not change what a stage computes: its resources are left out of the hash, and a
# training's CPU share (how many trainings the cluster fits side by side) is hashed as unset, its value before
# shares existed, so a study resumed on a bigger or smaller cluster, or planned by --dry-run, keeps its stages.
_UNHASHED_SHARE = "cpus_per_worker"


def hashed(cfg: Any) -> dict[str, Any]:
    """A config's fields for a stage hash: where it runs is not what it computes."""
    fields = cfg if isinstance(cfg, dict) else asdict(cfg)
    out = {k: v for k, v in fields.items() if k != RESOURCES_FIELD}
    if _UNHASHED_SHARE in out:
        out[_UNHASHED_SHARE] = None
    return out


def ingest_config(p: Profile, layout: StudyLayout) -> IngestConfig:
    from cxr_ray.config import IngestConfig

    return IngestConfig(src=p.data, dest=layout.real(p.resolution), resolution=p.resolution, seed=p.seed, overwrite=True)


def ingest_hash(p: Profile, source_digest: str) -> str:
    """What ingest reads (the source's content fingerprint) and how; the source's path is left out."""
    return stage_hash({"source": source_digest, "resolution": p.resolution, "seed": p.seed}, [])


def gan_configs(p: Profile, layout: StudyLayout) -> dict[str, GanConfig]:
    """One DCGAN per class."""
    from cxr_ray.train.gan import GanConfig

    return {
        cls: GanConfig(
            data=layout.real(p.resolution), storage=layout.gan, class_name=cls, epochs=p.gan_epochs,
            ngf=p.gan_width, ndf=p.gan_width, num_workers=p.workers, seed=p.seed, resources=declared(p),
        )
        for cls in CLASS_NAMES
    }


def family_gan_configs(p: Profile, layout: StudyLayout) -> dict[str, dict[str, GanConfig]]:
    """family -> class -> one generator per class, like the DCGAN's, each with its family's usual optimiser."""
    from cxr_ray.models.generators import OPTIMISER

    base = gan_configs(p, layout)
    return {
        family: {cls: replace(cfg, family=family, image_size=p.resolution, lr=OPTIMISER[family][0], beta1=OPTIMISER[family][1])
                 for cls, cfg in base.items()}
        for family in p.families
    }


def planned_family_runs(gan_cfgs: dict[str, dict[str, GanConfig]]) -> dict[str, dict[str, dict[str, str]]]:
    """family -> class -> {"run_dir"}: where each generator will train (its default name), for the stage's hash
    before training; the tables are then generated from the runs training really used."""
    return {family: {cls: {"run_dir": storage.join(cfg.storage, cfg.run_name())} for cls, cfg in by_class.items()}
            for family, by_class in gan_cfgs.items()}  # fmt: skip


def family_generate_configs(
    p: Profile, layout: StudyLayout, gans: dict[str, dict[str, Any]], archive_format: dict[str, Any] | None
) -> dict[str, dict[str, GenerateConfig]]:
    """family -> {"archive", "raw"}: the DCGAN's seeds and storage formats, in the family's own tables."""
    out = {}
    for family, by_class in gans.items():
        cfgs = generate_configs(p, layout, by_class, archive_format)
        out[family] = {
            name: replace(cfg, dest=layout.family_fakes(family, p.resolution, raw=name == "raw")) for name, cfg in cfgs.items()
        }
    return out


def families_hash(gan_cfgs: dict[str, dict[str, GanConfig]], generate_cfgs: dict[str, dict[str, GenerateConfig]],
                  real_identity: str) -> str:  # fmt: skip
    gans = {family: {cls: hashed(cfg.stage_config()) for cls, cfg in by_class.items()} for family, by_class in gan_cfgs.items()}
    tables = {family: {name: hashed(cfg) for name, cfg in by_name.items()} for family, by_name in generate_cfgs.items()}
    return stage_hash({"gans": gans, "tables": tables}, [real_identity])


def gan_hash(cfgs: dict[str, GanConfig], real_identity: str) -> str:
    return stage_hash({cls: hashed(cfg.stage_config()) for cls, cfg in cfgs.items()}, [real_identity])


def gan_quality_hash(h_gan: str) -> str:
    return stage_hash("gan_quality", [h_gan])


def generate_configs(
    p: Profile, layout: StudyLayout, gans: dict[str, Any], archive_format: dict[str, Any] | None
) -> dict[str, GenerateConfig]:
    """The same generators and seeds twice: stored as the archive stores images (what the detectors learn and are
    tested on) and as raw generator pixels (the second condition). Detector train/val and held-out test seeds per class."""
    from cxr_ray.generate import TEST_SEED_START, GenerateConfig

    shared = dict(
        generators=tuple(gans[cls]["run_dir"] for cls in CLASS_NAMES), train_seeds=(0, p.fakes_per_class),
        test_seeds=(TEST_SEED_START, TEST_SEED_START + p.test_fakes_per_class), overwrite=True, resources=declared(p),
    )
    return {
        "archive": GenerateConfig(dest=layout.fakes(p.resolution), storage_format="archive", archive_format=archive_format, **shared),
        "raw": GenerateConfig(dest=layout.raw_fakes(p.resolution), **shared),
    }


def generate_hash(cfgs: dict[str, GenerateConfig], h_gan: str) -> str:
    return stage_hash({name: hashed(cfg) for name, cfg in cfgs.items()}, [h_gan])


def fake_train_per_class(cfg: GenerateConfig) -> int:
    """Fakes per class in the fake table's train split (the rest of the train seeds are its val split)."""
    start, end = cfg.split_ranges()["train"]
    return end - start


def tune_configs(p: Profile, layout: StudyLayout, real_identity: str = "") -> dict[str, SearchConfig]:
    """A search (validation AUC only) per tuned model that the study trains.

    Each is named after its inputs (settings and the real table's identity): a
    search over other data never resumes, or hands on, one over the old.
    """
    from cxr_ray.tune import SearchConfig

    cfgs = {
        m: SearchConfig(
            data=layout.real(p.resolution), model=m, num_samples=p.tune_samples, max_epochs=p.tune_max_epochs,
            batch_sizes=p.tune_batch_sizes or (p.batch_size,),
            workers_per_trial=p.workers, storage=layout.tune, seed=p.seed, resources=declared(p),
        )
        for m in p.tune_models
        if m in p.models
    }
    return {m: replace(cfg, name=f"{cfg.search_name()}{INPUTS_SUFFIX}{stage_hash(hashed(cfg), [real_identity])[:8]}")
            for m, cfg in cfgs.items()}


def tune_hash(cfgs: dict[str, SearchConfig], real_identity: str) -> str:
    return stage_hash({m: hashed(cfg) for m, cfg in cfgs.items()}, [real_identity])


def classifier_config(
    p: Profile, layout: StudyLayout, tuned: dict[str, Any], cpu_share: float | None,
    model: str, task: str, source: str, robust_aug: float = 0.0,
) -> ClassifierConfig:
    """One classifier or detector, with the model's tuned hyperparameters when it was tuned."""
    from cxr_ray.train.classifier import ClassifierConfig

    best = tuned.get(model, {}).get("best_config", {})
    hp = {"epochs": p.epochs, "batch_size": p.batch_size, **best}
    # Run names: task-label-source, where the label is the model, "-robust" for blur/JPEG- and window/level-augmented
    # training.
    label = f"{model}-robust" if robust_aug else model
    return ClassifierConfig(
        data=layout.real(p.resolution), fakes=layout.fakes(p.resolution), task=task, model=model, source=source,
        storage=layout.runs, num_workers=p.workers, seed=p.seed, n_boot=p.n_boot, robust_aug=robust_aug,
        window_aug=p.window_aug if robust_aug else 0.0,
        cpus_per_worker=cpu_share, resources=declared(p), name=f"{task}-{label}-{source}", **hp,
    )


def classifier_configs(
    p: Profile, layout: StudyLayout, tuned: dict[str, Any], cpu_share: float | None
) -> list[ClassifierConfig]:
    """Pneumonia classifiers on real and on fake images, the detectors, the augmented detectors and the detectors
    trained on raw fakes, in this order. Fakes are the archive-format table unless named raw."""
    def cfg(model: str, task: str, source: str, robust_aug: float = 0.0) -> ClassifierConfig:
        return classifier_config(p, layout, tuned, cpu_share, model, task, source, robust_aug)

    cfgs = [cfg(m, "pneumonia", src) for m in p.models for src in ("real", "fake")]
    cfgs += [cfg(m, "deepfake", "real") for m in p.models]
    cfgs += [cfg(m, "deepfake", "real", p.robust_aug) for m in p.robust_models if m in p.models]
    # The second condition: detectors that learn raw generator pixels ("-raw" in the run's label).
    cfgs += [replace(cfg(m, "deepfake", "real"), fakes=layout.raw_fakes(p.resolution), name=f"deepfake-{m}-raw-real")
             for m in p.raw_models if m in p.models]
    return cfgs


def classifier_stage_config(cfg: ClassifierConfig) -> dict[str, Any]:
    """A training's fields for a stage hash; options added later are left out while off, so the digests of study
    roots made before them stay."""
    off = cfg.later_options_off()
    return {k: v for k, v in hashed(cfg).items() if k not in off}


def train_hash(cfgs: list[ClassifierConfig], h_gen: str, h_tune: str) -> str:
    return stage_hash([classifier_stage_config(cfg) for cfg in cfgs], [h_gen, h_tune])


def benign_config(p: Profile, layout: StudyLayout) -> BenignConfig:
    """The real val and test images after each benign re-processing a hospital's own software does (val fixes the
    detectors' benign-robust point, test is scored)."""
    from cxr_ray.benign import BenignConfig

    return BenignConfig(real=layout.real(p.resolution), dest=layout.benign(p.resolution),
                        conditions=tuple(p.benign_conditions or ()), overwrite=True, resources=declared(p))


def benign_hash(cfg: BenignConfig, real_identity: str) -> str:
    return stage_hash(hashed(cfg), [real_identity])


def evaluate_configs(
    p: Profile, layout: StudyLayout, run_dirs: Sequence[str] | None = None
) -> tuple[EvaluateConfig, TransferConfig]:
    """The cross-evaluation (with perturbations, raw fakes and benign re-processing) and the transfer matrix over
    the runs this study trained.

    `run_dirs`: those the train stage handed on, not the runs root, which may
    also hold runs trained on earlier data (cxr_ray/data/fingerprint.claim_run_name);
    None (a check before training) stands in the runs root.
    """
    from cxr_ray.evaluate import EvaluateConfig
    from cxr_ray.transfer import TransferConfig

    runs = tuple(sorted(run_dirs)) if run_dirs else (layout.runs,)
    shared = dict(runs=runs, real=layout.real(p.resolution), fakes=layout.fakes(p.resolution),
                  n_boot=p.n_boot, seed=p.seed, overwrite=True, resources=declared(p))
    extra = dict(raw_fakes=layout.raw_fakes(p.resolution), benign=layout.benign(p.resolution))
    return (EvaluateConfig(dest=layout.evaluate, perturbations=tuple(p.perturbations or ()), **extra, **shared),
            TransferConfig(dest=layout.transfer, **shared))


def evaluate_hash(eval_cfg: EvaluateConfig, transfer_cfg: TransferConfig, h_train: str, h_benign: str) -> str:
    return stage_hash({"eval": hashed(eval_cfg), "transfer": hashed(transfer_cfg)}, [h_train, h_benign])


def claim_trainings(
    p: Profile, layout: StudyLayout, fakes_per_class: int, cpu_share: float | None
) -> list[tuple[ClassifierConfig, ClassifierConfig]]:
    """(fake-trained, real control) per claim model and seed: the same model, seed, epochs, batch size and images
    per class (the profile's claim_per_class, at most the `fakes_per_class` the fake train split holds), so the
    same optimiser steps."""
    from cxr_ray.train.classifier import ClassifierConfig

    per_class = min(p.claim_per_class, fakes_per_class)

    def cfg(model: str, source: str, seed: int) -> ClassifierConfig:
        return ClassifierConfig(
            data=layout.real(p.resolution), fakes=layout.fakes(p.resolution), task="pneumonia", model=model,
            source=source, epochs=p.claim_epochs, batch_size=p.batch_size, train_per_class=per_class,
            storage=layout.claim_runs, num_workers=p.workers, seed=seed, n_boot=p.n_boot,
            cpus_per_worker=cpu_share, resources=declared(p), name=f"claim-{model}-{source}-s{seed}",
        )

    seeds = range(p.seed, p.seed + p.claim_seeds)
    return [(cfg(m, "fake", s), cfg(m, "real", s)) for m in p.claim_models if m in p.models for s in seeds]


def claim_config(p: Profile, layout: StudyLayout, fake_runs: Sequence[str], real_runs: Sequence[str]) -> ClaimConfig:
    from cxr_ray.claim import ClaimConfig

    return ClaimConfig(fake_runs=tuple(fake_runs), real_runs=tuple(real_runs), real=layout.real(p.resolution),
                       fakes=layout.fakes(p.resolution), dest=layout.claim, n_boot=p.n_boot, seed=p.seed, overwrite=True,
                       resources=declared(p))


def claim_hash(pairs: list[tuple[ClassifierConfig, ClassifierConfig]], h_gen: str) -> str:
    return stage_hash([[classifier_stage_config(a), classifier_stage_config(b)] for a, b in pairs], [h_gen])


def generalise_config(p: Profile, layout: StudyLayout, cpu_share: float | None) -> GeneraliseConfig:
    """Leave-one-family-out over the DCGAN and the profile's families, archive-format fakes, benign reals."""
    from cxr_ray.generalise import GeneraliseConfig
    from cxr_ray.models.generators import DEFAULT_FAMILY

    families = (DEFAULT_FAMILY, *p.families)
    return GeneraliseConfig(
        real=layout.real(p.resolution), families=families,
        fakes=tuple(layout.family_fakes(f, p.resolution) for f in families), runs=layout.generalise_runs,
        dest=layout.generalise, benign=layout.benign(p.resolution), model=p.generalise_model,
        designs=p.generalise_designs, epochs=p.epochs,
        batch_size=p.batch_size, num_workers=p.workers, cpus_per_worker=cpu_share, seed=p.seed, n_boot=p.n_boot,
        resources=declared(p),
    )  # fmt: skip


def generalise_hash(cfg: GeneraliseConfig, h_gen: str, h_families: str, h_benign: str) -> str:
    return stage_hash(hashed(cfg), [h_gen, h_families, h_benign])


def tamper_model_config(p: Profile, layout: StudyLayout) -> TamperModelConfig:
    """The in-painter that injects and removes findings, trained on the real table's train split."""
    from cxr_ray.train.tamper_model import TamperModelConfig

    return TamperModelConfig(data=layout.real(p.resolution), storage=layout.tamper_runs, epochs=p.tamper_epochs,
                             batch_size=p.batch_size, ngf=p.tamper_width, ndf=p.tamper_width, num_workers=p.workers,
                             seed=p.seed, resources=declared(p))  # fmt: skip


def tamper_job_config(p: Profile, layout: StudyLayout, model_run: str) -> TamperConfig:
    """Every split's reals edited once (train/val teach the localiser, test scores it and the attack), archive format."""
    from cxr_ray.tamper.job import TamperConfig

    return TamperConfig(real=layout.real(p.resolution), model=model_run, dest=layout.tampered(p.resolution), seed=p.seed,
                        overwrite=True, resources=declared(p))  # fmt: skip


def attack_config(p: Profile, layout: StudyLayout, classifier_runs: Sequence[str]) -> AttackConfig:
    """The pneumonia classifiers the train stage handed on, scored on the test edits and their originals."""
    from cxr_ray.tamper.attack import AttackConfig

    return AttackConfig(tampered=layout.tampered(p.resolution), real=layout.real(p.resolution),
                        runs=tuple(sorted(classifier_runs)), dest=layout.attack, n_boot=p.n_boot, seed=p.seed,
                        overwrite=True, resources=declared(p))  # fmt: skip


def localiser_config(p: Profile, layout: StudyLayout) -> LocaliserConfig:
    """The tamper detector that marks where: trained on train-split edits, thresholds on val, false alarms on the
    benignly re-processed test reals."""
    from cxr_ray.train.localiser import LocaliserConfig

    return LocaliserConfig(data=layout.real(p.resolution), tampered=layout.tampered(p.resolution),
                           storage=layout.tamper_runs, epochs=p.localiser_epochs, batch_size=p.batch_size,
                           width=p.localiser_width, num_workers=p.workers, seed=p.seed, n_boot=p.n_boot,
                           benign=layout.benign(p.resolution), resources=declared(p))  # fmt: skip


def tamper_hash(p: Profile, layout: StudyLayout, real_identity: str, h_benign: str) -> str:
    """The tamper model, the job over its planned run folder and the localiser; the data and the benign table."""
    model = tamper_model_config(p, layout)
    planned = tamper_job_config(p, layout, storage.join(model.storage, model.run_name()))
    configs = {"model": hashed(model), "job": hashed(planned), "localiser": hashed(localiser_config(p, layout))}
    return stage_hash(configs, [real_identity, h_benign])


def pneumonia_runs(trained: dict[str, Any]) -> list[str]:
    """The run folders of the pneumonia classifiers among the train stage's outputs (run name -> {"run_dir"}), by
    the task that opens every study run name (`classifier_config`)."""
    return sorted(run["run_dir"] for name, run in trained.items() if name.split("-", 1)[0] == "pneumonia")


def attack_hash(cfg: AttackConfig, h_tamper: str, h_train: str) -> str:
    return stage_hash(hashed(cfg), [h_tamper, h_train])


def check_stages(profile: Profile, layout: StudyLayout) -> None:
    """Build every stage's configs now (pure, no Ray): a value one of them refuses fails the study in seconds,
    not after the stages before it have run. Tuned hyperparameters, GAN run folders and the archive's format are not
    known yet: the profile's values, placeholder run folders and a lossless format stand in for them.
    """
    ingest_config(profile, layout)
    gans = gan_configs(profile, layout)
    # The archive format is ingest's finding; a lossless stand-in of the study's size checks the rest.
    stand_in = {"format": "PNG", "width": profile.resolution, "height": profile.resolution, "mode": "L"}
    generated = generate_configs(profile, layout, {cls: {"run_dir": storage.join(layout.gan, cls)} for cls in gans}, stand_in)
    family_gans = family_gan_configs(profile, layout)
    family_generate_configs(
        profile, layout, {f: {cls: {"run_dir": storage.join(layout.gan, f, cls)} for cls in gans} for f in family_gans}, stand_in
    )
    if profile.families:
        generalise_config(profile, layout, None)
    tune_configs(profile, layout)
    classifier_configs(profile, layout, {}, None)
    benign_config(profile, layout)
    evaluate_configs(profile, layout)
    claim_trainings(profile, layout, fake_train_per_class(generated["raw"]), None)
    if profile.tamper_epochs:
        tamper_hash(profile, layout, "", "")  # the tamper model, job and localiser configs
        attack_config(profile, layout, [layout.run("pneumonia-check")])  # a stand-in classifier run
