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
from cxr_ray.config import ConfigError, IngestConfig
from cxr_ray.data import schema
from cxr_ray.data.ingest import run_ingest
from cxr_ray.evaluate import EvaluateConfig, run_evaluate
from cxr_ray.filenames import STATE_FILE, SUMMARY_FILE, TEST_METRICS_FILE
from cxr_ray.generate import GenerateConfig, run_generate
from cxr_ray.perturb import PERTURBATIONS, apply_perturbation, augment_table
from cxr_ray.scan import NO_PYDICOM, ScanConfig, format_summary, run_scan
from cxr_ray.scoring import DETECTOR_METRICS, METRIC_COLUMNS, PNEUMONIA_METRICS, expand_perturbations
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
    """Row-by-row equality, floats to 1e-12 and NaN equal to NaN (what a CSV round trip keeps)."""
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float) or isinstance(b[key], float):
                assert a[key] == pytest.approx(b[key], abs=1e-12, nan_ok=True), (key, a, b)
            else:
                assert a[key] == b[key], (key, a, b)


@pytest.fixture(scope="module")
def study(ray_local, tmp_path_factory) -> dict[str, str]:
    """Reals, fakes and three finished runs: pneumonia on real, pneumonia on fake, a deepfake detector."""
    root = tmp_path_factory.mktemp("study")
    real = str(root / "real-64")
    run_ingest(IngestConfig(src=str(SAMPLE), dest=real, resolution=64), log=quiet)
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
        cfg = ClassifierConfig(data=real, fakes=fakes, epochs=1, batch_size=32, storage=runs, n_boot=100, **extra)
        names[key] = train_classifier(cfg, log=quiet)["run"]
    return {"root": str(root), "real": real, "fakes": fakes, "runs": runs, **{f"run_{k}": v for k, v in names.items()}}


@pytest.fixture(scope="module")
def evaluation(study) -> str:
    dest = str(Path(study["root"]) / "eval")
    cfg = EvaluateConfig(runs=(study["runs"],), real=study["real"], fakes=study["fakes"], dest=dest, perturbations=EVAL_PERTURBATIONS, n_boot=100)
    run_evaluate(cfg, log=quiet)
    return dest


def test_evaluate_writes_one_tidy_table(study, evaluation):
    assert storage.is_complete(evaluation)
    table = read_parquet(storage.join(evaluation, "metrics.parquet"))
    assert table.column_names == list(METRIC_COLUMNS)
    assert_same_rows(read_csv(storage.join(evaluation, "metrics.csv")).to_pylist(), table.to_pylist())

    rows = table.to_pylist()
    n_real, n_fake = 65, 2 * N_TEST_FAKES
    expected = {
        study["run_real"]: ("pneumonia", "real", {"real_test": n_real, "fake_test": n_fake}),
        study["run_fake"]: ("pneumonia", "fake", {"real_test": n_real, "fake_test": n_fake}),
        study["run_detector"]: ("deepfake", "real+fake", {"real+fake_test": n_real + n_fake}),
        "freq_baseline": ("deepfake", "real+fake", {"real+fake_test": n_real + n_fake}),
    }
    assert {r["run"] for r in rows} == set(expected)
    for run, (task, source, sets) in expected.items():
        mine = [r for r in rows if r["run"] == run]
        assert {(r["task"], r["train_source"]) for r in mine} == {(task, source)}
        metrics = PNEUMONIA_METRICS if task == "pneumonia" else DETECTOR_METRICS
        assert {(r["eval_set"], r["perturbation"], r["metric"]) for r in mine} == {
            (s, p, m) for s in sets for p in EVAL_PERTURBATIONS for m in metrics
        }
        assert all(r["n"] == sets[r["eval_set"]] for r in mine)
    for r in rows:
        if np.isfinite(r["value"]) and np.isfinite(r["ci_low"]):
            assert r["ci_low"] - 1e-9 <= r["value"] <= r["ci_high"] + 1e-9, r

    # The clean real-test numbers are the trainer's own test evaluation: same pixels, model and val threshold.
    for key, eval_set in (("run_real", "real_test"), ("run_detector", "real+fake_test")):
        trainer = json.loads((Path(study["runs"]) / study[key] / TEST_METRICS_FILE).read_text())["test"]
        ours = {r["metric"]: r["value"] for r in rows if r["run"] == study[key] and r["eval_set"] == eval_set and r["perturbation"] == "none"}
        for metric in ("accuracy", "auc", "sensitivity", "specificity"):
            assert ours[metric] == pytest.approx(trainer[metric], abs=1e-6), (key, metric)

    predictions = read_parquet(storage.join(evaluation, "predictions.parquet"))
    assert predictions.num_rows == 3 * (n_real + n_fake) * len(EVAL_PERTURBATIONS)
    summary = storage.read_json(storage.join(evaluation, SUMMARY_FILE))
    assert summary["perturbations"] == list(EVAL_PERTURBATIONS) and summary["resolution"] == 64
    assert "band" in json.loads((Path(evaluation) / "freq_baseline.json").read_text())["explanation"]


def test_metrics_table_scores_each_run_on_its_own_evaluation_sets():
    """The scoring library's tables on hand-made scores (no Ray): pneumonia runs per source, detectors on both."""
    from cxr_ray.scoring import ModelRun, metrics_table

    rng = np.random.default_rng(0)
    rows = [
        {"run": run, "source": source, "path": f"{source}/{i}", "label": i % 2, "class_name": ("NORMAL", "PNEUMONIA")[i % 2],
         "perturbation": "none", "score": float(rng.random())}
        for run in ("pneu", "det") for source in ("real", "fake") for i in range(30)
    ]
    runs = [
        ModelRun("pneu", "/runs/pneu", "/runs/pneu/state.pt", "pneumonia", "cnn", "real", 0.5, 64),
        ModelRun("det", "/runs/det", "/runs/det/state.pt", "deepfake", "cnn", "real+fake", 0.4, 64),
    ]
    table = metrics_table(pa.Table.from_pylist(rows), runs, n_boot=20, seed=0)
    assert table.column_names == list(METRIC_COLUMNS)
    got = {(r["run"], r["eval_set"], r["metric"]): r for r in table.to_pylist()}
    expected = {("pneu", s, m) for s in ("real_test", "fake_test") for m in PNEUMONIA_METRICS}
    assert set(got) == expected | {("det", "real+fake_test", m) for m in DETECTOR_METRICS}
    real = [r for r in rows if r["run"] == "pneu" and r["source"] == "real"]
    accuracy = np.mean([(r["score"] >= 0.5) == r["label"] for r in real])
    assert got[("pneu", "real_test", "accuracy")]["value"] == pytest.approx(accuracy)
    assert got[("det", "real+fake_test", "accuracy")]["n"] == 60


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
    for path in sorted(p for p in scan_folder.rglob("*") if p.suffix in (".jpeg", ".png") and p.name != "broken.jpeg"):
        expected = float(predict_proba(model, np.array(decode_to_gray(path.read_bytes(), 64)[None]), batch_size=1)[0])
        row = rows[path.name]
        assert row["fake_probability"] == pytest.approx(expected, abs=1e-5)
        assert row["verdict"] == ("fake" if row["fake_probability"] >= state["threshold"] else "real")
        assert row["sha256"] and row["size_bytes"] == path.stat().st_size


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
    result = runner.invoke(cli_app(), ["scan", str(scan_folder), "--detector", detector, "--out", str(tmp_path / "s"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "scanned 7, flagged fake" in result.output and "unreadable: " in result.output
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
