"""Local tampering (issue 16): lung fields from the pixels alone, and edit masks inside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE
from cxr_ray.tamper.lungs import lung_field_stats, lung_fields, template
from cxr_ray.tamper.masks import MIN_AREA, mask_seed, sample_mask


def phantom(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A bright chest with two dark lungs, a brighter mediastinum and rib stripes; (image, true lungs)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = np.zeros((size, size), bool)
    for cx in (0.3, 0.7):
        lungs |= ((xx - cx) / 0.13) ** 2 + ((yy - 0.48) / 0.3) ** 2 <= 1
    image = np.full((size, size), 170.0)
    image[:, : int(0.05 * size)] = image[:, -int(0.05 * size) :] = 30  # air outside the body
    image[:, int(0.46 * size) : int(0.54 * size)] = 220  # mediastinum
    image[lungs] = 70
    image[lungs & (np.sin(yy * 60) > 0.6)] += 40  # ribs over the lungs
    return np.clip(image, 0, 255).astype(np.uint8), lungs


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("size", [64, 224])
def test_lung_fields_of_a_phantom_are_its_lungs_at_its_size(size):
    image, truth = phantom(size)
    mask, method = lung_fields(image)
    assert method == "found" and mask.shape == (size, size)
    assert iou(mask, truth) > 0.75
    assert iou(template(size), truth) > 0.6  # the fallback sits where lungs are


def test_a_consolidated_lung_is_mirrored_from_the_other_side():
    image, truth = phantom()
    image[:, 32:][truth[:, 32:]] = 175  # the right lung as opaque as the body: pneumonia hides it from a threshold
    mask, method = lung_fields(image)
    assert method == "mirrored" and mask[:, 32:].sum() > 0.5 * truth[:, 32:].sum()


def test_lung_fields_of_the_sample_x_rays():
    files = sorted(Path(SAMPLE).glob("*/*/*.jpeg"))[::5]
    images = np.stack([np.asarray(Image.open(f).convert("L").resize((64, 64), Image.Resampling.BILINEAR)) for f in files])
    stats = lung_field_stats(images)
    assert stats["n"] == len(files) and stats["methods"]["found"] >= 0.7 * len(files)
    assert 0.05 < stats["area_p5"] and stats["area_p95"] < 0.4  # lungs, not the whole image or a speck
    for image in images[:10]:
        mask, _ = lung_fields(image)
        assert mask[:, :32].any() and mask[:, 32:].any()  # a lung on each side
    with pytest.raises(ValueError, match="uint8"):
        lung_fields(images[0].astype(np.float32))


def test_masks_lie_inside_the_lungs_and_are_drawn_from_the_seed():
    _, lungs = phantom()
    masks = [sample_mask(lungs, mask_seed(0, f"img-{i}")) for i in range(50)]
    assert all((m & ~lungs).sum() == 0 and m.mean() >= MIN_AREA for m in masks)
    areas = [m.mean() for m in masks]
    assert max(areas) > 2 * min(areas)  # varied sizes
    centres = np.array([np.argwhere(m).mean(0) for m in masks])
    assert (centres[:, 1] < 32).any() and (centres[:, 1] > 32).any()  # both lungs
    assert np.array_equal(sample_mask(lungs, mask_seed(0, "img-3")), masks[3])  # a re-run draws the same mask
    assert not np.array_equal(sample_mask(lungs, mask_seed(1, "img-3")), masks[3])
    with pytest.raises(ValueError, match="lung mask"):
        sample_mask(np.zeros((64, 64), bool), mask_seed(0, "x"))


@pytest.fixture(scope="module")
def tamper_run(sample64, tmp_path_factory):
    """A tiny tamper model trained once with Ray Train on the sample (2 workers, 2 epochs, rank 1 killed in epoch 2)."""
    from cxr_ray.train.tamper_model import TamperModelConfig, train_tamper_model

    root = tmp_path_factory.mktemp("tamper-runs")
    marker = root / "failed-once"
    cfg = TamperModelConfig(data=sample64, storage=str(root / "runs"), epochs=2, batch_size=16, ngf=8, ndf=8,
                            num_workers=2, max_failures=1, inject_failure={"epoch": 1, "rank": 1, "marker": str(marker)})  # fmt: skip
    return cfg, train_tamper_model(cfg, log=lambda m: None), marker


@pytest.mark.slow  # CXR_RAY_SLOW=1: the tamper model, its edits and the localiser train once for these (~7 min)
def test_the_tamper_model_trains_with_ddp_resumes_after_a_failure_and_edits_only_the_mask(tamper_run, tmp_path):
    import json

    import torch

    from cxr_ray.filenames import SAMPLES_DIR, TAMPER_SUMMARY_FILE
    from cxr_ray.tamper.masks import mask_seed, sample_mask
    from cxr_ray.tamper.state import inpainter_from_state, load_tamper_state
    from cxr_ray.train.tamper_model import train_tamper_model

    cfg, summary, marker = tamper_run
    assert marker.exists()  # rank 1 died in epoch 2; the group restarted from epoch 1's checkpoint
    run = Path(cfg.storage) / cfg.run_name()
    assert json.loads((run / TAMPER_SUMMARY_FILE).read_text())["epochs"] == 2 == summary["epochs"]
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert all(np.isfinite(h["val_l1"]) and np.isfinite(h["loss_g"]) for h in summary["history"])
    assert {p.name for p in (run / SAMPLES_DIR).iterdir()} == {"epoch_001.png", "epoch_002.png"}

    state = load_tamper_state(str(run))  # weights_only, the run folder's own checkpoint
    inpainter = inpainter_from_state(state)
    image, lungs = phantom()
    mask = torch.from_numpy(sample_mask(lungs, mask_seed(0, "phantom")).astype(np.float32))[None, None]
    x = torch.from_numpy(image).float()[None, None] / 127.5 - 1
    with torch.no_grad():
        inject, remove = inpainter(x, mask, torch.tensor([1])), inpainter(x, mask, torch.tensor([0]))
    assert torch.equal(inject[mask == 0], x[mask == 0])  # outside the mask an edit is the original, bit for bit
    assert not torch.equal(inject[mask == 1], x[mask == 1]) and not torch.equal(inject, remove)  # the class matters
    again = train_tamper_model(cfg, log=lambda m: None)  # a finished run is not trained again
    assert again["checkpoint"] == summary["checkpoint"]


@pytest.fixture(scope="module")
def edits(tamper_run, sample64, tmp_path_factory):
    """Every split of the sample edited once, stored in the archive's format (the default), seed 3."""
    from cxr_ray.tamper.job import TamperConfig, run_tamper

    cfg, _, _ = tamper_run
    dest = str(tmp_path_factory.mktemp("edits") / "stored")
    summary = run_tamper(TamperConfig(real=sample64, model=str(Path(cfg.storage) / cfg.run_name()), dest=dest, seed=3),
                         log=lambda m: None)  # fmt: skip
    return dest, summary


