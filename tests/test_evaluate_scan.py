"""Cross-evaluation, the transfer experiment, perturbations, augmentation and `cxr-ray scan`,
on real X-rays, fakes from untrained DCGANs and tiny classifiers trained with the real trainer."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import SAMPLE, upload_tree
from cxr_ray import storage
from cxr_ray.checkpoint import load_state
from cxr_ray.config import ConfigError
from cxr_ray.storage import StorageError
from cxr_ray.data import schema
from cxr_ray.evaluate import EvaluateConfig, run_evaluate
from cxr_ray.filenames import STATE_FILE, SUMMARY_FILE, TEST_METRICS_FILE, VAL_PREDICTIONS_FILE
from cxr_ray.generate import GenerateConfig, run_generate
from cxr_ray.perturb import PERTURBATIONS, apply_perturbation, augment_table
from cxr_ray.scan import NO_PYDICOM, ScanConfig, format_summary, run_scan
from cxr_ray import metrics as M
from cxr_ray.operating import BENIGN_ROBUST, threshold_for_fpr
from cxr_ray.scoring import (
    DETECTOR_METRICS,
    DETECTOR_POINT_METRICS,
    DIFFERENCE_COLUMNS,
    METRIC_COLUMNS,
    PNEUMONIA_METRICS,
    expand_perturbations,
)
from cxr_ray.train.classifier import ClassifierConfig, train_classifier
from test_generate import save_untrained_gan

N_TEST_FAKES = 10  # per class
EVAL_PERTURBATIONS = ("none", "jpeg50", "blur1", "resize0.5", "noise5")
quiet = lambda m: None  # noqa: E731


def read_parquet(uri: str, s3=None) -> pa.Table:
    fs, path = storage.resolve(uri, s3)
    return pq.read_table(path, filesystem=fs)


def read_csv(uri: str, s3=None) -> pa.Table:
    return pcsv.read_csv(io.BytesIO(storage.read_bytes(uri, s3)))


def assert_same_rows(left: list[dict], right: list[dict]) -> None:
    """Row-by-row equality, floats to 1e-12 and NaN equal to NaN (a CSV round trip reads "nan" back as null)."""
    assert len(left) == len(right)
    nan = lambda v: float("nan") if v is None else v  # noqa: E731
    for a, b in zip(left, right):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float) or isinstance(b[key], float):
                assert nan(a[key]) == pytest.approx(nan(b[key]), abs=1e-12, nan_ok=True), (key, a, b)
            else:
                assert a[key] == b[key], (key, a, b)


@pytest.fixture(scope="module")
def study(sample64, tmp_path_factory) -> dict[str, str]:
    """Reals, fakes and three finished runs: pneumonia on real, pneumonia on fake, a deepfake detector."""
    root = tmp_path_factory.mktemp("study")
    real = sample64
    gans = (
        save_untrained_gan(str(root / "gans" / "dcgan-normal"), "NORMAL", seed=1),
        save_untrained_gan(str(root / "gans" / "dcgan-pneumonia"), "PNEUMONIA", seed=2),
    )
    fakes = str(root / "fakes-64")
    run_generate(
        GenerateConfig(generators=gans, dest=fakes, train_seeds=(0, 48), test_seeds=(1_000_000, 1_000_000 + N_TEST_FAKES), val_fraction=0.25),
        log=quiet,
    )
    runs = str(root / "runs")
    names = {}
    for key, extra in (("real", {"source": "real"}), ("fake", {"source": "fake"}), ("detector", {"task": "deepfake"})):
        cfg = ClassifierConfig(data=real, fakes=fakes, epochs=1, batch_size=32, storage=runs, n_boot=100, num_workers=1, **extra)
        names[key] = train_classifier(cfg, log=quiet)["run"]
    return {"root": str(root), "real": real, "fakes": fakes, "runs": runs, **{f"run_{k}": v for k, v in names.items()}}


BENIGN = ("ingest", "jpeg60")


@pytest.fixture(scope="module")
def evaluation(study) -> str:
    """Evaluate with the fake table also passed as the raw fakes (the plumbing is the same) and a benign table."""
    from cxr_ray.benign import BenignConfig, run_benign

    benign = str(Path(study["root"]) / "benign-64")
    run_benign(BenignConfig(real=study["real"], dest=benign, conditions=BENIGN), log=quiet)
    dest = str(Path(study["root"]) / "eval")
    cfg = EvaluateConfig(
        runs=(study["runs"],), real=study["real"], fakes=study["fakes"], raw_fakes=study["fakes"], benign=benign, dest=dest,
        perturbations=EVAL_PERTURBATIONS, n_boot=100,
    )
    run_evaluate(cfg, log=quiet)
    return dest


def expected_cells(task: str, eval_set: str, points: list[str]) -> set[tuple[str, str]]:
    """(operating_point, metric) of one run on one eval set and perturbation."""
    if task == "pneumonia":
        return {("" if m == "auc" else "youden", m) for m in PNEUMONIA_METRICS}
    if eval_set == "benign_real":
        return {(p, "fpr") for p in points}
    return {("", m) for m in DETECTOR_METRICS} | {(p, m) for p in points for m in DETECTOR_POINT_METRICS}


def test_evaluate_writes_one_tidy_table(study, evaluation):
    assert storage.is_complete(evaluation)
    table = read_parquet(storage.join(evaluation, "metrics.parquet"))
    assert table.column_names == list(METRIC_COLUMNS)
    assert_same_rows(read_csv(storage.join(evaluation, "metrics.csv")).to_pylist(), table.to_pylist())

    rows = table.to_pylist()
    n_real, n_fake = 65, 2 * N_TEST_FAKES
    detection = {"real+fake_test": n_real + n_fake, "real+raw_fake_test": n_real + n_fake}
    expected = {
        study["run_real"]: ("pneumonia", "real", {"real_test": n_real, "fake_test": n_fake}),
        study["run_fake"]: ("pneumonia", "fake", {"real_test": n_real, "fake_test": n_fake}),
        study["run_detector"]: ("deepfake", "real+fake", {**detection, "benign_real": n_real}),
        "freq_baseline": ("deepfake", "real+fake", {"real+fake_test": n_real + n_fake}),
    }
    assert {r["run"] for r in rows} == set(expected)
    points = ["youden", "fpr_0.01", "fpr_0.001"]
    for run, (task, source, sets) in expected.items():
        mine = [r for r in rows if r["run"] == run]
        # The detector scored re-processed validation reals, so it also has its benign-robust 1% point.
        run_points = points + [BENIGN_ROBUST] if run == study["run_detector"] else points
        assert {(r["task"], r["train_source"]) for r in mine} == {(task, source)}
        assert {(r["eval_set"], r["perturbation"], r["operating_point"], r["metric"]) for r in mine} == {
            (s, p, *cell) for s in sets for p in (BENIGN if s == "benign_real" else EVAL_PERTURBATIONS)
            for cell in expected_cells(task, s, run_points)
        }, run
        assert all(r["n"] == sets[r["eval_set"]] for r in mine)
    for r in rows:
        if np.isfinite(r["value"]) and np.isfinite(r["ci_low"]):
            assert r["ci_low"] - 1e-9 <= r["value"] <= r["ci_high"] + 1e-9, r

    # The clean real-test numbers are the trainer's own test evaluation: same pixels, model and val thresholds.
    def ours(key: str, eval_set: str, perturbation: str = "none") -> dict:
        return {(r["operating_point"], r["metric"]): r for r in rows if r["run"] == study[key] and r["eval_set"] == eval_set and r["perturbation"] == perturbation}

    trainer = json.loads((Path(study["runs"]) / study["run_real"] / TEST_METRICS_FILE).read_text())["test"]
    for (point, metric), row in ours("run_real", "real_test").items():
        assert row["value"] == pytest.approx(trainer[metric], abs=1e-6), metric
    record = json.loads((Path(study["runs"]) / study["run_detector"] / TEST_METRICS_FILE).read_text())
    clean, raw = ours("run_detector", "real+fake_test"), ours("run_detector", "real+raw_fake_test")
    assert clean[("", "auc")]["value"] == pytest.approx(record["test"]["auc"], abs=1e-6)
    for point in points:
        for metric in ("tpr", "fpr", "accuracy"):
            assert clean[(point, metric)]["value"] == pytest.approx(record["test_at"][point][metric], abs=1e-6), (point, metric)
            assert raw[(point, metric)]["value"] == clean[(point, metric)]["value"]  # the same table passed twice
        # The benign "ingest" condition is ingest's own decode: the clean reals' false alarms, image for image.
        assert ours("run_detector", "benign_real", "ingest")[(point, "fpr")]["value"] == pytest.approx(clean[(point, "fpr")]["value"])
        fpr = clean[(point, "fpr")]
        if fpr["value"] == 0:  # no false alarm among the 65 reals: the exact one-sided bound
            assert (fpr["ci_low"], fpr["ci_high"]) == (0.0, pytest.approx(1 - 0.05 ** (1 / n_real)))

    predictions = read_parquet(storage.join(evaluation, "predictions.parquet"))
    real_rows = pq.read_table(storage.join(storage.published(study["real"]), schema.IMAGES_DIR), columns=["split", "source"]).to_pylist()
    n_val = sum(r["split"] == "val" and r["source"] == "real" for r in real_rows)
    benign_rows = (n_real + n_val) * len(BENIGN)  # the benign table re-processed val and test reals
    assert predictions.num_rows == 3 * ((n_real + 2 * n_fake) * len(EVAL_PERTURBATIONS) + benign_rows)
    assert {"table", "patient_id"} <= set(predictions.column_names)
    assert set(predictions.column("table").to_pylist()) == {"real", "fakes", "raw_fakes", "benign", "benign_val"}

    # The benign-robust point, recomputed by hand from the scored validation rows: the highest of the clean 1%
    # point and each condition's own 1% point; at it no condition flags more than 1% of the validation reals.
    val = [r for r in predictions.to_pylist() if r["run"] == study["run_detector"] and r["table"] == "benign_val"]
    assert len(val) == n_val * len(BENIGN)
    by_condition = {c: np.array([r["score"] for r in val if r["perturbation"] == c]) for c in BENIGN}
    per_condition = [float(M.threshold_at_fpr(np.zeros(len(v), np.int64), v, 0.01)) for v in by_condition.values()]
    robust = max([record["operating_points"]["fpr_0.01"], *per_condition])
    recorded = {r["run"]: r for r in storage.read_json(storage.join(evaluation, SUMMARY_FILE))["runs"]}
    assert recorded[study["run_detector"]]["operating_points"][BENIGN_ROBUST] == pytest.approx(robust)
    assert all(np.mean(v >= robust) <= 0.01 for v in by_condition.values())
    differences = read_parquet(storage.join(evaluation, "detector_differences.parquet"))
    assert differences.column_names == list(DIFFERENCE_COLUMNS) and differences.num_rows == 0  # one detector: no pair
    summary = storage.read_json(storage.join(evaluation, SUMMARY_FILE))
    assert summary["perturbations"] == list(EVAL_PERTURBATIONS) and summary["resolution"] == 64
    assert "band" in json.loads((Path(evaluation) / "freq_baseline.json").read_text())["explanation"]


def test_metrics_table_scores_each_run_on_its_own_evaluation_sets():
    """The scoring library's tables on hand-made scores (no Ray): pneumonia runs per table, detectors on reals + fakes
    and on benign reals at every operating point, paired differences between detectors."""
    from cxr_ray import metrics as M
    from cxr_ray.scoring import ModelRun, differences_table, metrics_table

    rng = np.random.default_rng(0)
    rows = [
        {"run": run, "table": table, "source": "fake" if "fakes" in table else "real", "path": f"{table}/{i}",
         "patient_id": f"{table}/{i // 2}", "label": i % 2, "class_name": ("NORMAL", "PNEUMONIA")[i % 2],
         "perturbation": "jpeg60" if table == "benign" else "none", "score": float(rng.random())}
        for run in ("pneu", "det", "det2") for table in ("real", "fakes", "benign") for i in range(30)
    ]
    points = {"youden": 0.4, "fpr_0.01": 1.0}  # scores < 1: nothing flagged
    runs = [
        ModelRun("pneu", "/runs/pneu", "/runs/pneu/state.pt", "pneumonia", "cnn", "real", 0.5, 64),
        ModelRun("det", "/runs/det", "/runs/det/state.pt", "deepfake", "cnn", "real+fake", 0.4, 64, points, 2.0),
        ModelRun("det2", "/runs/det2", "/runs/det2/state.pt", "deepfake", "cnn", "real+fake", 0.5, 64, {"fpr_0.01": 0.9}),
    ]
    predictions = pa.Table.from_pylist(rows)
    table = metrics_table(predictions, runs, n_boot=20, seed=0)
    assert table.column_names == list(METRIC_COLUMNS)
    got = {(r["run"], r["eval_set"], r["operating_point"], r["metric"]): r for r in table.to_pylist()}
    expected = {("pneu", s, "" if m == "auc" else "youden", m) for s in ("real_test", "fake_test") for m in PNEUMONIA_METRICS}
    detector = {("det", "real+fake_test", "", m) for m in DETECTOR_METRICS}
    detector |= {("det", "real+fake_test", p, m) for p in points for m in DETECTOR_POINT_METRICS}
    benign = {("det", "benign_real", p, "fpr") for p in points}
    assert {k for k in got if k[0] != "det2"} == expected | detector | benign
    assert {k[2] for k in got if k[0] == "det2"} == {"", "youden", "fpr_0.01"}  # Youden added from its threshold
    real = [r for r in rows if r["run"] == "pneu" and r["table"] == "real"]
    accuracy = np.mean([(r["score"] >= 0.5) == r["label"] for r in real])
    assert got[("pneu", "real_test", "youden", "accuracy")]["value"] == pytest.approx(accuracy)
    assert got[("det", "real+fake_test", "youden", "accuracy")]["n"] == 60
    # At 1.0 no real is flagged: FPR 0 with the exact one-sided bound over its 30 (real) or 30 (benign) images.
    for eval_set in ("real+fake_test", "benign_real"):
        cell = got[("det", eval_set, "fpr_0.01", "fpr")]
        assert (cell["value"], cell["ci_low"], cell["ci_high"]) == (0.0, 0.0, pytest.approx(1 - 0.05 ** (1 / 30)))
    det = [r for r in rows if r["run"] == "det" and r["table"] != "benign"]
    y, score = np.array([r["source"] == "fake" for r in det], np.int64), np.array([r["score"] for r in det])
    from cxr_ray.calibration import apply_temperature, brier_score

    assert got[("det", "real+fake_test", "", "brier")]["value"] == pytest.approx(brier_score(y, apply_temperature(score, 2.0)))

    differences = differences_table(predictions, runs, n_boot=50, seed=0).to_pylist()
    assert [(d["run_a"], d["run_b"], d["eval_set"], d["metric"], d["n"]) for d in differences] == [
        ("det", "det2", "real+fake_test", "auc", 60), ("det", "det2", "real+fake_test", "tpr@fpr_0.01", 60)
    ]
    det2 = np.array([r["score"] for r in rows if r["run"] == "det2" and r["table"] != "benign"])
    assert differences[0]["diff"] == pytest.approx(M.roc_auc(y, score) - M.roc_auc(y, det2))
    assert differences[1]["diff"] == pytest.approx(np.mean(score[y == 1] >= 1.0) - np.mean(det2[y == 1] >= 0.9))
    assert differences[0]["ci_low"] <= differences[0]["diff"] <= differences[0]["ci_high"]


def test_perturbations_change_reals_and_fakes_identically(ray_local):
    """Twin rows (same pixels, one real, one fake) through the pipeline's perturbation stage."""
    sample = sorted((SAMPLE / "test" / "NORMAL").iterdir())[:3]
    from cxr_ray.data.decode import decode_to_gray

    items = []
    for i, path in enumerate(sample):
        pixels = decode_to_gray(path.read_bytes(), 64).tobytes()
        for source in ("real", "fake"):
            items.append({"image": pixels, "label": 0, "class_name": "NORMAL", "split": "test", "source": source, "path": f"{source}/{i}", "height": 64, "width": 64})
    names = list(PERTURBATIONS)

    def run_pipeline() -> list[dict]:
        ds = ray_local.data.from_items(items, override_num_blocks=2)
        return ds.map_batches(expand_perturbations, batch_format="pyarrow", fn_kwargs={"names": names, "seed": 0}).take_all()

    out = run_pipeline()
    assert len(out) == len(items) * len(names)
    got = {(r["path"], r["perturbation"]): r["image"] for r in out}
    for i in range(len(sample)):
        original = items[2 * i]["image"]
        for name in names:
            real, fake = got[(f"real/{i}", name)], got[(f"fake/{i}", name)]
            assert real == fake, name
            assert (real == original) == (name == "none"), name
    assert {(r["path"], r["perturbation"]): r["image"] for r in run_pipeline()} == got  # deterministic


