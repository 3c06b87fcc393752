"""The study: its folder layout, its options, the stage hashes that let a re-run skip finished stages, and
content identity (issue 13): the same data anywhere re-uses every stage, other data retrains every model.

Nothing here starts Ray: everything is pure, or reads a local tree or moto's S3. The end-to-end check of content
identity (a study, a job over it from Ray's copy of the working dir, a changed image) is in tests/test_job_submit.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from conftest import REPO, make_kaggle_tree, upload_tree

from cxr_ray.config import ConfigError
from cxr_ray.data.fingerprint import claim_run_name, source_fingerprint, table_identity
from cxr_ray.manifest import Manifest
from cxr_ray.study import PROFILES, Profile, StudyLayout, StudyOptions, run_study_cli
from cxr_ray.study import plan
from cxr_ray.study.args import build_parser, study_options
from cxr_ray.study.concurrency import Timeline
from cxr_ray.study.layout import STAGES
from cxr_ray.study.profile import SAMPLE_DATA, resolve_profile
from cxr_ray.study.stages import StudyContext, record_timeline


def options(*argv: str) -> StudyOptions:
    return study_options(build_parser().parse_args(list(argv)))


# --- layout -------------------------------------------------------------------------------------------------


def test_layout_spells_every_folder_of_a_local_root():
    layout = StudyLayout("/studies/a")
    assert layout.real(64) == "/studies/a/data/real-64"
    assert layout.fakes(128) == "/studies/a/data/fake-archive-128"
    assert layout.raw_fakes(128) == "/studies/a/data/fake-raw-128"
    assert layout.benign(64) == "/studies/a/data/benign-64"
    assert layout.tampered(64) == "/studies/a/data/tampered-64"
    assert (layout.tamper_runs, layout.attack, layout.tamper_examples) == (
        "/studies/a/tamper-runs", "/studies/a/attack", "/studies/a/tamper-examples",
    )
    assert (layout.claim, layout.claim_runs) == ("/studies/a/claim", "/studies/a/claim-runs")
    assert (layout.gan, layout.tune, layout.runs) == ("/studies/a/gan", "/studies/a/tune", "/studies/a/runs")
    assert layout.run("deepfake-cnn-real") == "/studies/a/runs/deepfake-cnn-real"
    assert (layout.evaluate, layout.transfer, layout.report) == (
        "/studies/a/evaluate", "/studies/a/transfer", "/studies/a/report",
    )


def test_layout_spells_every_folder_of_an_s3_root():
    layout = StudyLayout("s3://bucket/study/")
    assert layout.real(224) == "s3://bucket/study/data/real-224"
    assert layout.fakes(64) == "s3://bucket/study/data/fake-archive-64"
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

# Issue 15 added the families and generalise stages, issue 16 the tamper and attack stages; every earlier stage's digest stayed
# as it was.
# Issue 13 changed every stage's identity once (a root made before re-runs its stages once): ingest hashes the
# source's content fingerprint instead of its path, and the stages below fold in the ingested table's content
# identity instead of ingest's hash; searches are named after their inputs, and evaluate scores the run dirs the
# train stage handed on (not the runs root). Pinned here: a study root made by this code re-uses a stage only if
# later code computes the same digest.
SOURCE, REAL = "4e3c04fd47d97b16", "c0ffee0123456789"  # a source fingerprint, an ingested table's identity
DIGESTS = {
    "quick-cnn-local": {
        "ingest": "0eb202cb12770452", "gan": "648a770f23d73d3f", "gan_quality": "4ee9285c90ab9dfe",
        "generate": "cde1f68ebd7e67e0", "tune": "ab25ac37d6ae76c2", "train": "4c501748c3594bc8",
        "benign": "df89b554028c1977", "evaluate": "b23b4cf54c890370", "claim": "9ef62c2be0b259fc",
        "families": "d364705f61529be1", "generalise": "e794d5462d00c237", "tamper": "4fad8db78cc898a6", "attack": "868e33f0ceca834c",
    },
    "quick-cnn-s3-shared": {
        "ingest": "0eb202cb12770452", "gan": "682ae2622c1b1d4b", "gan_quality": "1ebed1ea88c40241",
        "generate": "4c28be763f8b50e9", "tune": "a0dd538c46d45a8f", "train": "95d2f081388fec6d",
        "benign": "ce7454a60476b954", "evaluate": "35a593f9a890bff0", "claim": "c9568504f54bf2ca",
        "families": "39744fa5b5d51a27", "generalise": "c8673049fcf69ed3", "tamper": "facb71048a83f0b5", "attack": "75c2eeba7eab37db",
    },
    "full-two-models": {
        "ingest": "0eb202cb12770452", "gan": "afd3bb3012f059f1", "gan_quality": "6e5eb898428e8c8b",
        "generate": "c5cc620565360501", "tune": "3c472e4bb817ad31", "train": "801b31ba6b625ace",
        "benign": "df89b554028c1977", "evaluate": "9ecee390b91d520b", "claim": "f60f6c2c2a703d9d",
        "families": "e03c6283081eb1cd", "generalise": "35a04a9d0a209c2c", "tamper": "227371dcf5f217c7", "attack": "7377f509aa989918",
    },
    "quick-default-models": {
        "ingest": "0eb202cb12770452", "gan": "648a770f23d73d3f", "gan_quality": "4ee9285c90ab9dfe",
        "generate": "cde1f68ebd7e67e0", "tune": "ab25ac37d6ae76c2", "train": "476f575bd6ded543",
        "benign": "df89b554028c1977", "evaluate": "a0faae3d0a60f69c", "claim": "9ef62c2be0b259fc",
        "families": "d364705f61529be1", "generalise": "e794d5462d00c237", "tamper": "4fad8db78cc898a6", "attack": "231719539e46a9fc",
    },
    "full-default-models": {
        "ingest": "0eb202cb12770452", "gan": "afd3bb3012f059f1", "gan_quality": "6e5eb898428e8c8b",
        "generate": "c5cc620565360501", "tune": "12a20b12b192d30d", "train": "f456bfb7766c818c",
        "benign": "df89b554028c1977", "evaluate": "fa8db0594765fe1b", "claim": "3544a10e31e79d3d",
        "families": "e03c6283081eb1cd", "generalise": "35a04a9d0a209c2c", "tamper": "227371dcf5f217c7", "attack": "a45e6404e6cb0724",
    },
}
CASES = {  # profile, root, CPU share of a training worker (hashed as unset since 2026-12-02: digests repinned)
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
ARCHIVE = {"format": "JPEG", "width": 224, "height": 224, "mode": "RGB", "quality": 75, "subsampling": "4:2:0",
           "files_sampled": 256, "agreement": 1.0}
TUNED = {"cnn": {"best_config": {"lr": 0.001, "weight_decay": 1e-05, "batch_size": 16, "aug_strength": 0.25, "epochs": 2}}}


def stage_digests(profile, root: str, cpu_share: float | None, source: str = SOURCE, real: str = REAL) -> dict[str, str]:
    profile, layout = resolve_profile(profile), StudyLayout(root)
    gans = {cls: {"run_dir": f"{root}/gan/dcgan-{cls.lower()}-run"} for cls in ("NORMAL", "PNEUMONIA")}
    h = {"ingest": plan.ingest_hash(profile, source)}
    h["gan"] = plan.gan_hash(plan.gan_configs(profile, layout), real)
    h["gan_quality"] = plan.gan_quality_hash(h["gan"])
    generated = plan.generate_configs(profile, layout, gans, ARCHIVE)
    h["generate"] = plan.generate_hash(generated, h["gan"])
    h["tune"] = plan.tune_hash(plan.tune_configs(profile, layout, real), real)
    cfgs = plan.classifier_configs(profile, layout, TUNED, cpu_share)
    h["train"] = plan.train_hash(cfgs, h["generate"], h["tune"])
    h["benign"] = plan.benign_hash(plan.benign_config(profile, layout), real)
    run_dirs = [layout.run(c.run_name()) for c in cfgs]
    h["evaluate"] = plan.evaluate_hash(*plan.evaluate_configs(profile, layout, run_dirs), h["train"], h["benign"])
    pairs = plan.claim_trainings(profile, layout, plan.fake_train_per_class(generated["archive"]), cpu_share)
    h["claim"] = plan.claim_hash(pairs, h["generate"])
    family_gans = plan.family_gan_configs(profile, layout)
    planned = plan.planned_family_runs(family_gans)  # what the stage hashes
    h["families"] = plan.families_hash(family_gans, plan.family_generate_configs(profile, layout, planned, ARCHIVE), real)
    h["generalise"] = plan.generalise_hash(plan.generalise_config(profile, layout, cpu_share), h["generate"], h["families"], h["benign"])
    h["tamper"] = plan.tamper_hash(profile, layout, real, h["benign"])
    attacked = plan.pneumonia_runs({c.run_name(): {"run_dir": layout.run(c.run_name())} for c in cfgs})
    assert attacked == sorted(layout.run(c.run_name()) for c in cfgs if c.task == "pneumonia")
    h["attack"] = plan.attack_hash(plan.attack_config(profile, layout, attacked), h["tamper"], h["train"])
    return h


@pytest.mark.parametrize("case", list(CASES))
def test_stage_hashes_are_pinned(case):
    assert stage_digests(*CASES[case]) == DIGESTS[case]


def test_the_source_path_is_in_no_stage_hash():
    profile, root, share = CASES["quick-cnn-local"]
    moved = replace(profile, data="/tmp/ray/session_x/runtime_resources/working_dir_files/cxr_ray/sample/chest_xray")
    assert stage_digests(moved, root, share) == stage_digests(profile, root, share)


def test_other_source_bytes_re_run_ingest_and_another_table_everything_below():
    profile, root, share = CASES["full-two-models"]
    base = stage_digests(profile, root, share)
    # Other bytes that ingest into the same table (a quarantined stray file): only ingest runs again.
    other_source = stage_digests(profile, root, share, source="0" * 16)
    assert {k for k in base if base[k] != other_source[k]} == {"ingest"}
    # Another table: every stage below ingest runs again.
    other_table = stage_digests(profile, root, share, real="1" * 16)
    assert {k for k in base if base[k] != other_table[k]} == set(base) - {"ingest"}


def test_searches_are_named_after_their_inputs():
    profile, layout = resolve_profile(CASES["quick-cnn-local"][0]), StudyLayout("/study")
    names = [c.name for c in plan.tune_configs(profile, layout, REAL).values()]
    assert names == ["tune-pneumonia-cnn-real-inputs-b8dd71c2"]
    assert [c.name for c in plan.tune_configs(profile, layout, "1" * 16).values()] != names


def test_evaluation_scores_the_trained_run_dirs_not_the_runs_root():
    profile, layout = resolve_profile(CASES["quick-cnn-local"][0]), StudyLayout("/study")
    runs = ["/study/runs/b-inputs-0123abcd", "/study/runs/a"]
    for cfg in plan.evaluate_configs(profile, layout, runs):
        assert cfg.runs == ("/study/runs/a", "/study/runs/b-inputs-0123abcd")
    assert all(cfg.runs == (layout.runs,) for cfg in plan.evaluate_configs(profile, layout))  # a check before training


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
        "deepfake-cnn-real", "deepfake-resnet18-real", "deepfake-cnn-robust-real", "deepfake-cnn-raw-real",
    ]
    assert {(c.model, c.epochs, c.batch_size) for c in cfgs} == {("cnn", 2, 16), ("resnet18", 1, 32)}
    # Only the robust detectors get the blur/JPEG and window/level augmentations.
    assert {(c.robust_aug, c.window_aug) for c in cfgs if "-robust-" in c.run_name()} == {(0.5, 0.5)}
    assert {(c.robust_aug, c.window_aug) for c in cfgs if "-robust-" not in c.run_name()} == {(0.0, 0.0)}
    # Detectors learn archive-format fakes; the second condition's detector the raw generator pixels.
    layout = StudyLayout("/study")
    assert {c.fakes for c in cfgs if not c.run_name().endswith("-raw-real")} == {layout.fakes(64)}
    assert [c.fakes for c in cfgs if c.run_name().endswith("-raw-real")] == [layout.raw_fakes(64)]


def test_the_claim_pairs_a_fake_trained_classifier_with_a_real_control_of_the_same_size_and_steps():
    profile = resolve_profile(replace(PROFILES["full"], data="/d", claim_models=("cnn",), claim_seeds=3, claim_epochs=20))
    pairs = plan.claim_trainings(profile, StudyLayout("/study"), fakes_per_class=450, cpu_share=None)
    assert [(a.run_name(), b.run_name()) for a, b in pairs] == [
        (f"claim-cnn-fake-s{seed}", f"claim-cnn-real-s{seed}") for seed in (0, 1, 2)
    ]
    for fake, real in pairs:
        assert (fake.source, real.source) == ("fake", "real")
        differing = {k for k, v in asdict(fake).items() if asdict(real)[k] != v}
        assert differing == {"source", "name"}  # same model, seed, images per class, epochs, batch: same steps
        assert (fake.train_per_class, fake.epochs, fake.storage) == (250, 20, "/study/claim-runs")  # the seed's 500 fakes
    # Never more per class than the fake train split holds (the control would then see more images).
    small = plan.claim_trainings(profile, StudyLayout("/study"), fakes_per_class=90, cpu_share=None)
    assert {cfg.train_per_class for pair in small for cfg in pair} == {90}


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


# --- content identity: sources, tables, training runs --------------------------------------------------------


def touch_one_image(root) -> str:
    """Re-encode one train image with a few pixels changed: still a valid X-ray, other bytes."""
    from PIL import Image, ImageOps

    path = sorted((root / "train" / "NORMAL").iterdir())[0]
    image = Image.open(path).convert("L")
    image.paste(ImageOps.invert(image.crop((0, 0, 8, 8))), (0, 0))
    image.save(path, format="JPEG", quality=90)
    return path.name


def test_a_source_fingerprint_is_its_content_wherever_it_lives(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b" / "deeper"
    make_kaggle_tree(a, per_class=3, test_per_class=2)
    shutil.copytree(a, b)
    fa, fb = source_fingerprint(str(a)), source_fingerprint(str(b))
    assert fa == fb and fa["files"] == 10 and fa["bytes"] > 0
    touch_one_image(b)
    assert source_fingerprint(str(b))["digest"] != fa["digest"]
    (a / "train" / "NORMAL" / "notes.txt").write_text("a stray file ingest quarantines is still read")
    assert source_fingerprint(str(a))["digest"] != fa["digest"]


def test_a_source_fingerprint_on_s3_comes_from_the_listing(tmp_path, s3_server, s3_bucket):
    make_kaggle_tree(tmp_path / "tree", per_class=3, test_per_class=2)
    upload_tree(s3_server, tmp_path / "tree", s3_bucket, "one/chest_xray")
    upload_tree(s3_server, tmp_path / "tree", s3_bucket, "two/chest_xray")
    one = source_fingerprint(f"s3://{s3_bucket}/one/chest_xray", s3_server)
    assert one == source_fingerprint(f"s3://{s3_bucket}/two/chest_xray", s3_server) and one["files"] == 10
    touch_one_image(tmp_path / "tree")
    upload_tree(s3_server, tmp_path / "tree", s3_bucket, "two/chest_xray")
    assert source_fingerprint(f"s3://{s3_bucket}/two/chest_xray", s3_server)["digest"] != one["digest"]


def write_table(uri, rows: list[tuple[str, int, str]]) -> None:
    """A minimal image table: (sha256, label, split) rows of 1x1 images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cxr_ray.data.schema import IMAGE_SCHEMA

    images = uri / "images"
    images.mkdir(parents=True)
    table = pa.Table.from_pylist([
        {"image": b"\0", "height": 1, "width": 1, "label": label, "class_name": ("NORMAL", "PNEUMONIA")[label],
         "patient_id": sha, "split": split, "source": "real", "sha256": sha, "path": f"{uri}/{sha}.jpeg",
         "generator_run": None, "seed": None}
        for sha, label, split in rows
    ], IMAGE_SCHEMA)
    pq.write_table(table, images / "part-0.parquet")