@pytest.fixture(scope="module")
def localiser_run(sample64, edits, tmp_path_factory):
    from cxr_ray.benign import BenignConfig, run_benign
    from cxr_ray.train.localiser import LocaliserConfig, train_localiser

    root = tmp_path_factory.mktemp("loc")
    benign = str(root / "benign")  # the re-saved control among the conditions: edits are stored that way too
    run_benign(BenignConfig(real=sample64, dest=benign, conditions=("ingest", "resave", "jpeg85"), splits=("test",)), log=lambda m: None)
    loc = LocaliserConfig(data=sample64, tampered=edits[0], storage=str(root / "runs"), epochs=2, batch_size=32, width=8,
                          n_boot=50, benign=benign, num_workers=1)  # fmt: skip
    return loc, train_localiser(loc, log=lambda m: None)


@pytest.mark.slow  # CXR_RAY_SLOW=1: the tamper model, its edits and the localiser train once for these (~7 min)
def test_the_tamper_job_edits_inside_the_lungs_both_ways_and_leaves_the_originals(tamper_run, edits, sample64, tmp_path):
    import pyarrow.parquet as pq

    from cxr_ray.config import ConfigError
    from cxr_ray.tamper.job import TamperConfig, run_tamper
    from cxr_ray.tamper.lungs import lung_fields

    cfg, _, _ = tamper_run
    model = str(Path(cfg.storage) / cfg.run_name())
    before = {p: p.read_bytes() for p in Path(sample64).rglob("*") if p.is_file()}
    raw = run_tamper(TamperConfig(real=sample64, model=model, dest=str(tmp_path / "raw"), splits=("test",),
                                  storage_format="raw", seed=3), log=lambda m: None)  # fmt: skip
    stored_dest, stored = edits
    assert {p: p.read_bytes() for p in Path(sample64).rglob("*") if p.is_file()} == before  # originals untouched

    real = pq.read_table(Path(sample64) / "images").to_pylist()
    by_path = {r["path"]: r for r in real}
    assert stored["rows"] == len(real) and raw["rows"] == sum(r["split"] == "test" for r in real)
    assert set(stored["by_split_direction"]["test"]) == {"inject", "remove"}
    edits = pq.read_table(tmp_path / "raw" / "images").to_pylist()
    archived = {r["original_path"]: r for r in pq.read_table(Path(stored_dest) / "images").to_pylist()}
    for edit in edits:
        original = by_path[edit["original_path"]]
        side = int(edit["height"])
        before_px = np.frombuffer(original["image"], np.uint8).reshape(side, side)
        after_px = np.frombuffer(edit["image"], np.uint8).reshape(side, side)
        mask = np.frombuffer(edit["mask"], np.uint8).reshape(side, side).astype(bool)
        assert mask.any() and not (mask & ~lung_fields(before_px)[0]).any()  # inside the lung fields
        assert np.array_equal(after_px[~mask], before_px[~mask])  # raw: outside the mask, the original
        assert edit["direction"] == ("inject" if original["label"] == 0 else "remove") and edit["wanted"] == 1 - original["label"]
        assert edit["patient_id"] == original["patient_id"] and edit["split"] == original["split"]
        assert edit["source"] == "fake" and edit["original_sha256"] == original["sha256"]
        # Seeded by the image's path: the archive-format run edited the same region.
        assert archived[edit["original_path"]]["mask"] == edit["mask"]
    with pytest.raises(ConfigError, match="splits"):
        TamperConfig(real=sample64, model=model, dest=str(tmp_path / "x"), splits=("holdout",))
    from cxr_ray.storage import StorageError

    with pytest.raises(StorageError):
        run_tamper(TamperConfig(real=sample64, model=model, dest=str(Path(sample64) / "edits")), log=lambda m: None)