def test_perturbations_do_what_they_say():
    from cxr_ray.data.decode import decode_to_gray

    images = np.stack([decode_to_gray(p.read_bytes(), 64) for p in sorted((SAMPLE / "test" / "PNEUMONIA").iterdir())[:8]])
    error = {q: np.abs(apply_perturbation(f"jpeg{q}", images).astype(float) - images).mean() for q in (95, 75, 50, 30)}
    assert 0 < error[95] < error[75] < error[50] < error[30]
    noisy = apply_perturbation("noise5", images).astype(float) - images
    assert 4.0 < noisy.std() < 6.0
    high_freq = lambda x: np.abs(np.diff(x.astype(float), axis=2)).mean()  # noqa: E731
    assert high_freq(apply_perturbation("blur1", images)) < 0.8 * high_freq(images)
    assert high_freq(apply_perturbation("resize0.5", images)) < high_freq(images)
    for name in PERTURBATIONS:
        out = apply_perturbation(name, images)
        assert out.dtype == np.uint8 and out.shape == images.shape
    with pytest.raises(ConfigError, match="unknown perturbation"):
        apply_perturbation("sharpen", images)


def test_window_level_augmentation_is_reproducible_and_spans_the_benign_display_changes():
    from cxr_ray.data.decode import decode_to_gray
    from cxr_ray.perturb import random_window_level

    images = np.stack([decode_to_gray(p.read_bytes(), 64) for p in sorted((SAMPLE / "test" / "NORMAL").iterdir())[:24]])
    out, applied = random_window_level(images, 0.5, seed=3)
    again, _ = random_window_level(images, 0.5, seed=3)
    assert np.array_equal(out, again) and out.dtype == np.uint8  # per image, from (seed, pixels)
    touched = [i for i, a in enumerate(applied) if a]
    assert 0 < len(touched) < len(images) and all(np.array_equal(out[i], images[i]) for i, a in enumerate(applied) if not a)
    kinds = {a.rstrip("0123456789.-") for a in applied if a}
    assert kinds == {"gamma", "stretch"}
    gammas = [float(a[5:]) for a in applied if a.startswith("gamma")]
    assert all(0.7 <= g <= 1.4 for g in gammas)  # the range around the benign table's gamma 0.8 / 1.2
    assert np.array_equal(random_window_level(images, 0.0, seed=3)[0], images)