def test_a_table_identity_is_its_rows_in_any_order_and_place(tmp_path):
    rows = [("aa", 0, "train"), ("bb", 1, "test")]
    write_table(tmp_path / "t1", rows)
    write_table(tmp_path / "t2", rows[::-1])
    write_table(tmp_path / "t3", [("aa", 0, "train"), ("bb", 1, "val")])
    assert table_identity(str(tmp_path / "t1")) == table_identity(str(tmp_path / "t2"))
    assert table_identity(str(tmp_path / "t1")) != table_identity(str(tmp_path / "t3"))


def test_a_run_folder_is_re_used_only_for_the_inputs_it_recorded(tmp_path):
    runs, quiet = str(tmp_path / "runs"), (lambda _: None)
    old = {"config": {"epochs": 1}, "tables": ["t-old"]}
    new = {"config": {"epochs": 1}, "tables": ["t-new"]}
    assert claim_run_name(runs, "deepfake-cnn-real", old, log=quiet) == "deepfake-cnn-real"
    assert claim_run_name(runs, "deepfake-cnn-real", old, log=quiet) == "deepfake-cnn-real"  # the same inputs
    renamed = claim_run_name(runs, "deepfake-cnn-real", new, log=quiet)
    assert renamed == "deepfake-cnn-real-inputs-" + json.loads((tmp_path / "runs" / renamed / "inputs.json").read_text())["digest"][:8]
    assert claim_run_name(runs, "deepfake-cnn-real", new, log=quiet) == renamed
    assert claim_run_name(runs, "deepfake-cnn-real", old, log=quiet) == "deepfake-cnn-real"  # back to the old data
    # A run from before inputs were recorded may have been trained on anything: never re-used.
    (tmp_path / "runs" / "pneumonia-cnn-real").mkdir(parents=True)
    (tmp_path / "runs" / "pneumonia-cnn-real" / "test_metrics.json").write_text("{}")
    assert claim_run_name(runs, "pneumonia-cnn-real", old, log=quiet).startswith("pneumonia-cnn-real-inputs-")


