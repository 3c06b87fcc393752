"""Fake generation on Ray Data: the reals' schema, seed ranges, byte-for-byte reproducibility, S3;
plus the frequency baseline and the generate command line."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from cxr_ray import storage
from cxr_ray.checkpoint import save_state
from cxr_ray.config import ConfigError
from cxr_ray.data import schema
from cxr_ray.data.datasets import TaskData, load_arrays, require_complete, resolution_of
from cxr_ray.data.layout import CLASS_NAMES
from cxr_ray.filenames import GAN_SUMMARY_FILE, STATE_FILE
from cxr_ray.generate import MICRO_BATCH, GenerateConfig, load_generator, noise_for_seeds, run_generate
from cxr_ray.storage import StorageError

CHECKPOINT = "checkpoint_2026-01-01_00-00-00.000000"
TRAIN_SEEDS, TEST_SEEDS = (0, 40), (1_000_000, 1_000_020)


def save_untrained_gan(run_uri: str, class_name: str, s3=None, seed: int = 0, with_summary: bool = False) -> str:
    """An untrained small DCGAN (ngf=8) saved the way cxr_ray.train.gan saves checkpoints.

    BN running variances are shrunk so that the untrained generator's outputs
    span the gray range instead of sitting at mid-gray: plumbing tests need
    distinct images per seed, not good ones. class_name "all" makes a conditional GAN.
    """
    from cxr_ray.gan_state import build_gan_state
    from cxr_ray.models.dcgan import build_dcgan
    from cxr_ray.train.gan import GanConfig

    conditional = class_name == "all"
    name = run_uri.rstrip("/").split("/")[-1]
    cfg = GanConfig(data="unused", class_name=class_name, conditional=conditional, image_size=64, ngf=8, ndf=8, name=name)
    torch.manual_seed(seed)
    generator, discriminator = build_dcgan(64, ngf=8, ndf=8, num_classes=cfg.num_classes)
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.fill_(0.01)
    state = build_gan_state(cfg, 1, generator, discriminator, None, None, [])
    save_state(state, storage.join(run_uri, CHECKPOINT, STATE_FILE), s3)
    if with_summary:
        storage.write_json_atomic(storage.join(run_uri, GAN_SUMMARY_FILE), {"checkpoint": storage.join(run_uri, CHECKPOINT)}, s3)
    return run_uri


def read_images(table_uri: str, s3=None):
    fs, path = storage.resolve(storage.join(storage.published(table_uri, s3), schema.IMAGES_DIR), s3)
    return pq.read_table(path, filesystem=fs)


def by_class_seed(table) -> dict[tuple[str, int], bytes]:
    return {(r["class_name"], r["seed"]): r["image"] for r in table.select(["class_name", "seed", "image"]).to_pylist()}


@pytest.fixture(scope="module")
def gan_runs(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("gans")
    return [
        save_untrained_gan(str(root / "dcgan-normal"), "NORMAL", seed=1, with_summary=True),
        save_untrained_gan(str(root / "dcgan-pneumonia"), "PNEUMONIA", seed=2),  # found via checkpoint_*/
    ]


@pytest.fixture(scope="module")
def fakes64(ray_local, gan_runs, tmp_path_factory) -> str:
    dest = str(tmp_path_factory.mktemp("fakes") / "fakes-64")
    cfg = GenerateConfig(generators=tuple(gan_runs), dest=dest, train_seeds=TRAIN_SEEDS, test_seeds=TEST_SEEDS, val_fraction=0.25, batch_size=16)
    run_generate(cfg, log=lambda m: None)
    return dest


def test_fakes_share_the_reals_schema_and_pixel_pipeline(sample64, fakes64, gan_runs):
    reals, fakes = read_images(sample64), read_images(fakes64)
    assert fakes.schema.equals(reals.schema, check_metadata=False)
    assert fakes.schema.equals(schema.IMAGE_SCHEMA, check_metadata=False)
    require_complete(fakes64, None)
    assert resolution_of(fakes64) == resolution_of(sample64) == 64

    summary = storage.read_json(storage.join(fakes64, schema.SUMMARY_FILE))
    # 40 train-range seeds per class: the last quarter is val; 20 held-out test seeds per class.
    assert summary["by_split_class"] == {split: {c: n for c in CLASS_NAMES} for split, n in (("train", 30), ("val", 10), ("test", 20))}
    assert summary["rows"] == fakes.num_rows == 120
    assert summary["seed_ranges"] == {"train": [0, 30], "val": [30, 40], "test": [1_000_000, 1_000_020]}

    runs = {"NORMAL": "dcgan-normal", "PNEUMONIA": "dcgan-pneumonia"}
    for row in fakes.to_pylist():
        run = runs[row["class_name"]]
        assert row["source"] == "fake" and row["label"] == CLASS_NAMES.index(row["class_name"])
        assert row["height"] == row["width"] == 64 and len(row["image"]) == 64 * 64
        assert row["sha256"] == hashlib.sha256(row["image"]).hexdigest()
        assert row["patient_id"] == f"fake/{run}/{row['seed']}" and row["path"] == f"generated://{run}/{row['seed']}"
        assert row["generator_run"] == run
        start, end = summary["seed_ranges"][row["split"]]
        assert start <= row["seed"] < end

    # Pixels are round((x + 1) * 127.5) of the tanh output: to_input maps them back within half a gray level.
    from cxr_ray.pixels import to_input

    generator, _ = load_generator(gan_runs[0])
    rows = [r for r in fakes.to_pylist() if r["class_name"] == "NORMAL"][:4]
    noise = torch.zeros(MICRO_BATCH, generator.nz)
    noise[: len(rows)] = noise_for_seeds([r["seed"] for r in rows], generator.nz)
    with torch.no_grad():
        tanh = generator(noise)[: len(rows), 0]
    stored = torch.from_numpy(np.stack([np.frombuffer(r["image"], np.uint8).reshape(64, 64) for r in rows]))
    assert float((to_input(stored) - tanh.clamp(-1, 1)).abs().max()) <= 0.5 / 127.5 + 1e-6

    # Reals and fakes load together for the detector: targets by source.
    arrays = load_arrays(TaskData(task="deepfake", real=sample64, fake=fakes64), ["test"])
    assert arrays["image"].shape == (65 + 40, 64, 64) and int(arrays["target"].sum()) == 40


def test_detector_train_and_test_fakes_come_from_disjoint_seeds(fakes64):
    rows = read_images(fakes64).select(["split", "seed", "class_name"]).to_pylist()
    seeds = {split: {r["seed"] for r in rows if r["split"] == split} for split in ("train", "val", "test")}
    assert not (seeds["train"] | seeds["val"]) & seeds["test"]
    assert not seeds["train"] & seeds["val"]
    # No two fakes share an id, so patient-level bookkeeping sees distinct "patients".
    ids = read_images(fakes64).column("patient_id").to_pylist()
    assert len(set(ids)) == len(ids)

    with pytest.raises(ConfigError, match="overlap"):
        GenerateConfig(generators=("x",), dest="y", train_seeds=(0, 100), test_seeds=(50, 150))


def test_same_seed_same_bytes_whatever_the_batching(fakes64, gan_runs, tmp_path):
    # Other batch size, another seed range overlapping the first one, and the generators in the other order.
    dest = str(tmp_path / "again")
    cfg = GenerateConfig(generators=tuple(reversed(gan_runs)), dest=dest, train_seeds=(25, 45), test_seeds=(1_000_010, 1_000_013), batch_size=3)
    run_generate(cfg, log=lambda m: None)
    first, second = by_class_seed(read_images(fakes64)), by_class_seed(read_images(dest))
    common = set(first) & set(second)
    assert len(common) == 2 * (15 + 3)
    assert all(first[key] == second[key] for key in common)
    # ... and different seeds give different images.
    assert len(set(first.values())) == len(first)


def test_ingest_records_the_archive_format_and_archive_fakes_are_raw_fakes_stored_that_way(sample64, fakes64, gan_runs, tmp_path):
    from cxr_ray.data.archive import ArchiveFormat, encode_as_archive, read_archive_format, to_archive_pixels
    from cxr_ray.data.ingest import format_summary as ingest_summary_text
    from cxr_ray.generate import format_summary

    # Ingest read the sample's headers: 224 px RGB JPEGs, quality 75 (from the quantisation tables), 4:2:0.
    summary = storage.read_json(storage.join(sample64, schema.SUMMARY_FILE))
    fmt = read_archive_format(sample64)
    assert fmt == ArchiveFormat("JPEG", 224, 224, "RGB", 75, "4:2:0", files_sampled=256, agreement=1.0)
    assert summary["archive_format"] == fmt.to_dict()
    assert "archive format: JPEG 224x224 RGB q75 4:2:0 (256 files, 100% agree)" in ingest_summary_text(summary)

    dest = str(tmp_path / "archive-fakes")
    cfg = GenerateConfig(
        generators=tuple(gan_runs), dest=dest, train_seeds=(0, 4), test_seeds=(1_000_000, 1_000_002), batch_size=3,
        storage_format="archive", archive_format=fmt.to_dict(),
    )
    out = run_generate(cfg, log=lambda m: None)
    assert out["storage_format"] == "archive" and out["archive_format"] == fmt.to_dict()
    assert "stored as the archive: JPEG 224x224 RGB q75 4:2:0" in format_summary(out)
    raw, rows = by_class_seed(read_images(fakes64)), read_images(dest).to_pylist()
    assert len(rows) == 2 * (4 + 2)
    for row in rows:
        image = np.frombuffer(raw[(row["class_name"], row["seed"])], np.uint8).reshape(1, 64, 64)
        # Same seed: the raw fake, stored as the archive stores a real and decoded by ingest's path.
        assert row["image"] == to_archive_pixels(image, fmt, 64)[0].tobytes() != image.tobytes()
        assert row["sha256"] == hashlib.sha256(encode_as_archive(image[0], fmt)).hexdigest()  # the stored file's hash
        assert row["height"] == row["width"] == 64


def test_generate_to_s3_with_a_conditional_gan(ray_local, s3_server, s3_bucket):
    gan = save_untrained_gan(f"s3://{s3_bucket}/gans/dcgan-all", "all", s3=s3_server, seed=3)
    dest = f"s3://{s3_bucket}/study/fakes-64"
    cfg = GenerateConfig(generators=(gan,), dest=dest, train_seeds=(0, 6), test_seeds=(100, 104), val_fraction=0.5)
    summary = run_generate(cfg, s3=s3_server, log=lambda m: None)
    require_complete(dest, s3_server)
    assert resolution_of(dest, s3_server) == 64
    table = read_images(dest, s3_server)
    assert table.num_rows == summary["rows"] == 2 * (6 + 4)
    assert summary["by_split_class"]["test"] == {"NORMAL": 4, "PNEUMONIA": 4}
    # One conditional run makes both classes: the class keeps ids apart.
    ids = set(table.column("patient_id").to_pylist())
    assert "fake/dcgan-all/NORMAL/100" in ids and "fake/dcgan-all/PNEUMONIA/100" in ids
    assert not storage.exists(f"s3://{s3_bucket}/study/.fakes-64", s3_server)


def test_bad_generator_inputs_are_named(gan_runs, tmp_path):
    dest = str(tmp_path / "out")
    with pytest.raises(ConfigError, match="nowhere"):
        run_generate(GenerateConfig(generators=(str(tmp_path / "nowhere"),), dest=dest))
    with pytest.raises(ConfigError, match="two generators for class NORMAL"):
        run_generate(GenerateConfig(generators=(gan_runs[0], gan_runs[0]), dest=dest))
    other = tmp_path / "not-a-gan"
    save_state({"kind": "classifier", "model_state": {}}, str(other / STATE_FILE))
    with pytest.raises(ConfigError, match="not a DCGAN checkpoint"):
        run_generate(GenerateConfig(generators=(str(other),), dest=dest))
    (tmp_path / "exists").mkdir()
    with pytest.raises(StorageError, match="already exists"):
        run_generate(GenerateConfig(generators=tuple(gan_runs), dest=str(tmp_path / "exists")))
    assert not Path(dest).exists()


def test_output_overlapping_a_generator_is_refused_before_writing(gan_runs):
    run = Path(gan_runs[0])
    before = {p: p.read_bytes() for p in sorted(run.parent.rglob("*")) if p.is_file()}
    for dest, relation in ((run, "is"), (run / "fakes", "is inside"), (run.parent, "contains")):
        with pytest.raises(StorageError) as info:
            run_generate(GenerateConfig(generators=tuple(gan_runs), dest=str(dest), overwrite=True))
        assert str(info.value) == f"{dest}: the output {relation} the generator {run}; choose a folder outside it"
    assert {p: p.read_bytes() for p in sorted(run.parent.rglob("*")) if p.is_file()} == before


def test_frequency_baseline_separates_untrained_fakes_and_names_bands(sample64, fakes64):
    from cxr_ray.freq_baseline import BAND_NAMES, run_freq_baseline

    out = run_freq_baseline(sample64, fakes64, perturbations=("none", "blur1"), n_boot=100)
    clean = {(r["operating_point"], r["metric"]): r for r in out["rows"] if r["perturbation"] == "none"}
    # Threshold-free metrics, then the rates at each operating point fixed on the baseline's own validation split.
    assert {m for p, m in clean if p == ""} == {"auc", "ap", "ece", "brier"}
    assert set(out["operating_points"]) == {p for p, _ in clean if p} == {"youden", "fpr_0.01", "fpr_0.001"}
    assert {m for p, m in clean if p == "fpr_0.01"} == {"tpr", "fpr", "accuracy", "ppv@0.001", "ppv@0.01"}
    assert clean[("", "auc")]["value"] > 0.9 and clean[("", "auc")]["n"] == 65 + 40
    assert {r["perturbation"] for r in out["rows"]} == {"none", "blur1"}
    assert abs(sum(b["weight_share"] for b in out["bands"]) - 1.0) < 1e-9
    top = max(out["bands"], key=lambda b: b["weight_share"])
    assert top["band"] in BAND_NAMES and top["band"] in out["explanation"]
    assert 0.0 < out["threshold"] < 1.0


def test_logistic_regression_recovers_a_known_direction():
    from cxr_ray.freq_baseline import fit_logistic

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3))
    y = (rng.random(2000) < 1 / (1 + np.exp(-(2.0 * x[:, 0] - 1.0 * x[:, 2])))).astype(int)
    weights, _ = fit_logistic(x, y, l2=1e-4)
    assert weights[0] > 1.5 and weights[2] < -0.6 and abs(weights[1]) < 0.2


def cli_app():
    import typer

    from cxr_ray.cli.generate_cmd import EPILOG_GENERATE, generate

    app = typer.Typer()
    app.command(epilog=EPILOG_GENERATE)(generate)
    app.command(name="noop", hidden=True)(lambda: None)  # keeps "generate" a sub-command
    return app


def test_generate_command_help_and_clean_errors(gan_runs, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli_app(), ["generate", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output
    result = runner.invoke(cli_app(), ["generate", "--gan", gan_runs[0], "--out", str(tmp_path / "o"), "--test-seed-start", "10"])
    assert result.exit_code == 2 and "overlap" in result.output and "Traceback" not in result.output


def test_command_modules_import_no_heavy_modules():
    code = (
        "import sys; import cxr_ray.cli.generate_cmd, cxr_ray.cli.eval_cmds\n"
        "print('HEAVY', [m for m in ('torch', 'ray', 'pyarrow', 'torchvision') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