def test_augment_table_perturbs_train_and_val_only(study, tmp_path):
    dest = str(tmp_path / "real-64-aug")
    summary = augment_table(study["real"], dest, probability=0.5, seed=1, log=quiet)
    assert storage.is_complete(dest) and summary["resolution"] == 64 and summary["augmentation"]["probability"] == 0.5
    key = lambda t: {r["path"]: r for r in t.to_pylist()}  # noqa: E731
    before = key(read_parquet(storage.join(study["real"], schema.IMAGES_DIR)))
    after = key(read_parquet(storage.join(dest, schema.IMAGES_DIR)))
    assert before.keys() == after.keys()
    changed = {split: [after[p]["image"] != r["image"] for p, r in before.items() if r["split"] == split] for split in ("train", "val", "test")}
    assert not any(changed["test"])
    share = np.mean(changed["train"] + changed["val"])
    assert 0.3 < share < 0.7
    again = str(tmp_path / "again")
    augment_table(study["real"], again, probability=0.5, seed=1, log=quiet)
    assert key(read_parquet(storage.join(again, schema.IMAGES_DIR))) == after


def test_transfer_matrix_per_class_and_markdown(study, tmp_path):
    from cxr_ray.transfer import TransferConfig, run_transfer

    dest = str(tmp_path / "transfer")
    out = run_transfer(TransferConfig(runs=(study["runs"],), real=study["real"], fakes=study["fakes"], dest=dest, n_boot=100), log=quiet)
    matrix = read_parquet(storage.join(dest, "transfer.parquet")).to_pylist()
    cells = {(r["train_source"], r["eval_set"], r["metric"]) for r in matrix}
    for train in ("real", "fake"):
        for test in ("real_test", "fake_test"):
            assert {(train, test, "accuracy"), (train, test, "auc")} <= cells
    assert study["run_detector"] not in {r["run"] for r in matrix}

    per_class = read_parquet(storage.join(dest, "per_class.parquet")).to_pylist()
    predictions = read_parquet(storage.join(dest, "predictions.parquet")).to_pylist()
    markdown = (Path(dest) / "transfer.md").read_text()
    assert markdown == out["markdown"]
    real_run = [r for r in per_class if r["run"] == study["run_real"] and r["eval_set"] == "fake_test"]
    assert {r["class_name"] for r in real_run} == {"NORMAL", "PNEUMONIA"}
    for row in real_run:
        scores = np.array([p["score"] for p in predictions if p["run"] == row["run"] and p["source"] == "fake" and p["class_name"] == row["class_name"]])
        assert row["n"] == N_TEST_FAKES == len(scores)
        assert row["called_pneumonia"] == pytest.approx(np.mean(scores >= row["threshold"]))
        assert row["mean_p_pneumonia"] == pytest.approx(scores.mean())
        assert f"{100 * row['called_pneumonia']:.1f}% of the {row['class_name']} fakes" in markdown
    for r in matrix:
        if r["metric"] == "accuracy":
            assert f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" in markdown