def test_families_and_generalise_are_planned_from_the_profile():
    layout = StudyLayout("/study")
    full = resolve_profile(replace(PROFILES["full"], data="/d"))
    assert full.families == ("sngan", "vae")
    cfg = plan.generalise_config(full, layout, None)
    assert cfg.families == ("dcgan", "sngan", "vae") and cfg.benign == layout.benign(64)
    # The DCGAN's fakes keep their table; every other family has its own, archive format and raw.
    assert cfg.fakes == (layout.fakes(64), "/study/data/fake-sngan-archive-64", "/study/data/fake-vae-archive-64")
    assert layout.family_fakes("vae", 64, raw=True) == "/study/data/fake-vae-raw-64"
    gans = plan.family_gan_configs(full, layout)
    assert {(f, cls, g.family, g.beta1) for f, by in gans.items() for cls, g in by.items()} == {
        ("sngan", "NORMAL", "sngan", 0.0), ("sngan", "PNEUMONIA", "sngan", 0.0),
        ("vae", "NORMAL", "vae", 0.9), ("vae", "PNEUMONIA", "vae", 0.9),
    }  # fmt: skip
    assert resolve_profile(replace(full, families=())).families == ()


@pytest.mark.parametrize("value, word", [("dcgan", "--families"), ("gan3", "--families")])
def test_an_unknown_family_is_one_line(value, word, capsys):
    assert run_study_cli(["--families", value]) == 2
    err = capsys.readouterr().err
    assert word in err and "Traceback" not in err


def test_a_dry_run_of_a_fresh_root_plans_every_stage_without_ray(tmp_path):
    """`--dry-run` reads the manifest and the source's fingerprint only: a process that could not reach Ray if it
    tried prints the plan (issue 18)."""
    from cxr_ray.study.layout import STAGES
    from cxr_ray.study.stages import PIPELINE

    proc = subprocess.run([sys.executable, "jobs/full_study.py", "--storage", str(tmp_path / "study"), "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"study {tmp_path / 'study'}: the plan (dry run; Ray not started)"
    assert "  run     ingest       never run under this study root" in lines
    assert "  run     evaluate     after train, benign (takes their results)" in lines
    assert [line.split()[1] for line in lines[1:]] == [*STAGES, "report"]
    assert [name for name, _, _ in PIPELINE] == list(STAGES)  # the study runs the stages its layout lists
    assert not (tmp_path / "study").exists()
