"""What a study is asked to do: a profile with every knob, and the options of one run around it.

Plain frozen dataclasses, filled in from the command line by cxr_ray/study/args.py
(or built directly by a caller), checked by `resolve_profile` before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from cxr_ray.config import ConfigError

SAMPLE_DATA = str(Path(__file__).resolve().parents[1] / "sample" / "chest_xray")

# The profile fields that name models; None in a profile means every registered model.
MODEL_FIELDS: tuple[str, ...] = ("models", "tune_models", "robust_models", "raw_models", "claim_models")


@dataclass(frozen=True)
class Profile:
    """Every knob of a study; profiles set defaults, the command line overrides any of them."""

    name: str
    data: str | None  # None: must be given with --data
    resolution: int = 64
    gan_epochs: int = 25
    gan_width: int = 64  # ngf = ndf
    fakes_per_class: int = 500  # the seed study's number: detector train+val fakes per class
    test_fakes_per_class: int = 500  # held-out fakes per class
    models: tuple[str, ...] | None = None  # None: every registered model
    epochs: int = 10
    batch_size: int = 64
    workers: int = 1  # per training (Ray Train workers; one GPU each on GPU clusters)
    # What each training worker and Ray Data actor asks of a node (cxr_ray.resources), declared rather than read off
    # the cluster when a stage starts: an autoscaling cluster's GPU nodes start at zero. "gpu" (the full profile: the
    # autoscaler starts GPU nodes for it), "cpu", or "auto": what the local node has now (a laptop or one machine,
    # never an autoscaling cluster).
    accelerator: str = "auto"
    gpus_per_worker: float = 1.0  # on "gpu"
    cpus_per_worker: float = 0.0  # 0: 1 per worker (a share of a CPU-only node when trainings run side by side)
    custom_resources: tuple[str, ...] = ()  # NAME=AMOUNT each worker and actor also asks for (a node type's own resource)
    pool_min: int = 1  # Ray Data actor pools (and trainings side by side) grow from this...
    pool_max: int = 0  # ...to this; 0: what the local node fits ("auto"), pool_min when declared
    tune_models: tuple[str, ...] | None = None
    tune_samples: int = 8
    tune_max_epochs: int = 8
    tune_batch_sizes: tuple[int, ...] | None = (32, 64, 128)  # None: batch_size only
    robust_models: tuple[str, ...] | None = None  # detectors also trained with blur/JPEG and window/level augmentation
    robust_aug: float = 0.5  # per-image probability of a blur or JPEG round trip
    window_aug: float = 0.5  # per-image probability of a window/level change (robust detectors)
    # Detectors train on archive-format fakes (resampled and encoded as the ingested source files are, then
    # decoded by ingest's path: what an attacker who writes into the archive plants); these models' detectors
    # are also trained on raw generator pixels, the second condition. Both are tested on both.
    raw_models: tuple[str, ...] | None = None
    benign_conditions: tuple[str, ...] | None = None  # benign re-processing of real val and test images (None: all, cxr_ray.benign)
    perturbations: tuple[str, ...] | None = None  # applied to both classes at evaluation (None: all, cxr_ray.perturb)
    # The seed's transfer claim, tested as written (cxr_ray/claim.py): per model and seed a classifier trained on
    # the fake train split and a real control with as many images per class, the same steps.
    claim_models: tuple[str, ...] | None = None
    claim_per_class: int = 250  # the seed's "500 DCGAN fakes", half per class (at most the fake train split's share)
    claim_seeds: int = 3
    claim_epochs: int = 30  # the best epoch by val AUC is kept: run long enough to converge
    # Generator families trained beside the DCGAN (cxr_ray.models.generators), and the leave-one-family-out test
    # of detectors on them (cxr_ray.generalise): () skips both.
    families: tuple[str, ...] = ("sngan", "vae")
    generalise_model: str = "resnet18"  # the architecture of every leave-one-family-out detector
    # cxr_ray.generalise.DESIGNS: the study's detector as it was, the first design built to generalise, and the
    # deployed one (generalise.DEPLOYED_DESIGN), which scan uses.
    generalise_designs: tuple[str, ...] = ("plain", "upsampling", "residual_upsampling_stored")
    # Local tampering (cxr_ray.tamper, issue 16): the in-painting tamper model's epochs (0 skips the stage) and
    # width, and the localiser that finds the edits.
    tamper_epochs: int = 10
    tamper_width: int = 32
    localiser_epochs: int = 10
    localiser_width: int = 16
    n_boot: int = 1000
    seed: int = 0


PROFILES = {
    # CPU, minutes, the embedded sample: every stage runs, numbers are not meaningful.
    "quick": Profile(
        name="quick", data=SAMPLE_DATA, gan_epochs=3, gan_width=16, fakes_per_class=100, test_fakes_per_class=30,
        epochs=1, batch_size=32, tune_models=("cnn",), tune_samples=2, tune_max_epochs=1, tune_batch_sizes=None,
        robust_models=("cnn",), raw_models=("cnn",), claim_models=("cnn",), claim_seeds=1, claim_epochs=1, n_boot=200,
        families=("vae",), generalise_model="cnn", generalise_designs=("residual_upsampling_stored",),
        tamper_epochs=1, tamper_width=8, localiser_epochs=1, localiser_width=8,
    ),
    # GPU defaults, the whole dataset: every worker and actor asks for one GPU and 4 CPUs (a g5.2xlarge, a KubeRay
    # gpu-1x pod), up to 4 trainings or actors at once; the autoscaler starts the GPU nodes.
    "full": Profile(name="full", data=None, accelerator="gpu", cpus_per_worker=4.0, pool_max=4),
}


@dataclass(frozen=True)
class StudyOptions:
    """One study run: its profile, where it lives, and how it runs."""

    profile: Profile
    storage: str = "runs/study"  # the study root, path or s3://
    sequential: bool = False  # one training at a time (for timing)
    overwrite: bool = False  # redo every stage


def registered_models() -> tuple[str, ...]:
    """Every classifier architecture the model registry knows (imports torch: call it only when needed)."""
    from cxr_ray.models import registered_models as in_registration_order

    return tuple(in_registration_order())


# The least each numeric knob may be; the study's configs check the rest.
MINIMUMS: dict[str, float] = {
    "gan_epochs": 1, "gan_width": 1, "fakes_per_class": 2, "test_fakes_per_class": 1, "epochs": 1, "batch_size": 1,
    "workers": 1, "tune_samples": 1, "tune_max_epochs": 1, "robust_aug": 0, "window_aug": 0, "n_boot": 1, "seed": 0,
    "claim_per_class": 1, "claim_seeds": 1, "claim_epochs": 1, "tamper_epochs": 0, "tamper_width": 8,
    "localiser_epochs": 1, "localiser_width": 8, "gpus_per_worker": 0.001, "cpus_per_worker": 0, "pool_min": 1,
    "pool_max": 0,
}


def option(key: str) -> str:
    """The command-line spelling of a profile field."""
    return "--" + key.replace("_", "-")


def check_profile(profile: Profile) -> None:
    """Types and bounds of every knob, named by its option (ConfigError), before any stage is planned."""
    from cxr_ray.config import check_types

    try:
        check_types(Profile, {f: getattr(profile, f) for f in Profile.__dataclass_fields__})
    except ConfigError as exc:
        raise ConfigError(option(str(exc))) from None
    for key, minimum in MINIMUMS.items():
        value = getattr(profile, key)
        if value < minimum:
            raise ConfigError(f"{option(key)} must be at least {minimum}, got {value}")
    for key in ("robust_aug", "window_aug"):
        if getattr(profile, key) > 1:
            raise ConfigError(f"{option(key)} must be in [0, 1], got {getattr(profile, key)}")
    for key in ("tamper_width", "localiser_width"):
        if getattr(profile, key) % 8:
            raise ConfigError(f"{option(key)} must be a multiple of 8 (GroupNorm groups), got {getattr(profile, key)}")
    from cxr_ray.resources import ACCELERATORS, parse_custom

    if profile.accelerator not in ACCELERATORS:
        raise ConfigError(f"--accelerator must be one of {', '.join(ACCELERATORS)}, got {profile.accelerator!r}")
    if profile.pool_max and profile.pool_max < profile.pool_min:
        raise ConfigError(f"--pool-max ({profile.pool_max}) must be at least --pool-min ({profile.pool_min})")
    parse_custom(profile.custom_resources)
    if profile.tune_batch_sizes is not None and (not profile.tune_batch_sizes or min(profile.tune_batch_sizes) < 1):
        raise ConfigError(f"tune_batch_sizes must be positive, got {profile.tune_batch_sizes}")


def resolve_profile(profile: Profile) -> Profile:
    """The profile with every model list filled in and checked against the registry, and its data given.

    Raises ConfigError naming the option that holds an unknown model or the missing --data, or a bad value.
    """
    check_profile(profile)
    if profile.data is None:
        raise ConfigError(f"profile {profile.name!r} needs --data (a Kaggle-layout folder or s3:// prefix)")
    known = registered_models()
    filled = {}
    for key in MODEL_FIELDS:
        names = getattr(profile, key)
        unknown = sorted(set(names or ()) - set(known))
        if unknown:
            raise ConfigError(
                f"--{key.replace('_', '-')}: unknown model(s) {', '.join(unknown)}; known models: {', '.join(known)}"
            )
        filled[key] = known if names is None else names
    if profile.generalise_model not in known:
        raise ConfigError(f"--generalise-model: unknown model {profile.generalise_model!r}; known models: {', '.join(known)}")
    filled["families"] = families(profile.families)
    from cxr_ray.generalise import DESIGNS

    unknown_designs = sorted(set(profile.generalise_designs) - set(DESIGNS))
    if unknown_designs or not profile.generalise_designs:
        raise ConfigError(f"--generalise-designs: unknown {', '.join(unknown_designs) or '(none given)'}; known: {', '.join(DESIGNS)}")
    filled["benign_conditions"] = benign_conditions(profile.benign_conditions)
    filled["perturbations"] = perturbations(profile.perturbations)
    return replace(profile, **filled)


def families(names: tuple[str, ...]) -> tuple[str, ...]:
    """The generator families trained beside the DCGAN, checked by name (the DCGAN is always trained)."""
    from cxr_ray.models.generators import DEFAULT_FAMILY, GENERATOR_FAMILIES

    others = [f for f in GENERATOR_FAMILIES if f != DEFAULT_FAMILY]
    unknown = sorted(set(names) - set(others))
    if unknown:
        raise ConfigError(f"--families: {', '.join(unknown)} not a family trained beside the DCGAN; known: {', '.join(others)}")
    return tuple(dict.fromkeys(names))


def perturbations(names: tuple[str, ...] | None) -> tuple[str, ...]:
    """The evaluation's perturbations (None: all of them), checked by name; 'none' (clean) always first."""
    from cxr_ray.perturb import DEFAULT_PERTURBATIONS, check_perturbations

    try:
        return DEFAULT_PERTURBATIONS if names is None else check_perturbations(names)
    except ValueError as exc:
        raise ConfigError(f"--perturbations: {exc}") from None


def benign_conditions(names: tuple[str, ...] | None) -> tuple[str, ...]:
    """The benign re-processings asked for (None: all of them), checked by name."""
    from cxr_ray.benign import BENIGN_CONDITIONS

    unknown = sorted(set(names or ()) - set(BENIGN_CONDITIONS))
    if unknown:
        raise ConfigError(f"--benign-conditions: unknown {', '.join(unknown)}; known: {', '.join(BENIGN_CONDITIONS)}")
    return BENIGN_CONDITIONS if names is None else names