@pytest.fixture()
def scan_folder(tmp_path) -> Path:
    folder = tmp_path / "incoming"
    (folder / "ward").mkdir(parents=True)
    jpegs = sorted((SAMPLE / "test" / "NORMAL").iterdir())[:2] + sorted((SAMPLE / "test" / "PNEUMONIA").iterdir())[:1]
    for path in jpegs:
        (folder / path.name).write_bytes(path.read_bytes())
    Image.open(jpegs[0]).convert("L").save(folder / "ward" / "as-png.png")
    (folder / "broken.jpeg").write_bytes(jpegs[1].read_bytes()[:2000])
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "study.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    return folder


def test_scan_scores_images_and_lists_unreadable_files(study, scan_folder, tmp_path):
    from cxr_ray.data.decode import decode_to_gray
    from cxr_ray.inference import build_model, predict_proba

    detector = str(Path(study["runs"]) / study["run_detector"])
    out = str(tmp_path / "scan")
    summary = run_scan(ScanConfig(src=str(scan_folder), detector=detector, out=out, progress=True), log=quiet)
    assert (summary["scanned"], summary["unreadable"]) == (7, 3)
    assert summary["flagged_fake"] + summary["passed_real"] == 4
    assert format_summary(summary).splitlines()[0].startswith(f"scanned 7, flagged fake {summary['flagged_fake']}, unreadable 3")

    results = read_parquet(storage.join(out, "results.parquet"))
    assert_same_rows(read_csv(storage.join(out, "results.csv")).to_pylist(), results.to_pylist())
    rows = {Path(r["path"]).name: r for r in results.to_pylist()}
    assert rows["broken.jpeg"]["reason"].startswith("corrupt or truncated image")
    assert rows["notes.txt"]["reason"] == "not an image (unrecognised format)"
    assert rows["study.dcm"]["reason"] == NO_PYDICOM and "pydicom" in NO_PYDICOM
    for name in ("broken.jpeg", "notes.txt", "study.dcm"):
        assert rows[name]["verdict"] == "unreadable" and rows[name]["fake_probability"] is None

    # Same pixels and model as training: decode_to_gray at the detector's size, then predict_proba.
    metrics = json.loads((Path(detector) / TEST_METRICS_FILE).read_text())
    state = load_state(str(Path(metrics["checkpoint"]) / STATE_FILE))
    model = build_model(state)
    # The verdict threshold: FPR <= 1% (the default) on the detector's own validation predictions.
    val = read_parquet(str(Path(detector) / VAL_PREDICTIONS_FILE))
    threshold = threshold_for_fpr(np.asarray(val.column("target")), np.asarray(val.column("score")), 0.01)
    assert summary["fpr"] == 0.01 and summary["threshold"] == threshold == metrics["operating_points"]["fpr_0.01"]
    assert summary["detector"]["operating_point"] == "fpr_0.01"
    for path in sorted(p for p in scan_folder.rglob("*") if p.suffix in (".jpeg", ".png") and p.name != "broken.jpeg"):
        expected = float(predict_proba(model, np.array(decode_to_gray(path.read_bytes(), 64)[None]), batch_size=1)[0])
        row = rows[path.name]
        assert row["fake_probability"] == pytest.approx(expected, abs=1e-5)
        assert row["verdict"] == ("fake" if row["fake_probability"] >= threshold else "real")
        assert row["sha256"] and row["size_bytes"] == path.stat().st_size