def test_attack_rows_count_flips_of_images_called_right_with_patient_intervals():
    from cxr_ray.scoring.runs import ModelRun
    from cxr_ray.metrics import patient_mean_interval
    from cxr_ray.tamper.attack import attack_rows

    run = ModelRun(run="clf", run_dir="/r", state_uri="/r/s", task="pneumonia", model="cnn", train_source="real",
                   threshold=0.5, image_size=64)  # fmt: skip
    # Four NORMAL originals (two patients): three called right (NORMAL); the edit turns two of those to PNEUMONIA.
    calls = {"inject": {"original": np.array([0, 0, 0, 1]), "edited": np.array([1, 1, 0, 1]),
                        "patient": np.array(["a", "a", "b", "b"]), "label": np.array([0, 0, 0, 0])}}  # fmt: skip
    (row,) = attack_rows(run, calls, n_boot=200, seed=0)
    assert row["direction"] == "inject" and row["n"] == 4 and row["n_right_unedited"] == 3
    assert row["unedited_rate"] == 0.25 and row["edited_rate"] == 0.75 and row["difference"] == 0.5
    assert row["flipped"] == pytest.approx(2 / 3)
    assert row["edited_low"] <= row["edited_rate"] <= row["edited_high"]
    # One patient's images move together: with every value alike within a patient the interval spans the patients.
    mean, low, high = patient_mean_interval(np.array([1.0, 1.0, 0.0, 0.0]), ["a", "a", "b", "b"], 500, 0)
    assert mean == 0.5 and low == 0.0 and high == 1.0
    none, low, high = patient_mean_interval(np.zeros(50), [f"p{i}" for i in range(50)], 200, 0, rate=True)
    assert none == 0.0 and low == 0.0 and 0.05 < high < 0.07  # no hits: the exact one-sided bound, not [0, 0]


