"""Each stage's configs and manifest hash, from the profile, the layout and the upstream stages' outputs.

Pure (nothing runs, no Ray), so tests can check them. The hash inputs are
the study's promise to earlier study roots: a re-run skips a stage only when
its hash is unchanged, so the dicts hashed here (keys, values, upstream
hashes) must stay exactly as they are. Config classes load inside the
functions: they import torch.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from cxr_ray.data.layout import CLASS_NAMES
from cxr_ray.manifest import stage_hash
from cxr_ray.study.layout import StudyLayout
from cxr_ray.study.profile import Profile

if TYPE_CHECKING:
    from cxr_ray.config import IngestConfig
    from cxr_ray.evaluate import EvaluateConfig
    from cxr_ray.generate import GenerateConfig
    from cxr_ray.train.classifier import ClassifierConfig
    from cxr_ray.train.gan import GanConfig
    from cxr_ray.transfer import TransferConfig
    from cxr_ray.tune import SearchConfig


def ingest_config(p: Profile, layout: StudyLayout) -> IngestConfig:
    from cxr_ray.config import IngestConfig

    return IngestConfig(src=p.data, dest=layout.real(p.resolution), resolution=p.resolution, seed=p.seed, overwrite=True)


def ingest_hash(p: Profile) -> str:
    return stage_hash({"data": p.data, "resolution": p.resolution, "seed": p.seed}, [])


def gan_configs(p: Profile, layout: StudyLayout) -> dict[str, GanConfig]:
    """One DCGAN per class."""
    from cxr_ray.train.gan import GanConfig

    return {
        cls: GanConfig(
            data=layout.real(p.resolution), storage=layout.gan, class_name=cls, epochs=p.gan_epochs,
            ngf=p.gan_width, ndf=p.gan_width, num_workers=p.workers, seed=p.seed,
        )
        for cls in CLASS_NAMES
    }


def gan_hash(cfgs: dict[str, GanConfig], h_ingest: str) -> str:
    return stage_hash({cls: asdict(cfg) for cls, cfg in cfgs.items()}, [h_ingest])


def gan_quality_hash(h_gan: str) -> str:
    return stage_hash("gan_quality", [h_gan])


def generate_config(p: Profile, layout: StudyLayout, gans: dict[str, Any]) -> GenerateConfig:
    """Detector train/val seeds and held-out test seeds per class, from the GAN stage's run folders."""
    from cxr_ray.generate import TEST_SEED_START, GenerateConfig

    return GenerateConfig(
        generators=tuple(gans[cls]["run_dir"] for cls in CLASS_NAMES), dest=layout.fakes(p.resolution),
        train_seeds=(0, p.fakes_per_class),
        test_seeds=(TEST_SEED_START, TEST_SEED_START + p.test_fakes_per_class), overwrite=True,
    )


def generate_hash(cfg: GenerateConfig, h_gan: str) -> str:
    return stage_hash(asdict(cfg), [h_gan])


def tune_configs(p: Profile, layout: StudyLayout) -> dict[str, SearchConfig]:
    """A search (validation AUC only) per tuned model that the study trains."""
    from cxr_ray.tune import SearchConfig

    return {
        m: SearchConfig(
            data=layout.real(p.resolution), model=m, num_samples=p.tune_samples, max_epochs=p.tune_max_epochs,
            batch_sizes=p.tune_batch_sizes or (p.batch_size,),
            workers_per_trial=p.workers, storage=layout.tune, seed=p.seed,
        )
        for m in p.tune_models
        if m in p.models
    }


def tune_hash(cfgs: dict[str, SearchConfig], h_ingest: str) -> str:
    return stage_hash({m: asdict(cfg) for m, cfg in cfgs.items()}, [h_ingest])


def classifier_config(
    p: Profile, layout: StudyLayout, tuned: dict[str, Any], cpu_share: float | None,
    model: str, task: str, source: str, robust_aug: float = 0.0,
) -> ClassifierConfig:
    """One classifier or detector, with the model's tuned hyperparameters when it was tuned."""
    from cxr_ray.train.classifier import ClassifierConfig

    best = tuned.get(model, {}).get("best_config", {})
    hp = {"epochs": p.epochs, "batch_size": p.batch_size, **best}
    # Run names: task-label-source, where the label is the model, "-robust" for blur/JPEG-augmented training.
    label = f"{model}-robust" if robust_aug else model
    return ClassifierConfig(
        data=layout.real(p.resolution), fakes=layout.fakes(p.resolution), task=task, model=model, source=source,
        storage=layout.runs, num_workers=p.workers, seed=p.seed, n_boot=p.n_boot, robust_aug=robust_aug,
        cpus_per_worker=cpu_share, name=f"{task}-{label}-{source}", **hp,
    )


def classifier_configs(
    p: Profile, layout: StudyLayout, tuned: dict[str, Any], cpu_share: float | None
) -> list[ClassifierConfig]:
    """Pneumonia classifiers on real and on fake images, the detectors, and the augmented detectors, in this order."""
    def cfg(model: str, task: str, source: str, robust_aug: float = 0.0) -> ClassifierConfig:
        return classifier_config(p, layout, tuned, cpu_share, model, task, source, robust_aug)

    cfgs = [cfg(m, "pneumonia", src) for m in p.models for src in ("real", "fake")]
    cfgs += [cfg(m, "deepfake", "real") for m in p.models]
    cfgs += [cfg(m, "deepfake", "real", p.robust_aug) for m in p.robust_models if m in p.models]
    return cfgs


def train_hash(cfgs: list[ClassifierConfig], h_gen: str, h_tune: str) -> str:
    return stage_hash([asdict(cfg) for cfg in cfgs], [h_gen, h_tune])


def evaluate_configs(p: Profile, layout: StudyLayout) -> tuple[EvaluateConfig, TransferConfig]:
    """The cross-evaluation (with perturbations) and the transfer matrix over every run of the study."""
    from cxr_ray.evaluate import EvaluateConfig
    from cxr_ray.transfer import TransferConfig

    shared = dict(runs=(layout.runs,), real=layout.real(p.resolution), fakes=layout.fakes(p.resolution),
                  n_boot=p.n_boot, seed=p.seed, overwrite=True)
    return EvaluateConfig(dest=layout.evaluate, **shared), TransferConfig(dest=layout.transfer, **shared)


def evaluate_hash(eval_cfg: EvaluateConfig, transfer_cfg: TransferConfig, h_train: str) -> str:
    return stage_hash({"eval": asdict(eval_cfg), "transfer": asdict(transfer_cfg)}, [h_train])