def test_scan_at_the_benign_robust_point_matches_evaluation(study, evaluation, scan_folder, tmp_path):
    """--benign: the threshold is the one evaluation fixed on the same re-processed validation reals; a benign table
    without validation rows is refused in one line, naming it."""
    detector = str(Path(study["runs"]) / study["run_detector"])
    benign = str(Path(study["root"]) / "benign-64")
    summary = run_scan(ScanConfig(src=str(scan_folder), detector=detector, out=str(tmp_path / "robust"), progress=False,
                                  benign=benign), log=quiet)  # fmt: skip
    fixed = {r["run"]: r for r in storage.read_json(storage.join(evaluation, SUMMARY_FILE))["runs"]}[study["run_detector"]]
    assert summary["detector"]["operating_point"] == BENIGN_ROBUST and summary["benign"] == benign
    assert summary["threshold"] == pytest.approx(fixed["operating_points"][BENIGN_ROBUST])
    assert summary["threshold"] >= fixed["operating_points"]["fpr_0.01"]
    results = read_parquet(storage.join(str(tmp_path / "robust"), "results.parquet")).to_pylist()
    assert all(r["verdict"] == ("fake" if r["fake_probability"] >= summary["threshold"] else "real")
               for r in results if r["verdict"] != "unreadable")  # fmt: skip

    with pytest.raises(StorageError, match="benign table"):  # --overwrite there would delete what is read
        run_scan(ScanConfig(src=str(scan_folder), detector=detector, out=str(Path(benign) / "scan"), benign=benign,
                            overwrite=True), log=quiet)  # fmt: skip

    from cxr_ray.benign import BenignConfig, run_benign

    test_only = str(tmp_path / "benign-test-only")
    run_benign(BenignConfig(real=study["real"], dest=test_only, conditions=("png",), splits=("test",)), log=quiet)
    with pytest.raises(ConfigError, match="benign-test-only: no re-processed validation reals"):
        run_scan(ScanConfig(src=str(scan_folder), detector=detector, out=str(tmp_path / "o"), benign=test_only), log=quiet)
    assert not (tmp_path / "o").exists()