@pytest.mark.slow  # CXR_RAY_SLOW=1: the tamper model, its edits and the localiser train once for these (~7 min)
def test_attack_success_scores_edits_and_originals_with_each_classifier(edits, sample64, tmp_path):
    import pyarrow.parquet as pq

    from cxr_ray.tamper.attack import AttackConfig, run_attack
    from cxr_ray.train.classifier import ClassifierConfig, train_classifier

    edits = edits[0]
    train_classifier(ClassifierConfig(data=sample64, model="cnn", epochs=1, batch_size=32, storage=str(tmp_path / "runs"),
                                      n_boot=50, num_workers=1), log=lambda m: None)  # fmt: skip
    summary = run_attack(AttackConfig(tampered=edits, real=sample64, runs=(str(tmp_path / "runs"),), dest=str(tmp_path / "attack"),
                                      n_boot=100), log=lambda m: None)  # fmt: skip
    real = pq.read_table(Path(sample64) / "images", columns=["split", "label"]).to_pylist()
    n_test = {label: sum(r["split"] == "test" and r["label"] == label for r in real) for label in (0, 1)}
    rows = {r["direction"]: r for r in summary["rows"]}
    assert rows["inject"]["n"] == n_test[0] and rows["remove"]["n"] == n_test[1]
    for r in rows.values():
        assert 0 <= r["edited_rate"] <= 1 and r["difference"] == pytest.approx(r["edited_rate"] - r["unedited_rate"])
    assert "| inject |" in (tmp_path / "attack" / "attack.md").read_text()


def test_localiser_rows_keep_their_split_and_iou_counts_overlap():
    import pyarrow as pa

    from cxr_ray.train.localiser import edited_rows, iou, real_rows

    batch = pa.table({"image": [b"\x01" * 4, b"\x02" * 4], "split": ["train", "test"], "path": ["a", "b"],
                      "patient_id": ["p", "q"], "mask": [b"\x01\x00\x00\x00", b"\x00" * 4]})  # fmt: skip
    reals = real_rows(batch.drop_columns(["mask"]), ["train"])
    edits = edited_rows(batch, ["test"])
    assert reals.column("path").to_pylist() == ["a"] and reals.column("mask").to_pylist() == [b"\x00" * 4]
    assert edits.column("path").to_pylist() == ["b"] and edits.column("target").to_pylist() == [1]
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2], b[0, :1] = True, True  # 4 of 8 pixels shared
    assert iou(a, b).tolist() == [0.5, 1.0]  # both empty: a perfect match


