"""Benign re-processing of reals: each condition on real sample JPEGs (PIL/numpy only), hand-computed window
functions, and one Ray Data run on a small ingested table with a missing source file."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import SAMPLE
from cxr_ray import storage
from cxr_ray.benign import (
    BENIGN_CONDITIONS,
    BenignConfig,
    apply_gamma,
    contrast_stretch,
    format_summary,
    reprocess,
    run_benign,
)
from cxr_ray.config import ConfigError, IngestConfig
from cxr_ray.data import schema
from cxr_ray.data.decode import DecodeError, decode_to_gray
from cxr_ray.storage import StorageError

NORMAL = sorted((SAMPLE / "test" / "NORMAL").iterdir())[0].read_bytes()
PNEUMONIA = sorted((SAMPLE / "test" / "PNEUMONIA").iterdir())[0].read_bytes()


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).mean())


@pytest.mark.parametrize("condition", BENIGN_CONDITIONS)
def test_every_condition_gives_study_pixels(condition):
    for blob in (NORMAL, PNEUMONIA):
        out = reprocess(blob, condition, 64)
        assert out.shape == (64, 64) and out.dtype == np.uint8


def test_ingest_is_the_ingested_pixels_and_the_others_change_them():
    ref = decode_to_gray(NORMAL, 64)
    assert np.array_equal(reprocess(NORMAL, "ingest", 64), ref)
    assert 0 < mad(reprocess(NORMAL, "jpeg95", 64), ref) < 3  # a high-quality re-save: a small change, not none
    assert mad(reprocess(NORMAL, "jpeg60", 64), ref) > mad(reprocess(NORMAL, "jpeg95", 64), ref)
    assert mad(reprocess(NORMAL, "resize_nearest", 64), ref) > 1
    assert reprocess(NORMAL, "gamma0.8", 64).mean() > ref.mean() + 5  # gamma < 1 brightens
    assert reprocess(NORMAL, "gamma1.2", 64).mean() < ref.mean() - 5


def test_png_is_a_lossless_resave_so_it_equals_no_draft():
    # PNG keeps every pixel; what changes is ingest's path: a PNG is decoded in full, never in draft mode.
    png, no_draft = reprocess(NORMAL, "png", 64), reprocess(NORMAL, "no_draft", 64)
    assert np.array_equal(png, no_draft)
    assert not np.array_equal(png, decode_to_gray(NORMAL, 64))


def test_resave_is_the_archive_re_save_alone_the_control_of_the_window_level_changes():
    # A second generation of the archive's own JPEG (q75 4:2:0): small change; gamma adds its own on top of it.
    ref, resaved = decode_to_gray(NORMAL, 64), reprocess(NORMAL, "resave", 64)
    assert 0 < mad(resaved, ref) < 3
    assert mad(reprocess(NORMAL, "gamma0.8", 64), resaved) > 5


def test_window_functions_by_hand():
    # 255 * (128/255) ** 0.8 = 146.93 -> 147; the ends stay put.
    assert apply_gamma(np.array([0, 128, 255], np.uint8), 0.8).tolist() == [0, 147, 255]
    # 255 * (128/255) ** 1.2 = 111.52 -> 112
    assert apply_gamma(np.array([0, 128, 255], np.uint8), 1.2).tolist() == [0, 112, 255]
    # 0..100: 1st percentile 1, 99th 99; 50 -> 49 * 255 / 98 = 127.5 -> 128 (half to even), 0 and 100 clipped.
    ramp = np.arange(101, dtype=np.uint8)
    out = contrast_stretch(ramp)
    assert out[[0, 1, 50, 99, 100]].tolist() == [0, 0, 128, 255, 255]
    flat = np.full((8, 8), 77, np.uint8)
    assert np.array_equal(contrast_stretch(flat), flat)


def test_png16_export_is_stretched_by_ingest():
    # A gray PNG spanning 50..150: ingest keeps that range; exported as 16-bit, ingest scales it to 0..255.
    ramp = np.tile(np.linspace(50, 150, 224).round().astype(np.uint8), (224, 1))
    out = io.BytesIO()
    Image.fromarray(ramp, mode="L").save(out, "PNG")
    blob = out.getvalue()
    ref = reprocess(blob, "ingest", 64)
    assert ref.min() >= 50 and ref.max() <= 150
    deep = reprocess(blob, "png16", 64)
    assert deep.min() <= 3 and deep.max() >= 252  # 0..255 at full size; the resize to 64 px averages the end columns
    # The real JPEG does not span 0..255 either, so its 16-bit export is stretched too.
    assert reprocess(NORMAL, "png16", 64).std() > decode_to_gray(NORMAL, 64).std()


def test_unknown_condition_and_undecodable_file():
    with pytest.raises(ValueError, match=r"unknown benign condition 'jpeg99'.*jpeg95"):
        reprocess(NORMAL, "jpeg99", 64)
    with pytest.raises(DecodeError, match="not an image"):
        reprocess(b"not an image at all", "jpeg95", 64)
    with pytest.raises(DecodeError, match="truncated"):
        reprocess(NORMAL[: len(NORMAL) // 3], "png", 64)


def test_config_refuses_bad_conditions_and_split():
    with pytest.raises(ConfigError, match="unknown benign condition 'blur'"):
        BenignConfig(real="a", dest="b", conditions=("png", "blur"))
    with pytest.raises(ConfigError, match="png given more than once"):
        BenignConfig(real="a", dest="b", conditions=("png", "png"))
    with pytest.raises(ConfigError, match="splits must be some of train, val, test, got holdout"):
        BenignConfig(real="a", dest="b", splits=("holdout",))
    with pytest.raises(ConfigError, match="names a split more than once"):
        BenignConfig(real="a", dest="b", splits=("val", "val"))
    assert BenignConfig(real="a", dest="b").splits == ("val", "test")  # val fixes the benign-robust point


def test_cli_lists_the_conditions_it_accepts():
    from cxr_ray.cli.benign_cmd import CONDITIONS_HELP

    assert tuple(CONDITIONS_HELP.split(", ")) == BENIGN_CONDITIONS


def test_destination_inside_the_real_table_is_refused_before_ray(tmp_path):
    real = tmp_path / "real"
    with pytest.raises(StorageError, match="is inside the real table"):
        run_benign(BenignConfig(real=str(real), dest=str(real / "benign")), log=lambda m: None)


def test_run_benign_one_row_per_image_and_condition_missing_source_listed(ray_local, kaggle_tree, tmp_path):
    from cxr_ray.data.ingest import run_ingest

    real = tmp_path / "real-64"
    run_ingest(IngestConfig(src=str(kaggle_tree), dest=str(real), resolution=64), log=lambda m: None)
    ingested = pq.read_table(storage.join(storage.published(str(real)), schema.IMAGES_DIR)).to_pylist()
    test_rows = {r["path"]: r for r in ingested if r["split"] in ("val", "test")}  # the default splits
    assert {r["split"] for r in test_rows.values()} == {"val", "test"}
    missing = sorted(test_rows)[0]
    Path(missing).unlink()  # the table's `path` is the source file's location

    dest = tmp_path / "benign-64"
    summary = run_benign(BenignConfig(real=str(real), dest=str(dest), batch_size=2), log=lambda m: None)

    assert storage.is_complete(str(dest))
    assert [u["path"] for u in summary["unreadable"]] == [missing]
    assert summary["unreadable"][0]["reason"].startswith("unreadable:")
    n = len(test_rows) - 1
    assert summary["rows_by_condition"] == {c: n for c in BENIGN_CONDITIONS}
    out = pq.read_table(storage.join(storage.published(str(dest)), schema.IMAGES_DIR)).to_pylist()
    assert len(out) == n * len(BENIGN_CONDITIONS)
    assert {(r["path"], r["condition"]) for r in out} == {(p, c) for p in test_rows if p != missing for c in BENIGN_CONDITIONS}
    for row in out:
        real_row = test_rows[row["path"]]
        for key in ("label", "class_name", "patient_id", "split"):
            assert row[key] == real_row[key]
        assert row["source"] == "real" and row["generator_run"] is None and row["seed"] is None
        assert row["sha256"] == hashlib.sha256(row["image"]).hexdigest()
        if row["condition"] == "ingest":
            assert row["image"] == real_row["image"]  # the reference reproduces ingest exactly
        elif row["condition"] == "gamma0.8":
            assert row["image"] != real_row["image"]
    assert summary["splits"] == ["val", "test"]
    assert f"not re-processed {missing}: unreadable" in format_summary(summary) and "gamma0.8" in format_summary(summary)
    assert "val+test reals" in format_summary(summary)