def test_scan_an_s3_prefix(study, scan_folder, s3_server, s3_bucket):
    upload_tree(s3_server, scan_folder, s3_bucket, "incoming")
    out = f"s3://{s3_bucket}/scans/today"
    detector = str(Path(study["runs"]) / study["run_detector"])
    summary = run_scan(ScanConfig(src=f"s3://{s3_bucket}/incoming", detector=detector, out=out, progress=False), s3=s3_server, log=quiet)
    assert (summary["scanned"], summary["unreadable"]) == (7, 3)
    results = read_parquet(storage.join(storage.published(out, s3_server), "results.parquet"), s3_server).to_pylist()
    assert all(r["path"].startswith(f"s3://{s3_bucket}/incoming/") for r in results)
    assert storage.is_complete(out, s3_server)


def test_scan_refuses_a_pneumonia_model_before_reading_anything(study, scan_folder, tmp_path):
    with pytest.raises(ConfigError, match="not a deepfake detector"):
        run_scan(ScanConfig(src=str(scan_folder), detector=str(Path(study["runs"]) / study["run_real"]), out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_outputs_overlapping_their_inputs_are_refused_before_writing(study, tmp_path):
    """evaluate, transfer and augment refuse an output that is, holds or lies inside what they read."""
    from cxr_ray.storage import StorageError
    from cxr_ray.transfer import TransferConfig, run_transfer

    root = Path(study["root"])
    before = {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    common = {"runs": (study["runs"],), "real": study["real"], "fakes": study["fakes"], "n_boot": 10, "overwrite": True}
    cases = [
        (run_evaluate, EvaluateConfig(dest=storage.join(study["runs"], "eval"), **common), f"is inside the runs folder {study['runs']}"),
        (run_evaluate, EvaluateConfig(dest=study["real"], **common), f"is the real table {study['real']}"),
        (run_evaluate, EvaluateConfig(dest=str(root), **common), f"contains the runs folder {study['runs']}"),
        (run_transfer, TransferConfig(dest=storage.join(study["fakes"], "t"), **common), f"is inside the fake table {study['fakes']}"),
    ]
    for runner, cfg, relation in cases:
        with pytest.raises(StorageError) as info:
            runner(cfg, log=quiet)
        assert str(info.value) == f"{cfg.dest}: the output {relation}; choose a folder outside it"
    with pytest.raises(StorageError, match=f"the output is inside the source table {study['real']};"):
        augment_table(study["real"], storage.join(study["real"], "aug"), overwrite=True, log=quiet)
    assert {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} == before


def cli_app():
    import typer

    from cxr_ray.cli.eval_cmds import EPILOG_EVALUATE, EPILOG_SCAN, EPILOG_TRANSFER, evaluate, scan, transfer

    app = typer.Typer()
    app.command(epilog=EPILOG_EVALUATE)(evaluate)
    app.command(epilog=EPILOG_TRANSFER)(transfer)
    app.command(epilog=EPILOG_SCAN)(scan)
    return app


def test_commands_help_scan_and_clean_errors(study, scan_folder, tmp_path):
    runner = CliRunner()
    for name in ("evaluate", "transfer", "scan"):
        result = runner.invoke(cli_app(), [name, "--help"])
        assert result.exit_code == 0 and "Examples" in result.output, name
    detector = str(Path(study["runs"]) / study["run_detector"])
    args = ["scan", str(scan_folder), "--detector", detector, "--out", str(tmp_path / "s"), "--no-progress", "--fpr", "0.2"]
    result = runner.invoke(cli_app(), args)
    assert result.exit_code == 0, result.output
    assert "scanned 7, flagged fake" in result.output and "unreadable: " in result.output
    val = read_parquet(str(Path(detector) / VAL_PREDICTIONS_FILE))
    summary = json.loads((tmp_path / "s" / SUMMARY_FILE).read_text())
    assert summary["fpr"] == 0.2 and summary["threshold"] == threshold_for_fpr(np.asarray(val.column("target")), np.asarray(val.column("score")), 0.2)
    assert "--fpr" in runner.invoke(cli_app(), ["scan", "--help"]).output
    result = runner.invoke(cli_app(), ["evaluate", "--runs", str(tmp_path / "none"), "--real", study["real"], "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "no such runs folder" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli_app(), ["evaluate", "--runs", study["runs"], "--real", study["real"], "--out", str(tmp_path / "e"), "--perturbation", "sharpen"])
    assert result.exit_code == 2 and "unknown perturbation" in result.output


def test_scan_lists_huge_images_and_broken_links_and_walks_loops_once(study, scan_folder, tmp_path):
    """One bad file never stops a scan: a 400-megapixel PNG, a link to itself, a folder loop; exit code 0."""
    import os

    from test_layout_decode import huge_png

    (scan_folder / "ward" / "huge.png").write_bytes(huge_png())
    os.symlink("..", scan_folder / "ward" / "loop")  # ward/loop -> the scanned folder again
    os.symlink("self.jpeg", scan_folder / "self.jpeg")
    detector = str(Path(study["runs"]) / study["run_detector"])
    out = tmp_path / "s"
    args = ["scan", str(scan_folder), "--detector", detector, "--out", str(out), "--no-progress", "--max-pixels", "6000000"]
    result = CliRunner().invoke(cli_app(), args)
    assert result.exit_code == 0, result.output
    assert "scanned 9, flagged fake" in result.output and "unreadable 5" in result.output
    huge = "image too large: 20000x20000 pixels (400 megapixels), over the limit of 6 megapixels (max_pixels=6000000)"
    assert f"unreadable: {scan_folder / 'ward' / 'huge.png'}: {huge}" in result.output
    rows = {Path(r["path"]).relative_to(scan_folder).as_posix(): r for r in read_parquet(str(out / "results.parquet")).to_pylist()}
    assert len(rows) == 9 and not any(name.startswith("ward/loop/") for name in rows)
    assert rows["ward/huge.png"]["reason"] == huge and rows["ward/huge.png"]["verdict"] == "unreadable"
    assert rows["self.jpeg"]["reason"].startswith("unreadable: [Errno 40] Too many levels of symbolic links")
    assert json.loads((out / SUMMARY_FILE).read_text())["max_pixels"] == 6_000_000


def test_scan_output_overlapping_its_inputs_is_refused(study, scan_folder, tmp_path):
    detector = str(Path(study["runs"]) / study["run_detector"])
    before = {p: p.read_bytes() for p in sorted(scan_folder.rglob("*")) if p.is_file()}
    cases = [
        (str(scan_folder), f"is the scanned folder {scan_folder}"),
        (str(scan_folder / "ward"), f"is inside the scanned folder {scan_folder}"),
        (str(scan_folder.parent), f"contains the scanned folder {scan_folder}"),
        (storage.join(detector, "scan"), f"is inside the detector {detector}"),
    ]
    for out, relation in cases:
        args = ["scan", str(scan_folder), "--detector", detector, "--out", out, "--overwrite", "--no-progress"]
        result = CliRunner().invoke(cli_app(), args)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.output.strip() == f"error: {out}: the output {relation}; choose a folder outside it"
    assert {p: p.read_bytes() for p in sorted(scan_folder.rglob("*")) if p.is_file()} == before
    assert not (Path(detector) / "scan").exists()
