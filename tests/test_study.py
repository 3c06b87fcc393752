"""The study's pure parts: its folder layout, its options, and the stage hashes that let a re-run skip finished stages.

Nothing here starts Ray: `run_study` checks its options before it joins a cluster.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from cxr_ray.config import ConfigError
from cxr_ray.manifest import Manifest
from cxr_ray.study import PROFILES, Profile, StudyLayout, StudyOptions, run_study_cli
from cxr_ray.study import plan
from cxr_ray.study.args import build_parser, study_options
from cxr_ray.study.concurrency import Timeline
from cxr_ray.study.profile import SAMPLE_DATA, resolve_profile
from cxr_ray.study.stages import StudyContext, record_timeline


def options(*argv: str) -> StudyOptions:
    return study_options(build_parser().parse_args(list(argv)))


# --- layout -------------------------------------------------------------------------------------------------


def test_layout_spells_every_folder_of_a_local_root():
    layout = StudyLayout("/studies/a")
    assert layout.real(64) == "/studies/a/data/real-64"
    assert layout.fakes(128) == "/studies/a/data/fake-128"
    assert (layout.gan, layout.tune, layout.runs) == ("/studies/a/gan", "/studies/a/tune", "/studies/a/runs")
    assert layout.run("deepfake-cnn-real") == "/studies/a/runs/deepfake-cnn-real"
    assert (layout.evaluate, layout.transfer, layout.report) == (
        "/studies/a/evaluate", "/studies/a/transfer", "/studies/a/report",
    )


def test_layout_spells_every_folder_of_an_s3_root():
    layout = StudyLayout("s3://bucket/study/")
    assert layout.real(224) == "s3://bucket/study/data/real-224"
    assert layout.fakes(64) == "s3://bucket/study/data/fake-64"
    assert layout.run("pneumonia-cnn-fake") == "s3://bucket/study/runs/pneumonia-cnn-fake"
    assert layout.report == "s3://bucket/study/report"


def test_layout_at_makes_local_roots_absolute_and_keeps_s3_uris(tmp_path, monkeypatch):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    # The root is part of every stage's hash: one folder, one root, however it is named.
    assert StudyLayout.at("link").root == str((tmp_path / "real").resolve())
    assert StudyLayout.at("s3://bucket/study").root == "s3://bucket/study"


# --- options ------------------------------------------------------------------------------------------------


def test_defaults_are_the_quick_profile_on_the_embedded_sample():
    opts = options()
    assert opts.profile == PROFILES["quick"] and opts.profile.data == SAMPLE_DATA
    assert (opts.storage, opts.sequential, opts.overwrite) == ("runs/study", False, False)
    assert os.path.isdir(SAMPLE_DATA)


def test_every_option_overrides_its_profile_knob():
    opts = options(
        "--profile", "full", "--data", "s3://b/chest_xray", "--storage", "s3://b/study", "--resolution", "128",
        "--gan-epochs", "2", "--gan-width", "8", "--fakes-per-class", "10", "--test-fakes-per-class", "5",
        "--models", "cnn,resnet18", "--epochs", "3", "--batch-size", "16", "--workers", "2", "--tune-models", "",
        "--robust-models", "resnet18", "--robust-aug", "0.25", "--tune-samples", "4", "--tune-max-epochs", "2",
        "--n-boot", "10", "--seed", "7", "--sequential", "--overwrite",
    )
    assert opts.profile == replace(
        PROFILES["full"], data="s3://b/chest_xray", resolution=128, gan_epochs=2, gan_width=8, fakes_per_class=10,
        test_fakes_per_class=5, models=("cnn", "resnet18"), epochs=3, batch_size=16, workers=2, tune_models=(),
        robust_models=("resnet18",), robust_aug=0.25, tune_samples=4, tune_max_epochs=2, n_boot=10, seed=7,
    )
    assert (opts.storage, opts.sequential, opts.overwrite) == ("s3://b/study", True, True)


def test_model_lists_default_to_the_registry():
    from cxr_ray.models import list_models

    profile = resolve_profile(Profile(name="full", data="/data"))
    assert set(profile.models) == set(list_models()) == set(profile.tune_models) == set(profile.robust_models)
    quick = resolve_profile(PROFILES["quick"])
    assert quick.tune_models == quick.robust_models == ("cnn",)


@pytest.mark.parametrize("flag", ["--models", "--tune-models", "--robust-models"])
def test_unknown_model_names_are_rejected_by_their_option(flag):
    with pytest.raises(ConfigError, match=f"^{flag}: unknown model\\(s\\) nope, vgg; known models: .*cnn"):
        resolve_profile(options(flag, "cnn,vgg,nope").profile)


def test_the_full_profile_needs_data():
    with pytest.raises(ConfigError, match="profile 'full' needs --data"):
        resolve_profile(options("--profile", "full").profile)


def test_the_command_line_reports_bad_input_in_one_line(capsys):
    assert run_study_cli(["--models", "cnn,nope"]) == 2
    err = capsys.readouterr().err
    assert "--models: unknown model(s) nope" in err and "Traceback" not in err
    with pytest.raises(SystemExit):  # argparse's own check, before any of ours
        run_study_cli(["--resolution", "65"])


# --- stage hashes -------------------------------------------------------------------------------------------

# Digests computed by the pre-refactor study (commit 877557c, cxr_ray/study.py's formulas) for the inputs
# below. A study root made by that code re-uses a stage only if the new code computes the same digest.
OLD_DIGESTS = {
    "quick-cnn-local": {
        "ingest": "b84acfb1c6a4a7b0", "gan": "0db307c7e261ac5e", "gan_quality": "08f8bbafac8a3d83",
        "generate": "87b5f1dece340c39", "tune": "47c3a3b3161fe85c", "train": "8267846e9a629432",
        "evaluate": "3b26143217e64d6e",
    },
    "quick-cnn-s3-shared": {
        "ingest": "f0c6ace6cafd8a1e", "gan": "6322359dd02dca81", "gan_quality": "3a289f7973d7c9a9",
        "generate": "b6792561c1af9cb4", "tune": "b7a0d8fcfe6cde99", "train": "1b1c471ba69797ae",
        "evaluate": "a08d5c4ce9079a27",
    },
    "full-two-models": {
        "ingest": "b84acfb1c6a4a7b0", "gan": "88e4409c0b5d75e3", "gan_quality": "f51b3cd269f9ef94",
        "generate": "bb19dc104fbef8b7", "tune": "da8adf3bf8416e0c", "train": "f6712e39247ef7f8",
        "evaluate": "086f329458db327d",
    },
    "quick-default-models": {
        "ingest": "b84acfb1c6a4a7b0", "gan": "0db307c7e261ac5e", "gan_quality": "08f8bbafac8a3d83",
        "generate": "87b5f1dece340c39", "tune": "47c3a3b3161fe85c", "train": "4692eabc17184cf3",
        "evaluate": "8aca18f5aad421df",
    },
    "full-default-models": {
        "ingest": "b84acfb1c6a4a7b0", "gan": "88e4409c0b5d75e3", "gan_quality": "f51b3cd269f9ef94",
        "generate": "bb19dc104fbef8b7", "tune": "e3861d456583b4f0", "train": "3ad0d33f0ca84f31",
        "evaluate": "8ba86e0c8c9d8af9",
    },
}
CASES = {  # profile, root, CPU share of a training worker
    "quick-cnn-local": (replace(PROFILES["quick"], data="/data/chest_xray", models=("cnn",)), "/study", None),
    "quick-cnn-s3-shared": (
        replace(PROFILES["quick"], data="s3://bucket/chest_xray", models=("cnn",)), "s3://bucket/study", 0.5,
    ),
    "full-two-models": (
        replace(PROFILES["full"], data="/data/chest_xray", models=("resnet18", "cnn"), tune_models=("cnn",),
                robust_models=("cnn", "resnet18")),
        "/study", None,
    ),
    "quick-default-models": (replace(PROFILES["quick"], data="/data/chest_xray"), "/study", None),
    "full-default-models": (replace(PROFILES["full"], data="/data/chest_xray"), "/study", None),
}
# What the upstream stages handed on (their outputs in the manifest).
TUNED = {"cnn": {"best_config": {"lr": 0.001, "weight_decay": 1e-05, "batch_size": 16, "aug_strength": 0.25, "epochs": 2}}}


def stage_digests(profile, root: str, cpu_share: float | None) -> dict[str, str]:
    profile, layout = resolve_profile(profile), StudyLayout(root)
    gans = {cls: {"run_dir": f"{root}/gan/dcgan-{cls.lower()}-run"} for cls in ("NORMAL", "PNEUMONIA")}
    h = {"ingest": plan.ingest_hash(profile)}
    h["gan"] = plan.gan_hash(plan.gan_configs(profile, layout), h["ingest"])
    h["gan_quality"] = plan.gan_quality_hash(h["gan"])
    h["generate"] = plan.generate_hash(plan.generate_config(profile, layout, gans), h["gan"])
    h["tune"] = plan.tune_hash(plan.tune_configs(profile, layout), h["ingest"])
    h["train"] = plan.train_hash(plan.classifier_configs(profile, layout, TUNED, cpu_share), h["generate"], h["tune"])
    h["evaluate"] = plan.evaluate_hash(*plan.evaluate_configs(profile, layout), h["train"])
    return h


@pytest.mark.parametrize("case", list(CASES))
def test_stage_hashes_are_the_ones_the_old_study_wrote(case):
    assert stage_digests(*CASES[case]) == OLD_DIGESTS[case]


def test_quick_searches_use_the_profile_batch_size_and_full_ones_a_range():
    layout = StudyLayout("/study")
    quick = resolve_profile(replace(PROFILES["quick"], batch_size=16))
    assert [c.batch_sizes for c in plan.tune_configs(quick, layout).values()] == [(16,)]
    full = resolve_profile(replace(PROFILES["full"], data="/d", tune_models=("cnn",)))
    assert [c.batch_sizes for c in plan.tune_configs(full, layout).values()] == [(32, 64, 128)]


def test_run_names_are_task_label_source_with_the_tuned_hyperparameters():
    profile = resolve_profile(replace(PROFILES["quick"], models=("cnn", "resnet18")))
    cfgs = plan.classifier_configs(profile, StudyLayout("/study"), TUNED, None)
    assert [c.run_name() for c in cfgs] == [
        "pneumonia-cnn-real", "pneumonia-cnn-fake", "pneumonia-resnet18-real", "pneumonia-resnet18-fake",
        "deepfake-cnn-real", "deepfake-resnet18-real", "deepfake-cnn-robust-real",
    ]
    assert {(c.model, c.epochs, c.batch_size) for c in cfgs} == {("cnn", 2, 16), ("resnet18", 1, 32)}


def test_the_timeline_keeps_the_rows_of_skipped_stages(tmp_path):
    manifest = Manifest.load(str(tmp_path))
    manifest.start("timeline", "-")
    old_rows = [{"stage": "gan", "name": "dcgan-NORMAL", "start": 0.0, "end": 1.0},
                {"stage": "train", "name": "deepfake-cnn-real", "start": 1.0, "end": 2.0}]
    manifest.finish("timeline", {"rows": old_rows})
    timeline = Timeline()
    timeline.run("train", "deepfake-cnn-real", lambda: None)
    ctx = StudyContext(profile=PROFILES["quick"], layout=StudyLayout(str(tmp_path)), manifest=manifest, s3=None,
                       log=print, timeline=timeline, width=2, cpu_share=None)
    record_timeline(ctx, t_study=0.0)
    recorded = Manifest.load(str(tmp_path)).outputs("timeline")
    assert [r["name"] for r in recorded["rows"]] == ["dcgan-NORMAL", "deepfake-cnn-real"]
    assert recorded["rows"][1]["start"] > 1.0 and recorded["max_parallel"] == 2