@pytest.mark.slow  # CXR_RAY_SLOW=1: the tamper model, its edits and the localiser train once for these (~7 min)
def test_the_localiser_trains_on_train_edits_and_is_scored_once_on_test(localiser_run):
    import torch

    from cxr_ray.checkpoint import load_state
    from cxr_ray.train.localiser import MAP_THRESHOLDS, localiser_from_state, train_localiser

    loc, record = localiser_run
    t = record["test"]
    assert t["n_edited"] > 0 and t["n_real"] > 0 and 0 <= t["image_auc"] <= 1 and 0 <= t["pixel_auc"] <= 1
    assert t["test_fpr_ci"][0] <= t["test_fpr"] <= t["test_fpr_ci"][1] and t["map_threshold"] in MAP_THRESHOLDS
    assert 0 <= t["iou"] <= 1 and len(record["history"]) == 2
    assert set(t["benign_fpr"]) == {"ingest", "resave", "jpeg85"}  # false alarms on benignly re-processed reals
    assert all(0 <= rate <= high <= 1 for rate, _, high in t["benign_fpr"].values())
    state = load_state(str(Path(record["checkpoint"]) / "state.pt"))  # plain data, weights_only
    assert localiser_from_state(state)(torch.zeros(2, 1, 64, 64)).shape == (2, 1, 64, 64)
    assert train_localiser(loc, log=lambda m: None)["checkpoint"] == record["checkpoint"]  # finished: not retrained
    # The benign folder re-made with other conditions (as a study re-run with other --benign-conditions does): the
    # finished run's false alarms are scored again on it, at the recorded threshold, without retraining.
    from cxr_ray.benign import BenignConfig, run_benign

    run_benign(BenignConfig(real=loc.data, dest=loc.benign, conditions=("ingest", "png"), splits=("test",), overwrite=True),
               log=lambda m: None)  # fmt: skip
    again = train_localiser(loc, log=lambda m: None)
    assert set(again["test"]["benign_fpr"]) == {"ingest", "png"} and again["checkpoint"] == record["checkpoint"]
    assert again["test"]["threshold"] == t["threshold"] and again["test"]["benign_identity"] != t["benign_identity"]


@pytest.mark.slow  # CXR_RAY_SLOW=1: the tamper model, its edits and the localiser train once for these (~7 min)
def test_a_localiser_needs_edits_of_every_split(tamper_run, sample64, tmp_path):
    from cxr_ray.config import ConfigError
    from cxr_ray.tamper.job import TamperConfig, run_tamper
    from cxr_ray.train.localiser import LocaliserConfig, train_localiser

    cfg, _, _ = tamper_run
    only_test = str(tmp_path / "test-edits")
    run_tamper(TamperConfig(real=sample64, model=str(Path(cfg.storage) / cfg.run_name()), dest=only_test, splits=("test",)),
               log=lambda m: None)  # fmt: skip
    with pytest.raises(ConfigError, match="no train, val edits"):
        train_localiser(LocaliserConfig(data=sample64, tampered=only_test, storage=str(tmp_path / "runs")), log=lambda m: None)


@pytest.mark.slow  # CXR_RAY_SLOW=1: the tamper model, its edits and the localiser train once for these (~7 min)
def test_scan_shows_where_it_suspects_an_edit(sample64, edits, localiser_run, tmp_path):
    """A folder of edited and original images: every image gets an edited-probability and a box; each one called
    edited or fake an overlay PNG, at the path the results table names."""
    import pyarrow.parquet as pq
    from PIL import Image

    from cxr_ray.scan import ScanConfig, run_scan
    from cxr_ray.train.classifier import ClassifierConfig, train_classifier

    detector = ClassifierConfig(data=sample64, fakes=edits[0], task="deepfake", model="cnn", epochs=1, batch_size=32,
                                storage=str(tmp_path / "det"), n_boot=50, num_workers=1)  # fmt: skip
    out = train_classifier(detector, log=lambda m: None)  # a whole-image detector, trained on the same edits
    folder = tmp_path / "archive"
    folder.mkdir()
    rows = [r for r in pq.read_table(Path(edits[0]) / "images").to_pylist() if r["split"] == "test"][:6]
    rows += [r for r in pq.read_table(Path(sample64) / "images").to_pylist() if r["split"] == "test"][:6]
    for i, r in enumerate(rows):
        Image.fromarray(np.frombuffer(r["image"], np.uint8).reshape(64, 64)).save(folder / f"img{i:02d}.png")
    loc_dir = str(Path(localiser_run[0].storage) / localiser_run[0].run_name())
    summary = run_scan(ScanConfig(src=str(folder), detector=str(tmp_path / "det" / out["run"]), out=str(tmp_path / "scan"),
                                  localiser=loc_dir, progress=False), log=lambda m: None)  # fmt: skip
    results = pq.read_table(tmp_path / "scan" / "results.parquet").to_pylist()
    assert len(results) == 12 and all(r["edited_probability"] is not None and r["box"] for r in results)
    for r in results:
        x0, y0, x1, y1 = map(int, r["box"].split(","))
        assert 0 <= x0 <= x1 < 64 and 0 <= y0 <= y1 < 64
        flagged = r["verdict"] == "fake" or r["edit_verdict"] == "edited"
        assert (r["overlay"] is not None) == flagged
        if flagged:
            assert Image.open(tmp_path / "scan" / r["overlay"]).size == (256, 256)
    assert summary["overlays"] == sum(r["overlay"] is not None for r in results)


@pytest.mark.slow  # CXR_RAY_SLOW=1: the tamper model, its edits and the localiser train once for these (~7 min)
def test_the_report_shows_test_edits_beside_their_originals_masks_and_maps(sample64, edits, localiser_run, tmp_path):
    """The tamper stage's examples (plain arrays, loaded without pickle) and the report section drawn from them."""
    from PIL import Image

    from cxr_ray.report.doc import Doc
    from cxr_ray.report.tampering import tamper_section
    from cxr_ray.tamper.examples import read_examples, write_examples

    loc, record = localiser_run
    loc_dir = str(Path(loc.storage) / loc.run_name())
    uri = write_examples(sample64, edits[0], loc_dir, str(tmp_path / "examples"), None, per_direction=2)
    ex = read_examples(uri, None)
    assert ex["direction"].tolist() == ["inject", "inject", "remove", "remove"]
    assert ex["original"].shape == ex["edited"].shape == ex["mask"].shape == ex["map"].shape == (4, 64, 64)
    for i in range(4):  # the same image outside the (archive-stored) edit's neighbourhood, a real mask inside
        assert ex["mask"][i].any() and np.abs(ex["original"][i].astype(int) - ex["edited"][i]).mean() < 20
    assert float(ex["threshold"]) == record["test"]["threshold"] and (0 <= ex["map"]).all() and (ex["map"] <= 1).all()
    assert write_examples(sample64, edits[0], loc_dir, str(tmp_path / "again"), None, per_direction=2) and \
        read_examples(str(tmp_path / "again" / "examples.npz"), None)["path"].tolist() == ex["path"].tolist()  # fmt: skip

    doc = Doc(str(tmp_path / "report"), None)
    tamper = {"model": {"run_dir": "tamper-runs/m", "epochs": 2, "val_l1": 0.2}, "edits": edits[1], "table": edits[0],
              "localiser": {"run_dir": loc_dir, "test": record["test"]}, "examples": uri}  # fmt: skip
    tamper_section(doc, {"status": "done", "outputs": tamper}, str(tmp_path / "attack"), None)
    text = "\n".join(doc.md)
    assert "Local tampering" in text and "IoU with the true mask" in text and "resave" in text
    assert "No attack result found" in text  # the attack is its own stage, read from its folder
    assert Image.open(tmp_path / "report" / "tamper_examples.png").size[1] > 400  # four rows of four panels
    for entry, says in (({"status": "done", "outputs": {}}, "--tamper-epochs 0"), ({"status": "failed"}, "not finished")):
        other = Doc(str(tmp_path / "other"), None)
        tamper_section(other, entry, str(tmp_path / "attack"), None)
        assert says in "\n".join(other.md)
