"""Operating points fixed on validation, the rates at them, and runs recorded before they existed (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from cxr_ray.checkpoint import save_state
from cxr_ray.classifier_state import build_classifier_state
from cxr_ray.config import ConfigError
from cxr_ray.filenames import STATE_FILE, TEST_METRICS_FILE, VAL_PREDICTIONS_FILE
from cxr_ray.operating import (
    BENIGN_ROBUST,
    OPERATING_POINTS,
    at_points,
    benign_robust_threshold,
    operating_points,
    rates_at,
    threshold_for_fpr,
)

# 100 validation reals at 0, 0.005, ..., 0.495 and five fakes.
NEG = np.arange(100) / 200.0
POS = np.array([0.9, 0.8, 0.7, 0.4925, 0.4475])
Y_VAL = np.r_[np.zeros(100, np.int64), np.ones(5, np.int64)]
S_VAL = np.r_[NEG, POS]


def test_operating_points_on_a_hand_made_validation_set():
    """Hand-computed: FPR <= 1% allows one of the 100 reals (0.495) -> lowest such threshold 0.4925 (4/5 fakes);
    FPR <= 0.1% allows none -> 0.7 (3/5); Youden: at 0.4475 all 5 fakes and the 10 reals >= 0.45 (0.9 - 0.1)."""
    points = operating_points(Y_VAL, S_VAL)
    assert set(points) == set(OPERATING_POINTS) == {"youden", "fpr_0.01", "fpr_0.001"}
    assert points == {"youden": 0.4475, "fpr_0.01": 0.4925, "fpr_0.001": 0.7}
    assert threshold_for_fpr(Y_VAL, S_VAL, 0.1) == 0.4475  # 10 reals allowed: the same point as Youden
    assert threshold_for_fpr(Y_VAL, S_VAL, 0.0) == 0.7


def test_benign_robust_threshold_holds_every_condition_at_the_target():
    """Hand-computed on the 100 reals above (clean 1% point 0.4925): a re-encoding that lifts every real by 0.1 has
    its own 1% point at 0.595 (one real above it allowed: 0.595); a gamma that lowers them stays under the clean
    point; the robust point is the highest, and at it no condition flags more than one real in 100."""
    clean = operating_points(Y_VAL, S_VAL)["fpr_0.01"]
    lifted, lowered = NEG + 0.1, NEG * 0.5
    robust = benign_robust_threshold(clean, {"jpeg60": lifted, "gamma_0.8": lowered})
    assert clean == 0.4925 and robust == pytest.approx(0.595)
    for scores in (NEG, lifted, lowered):
        assert np.mean(scores >= robust) <= 0.01
    assert benign_robust_threshold(clean, {"gamma_0.8": lowered}) == clean  # no condition above: the clean point
    assert benign_robust_threshold(clean, {}) == clean
    # A condition whose top real cannot be kept out at 1% (every score tied): nothing above it is flagged.
    assert benign_robust_threshold(clean, {"png": np.full(100, 0.99)}) == np.nextafter(0.99, np.inf)


def test_benign_robust_points_come_from_validation_rows_only():
    """The scored benign val rows fix the point; benign test rows (however high) do not move it."""
    from cxr_ray.scoring import ModelRun, with_benign_robust_points

    def rows(table: str, condition: str, scores: np.ndarray, run: str = "deepfake-cnn-real+fake") -> list[dict]:
        return [{"run": run, "table": table, "perturbation": condition, "score": float(s)} for s in scores]

    predictions = pa.Table.from_pylist(
        rows("benign_val", "ingest", NEG) + rows("benign_val", "jpeg60", NEG + 0.1) + rows("benign", "jpeg60", NEG + 0.5)
    )
    detector = ModelRun(run="deepfake-cnn-real+fake", run_dir="d", state_uri="d/state.pt", task="deepfake", model="cnn",
                        train_source="real+fake", threshold=0.4475, image_size=64,
                        operating_points={"fpr_0.01": 0.4925, "fpr_0.001": 0.7})
    classifier = ModelRun(run="pneumonia-cnn-real", run_dir="p", state_uri="p/state.pt", task="pneumonia", model="cnn",
                          train_source="real", threshold=0.5, image_size=64, operating_points={"fpr_0.01": 0.9})
    out = {r.run: r for r in with_benign_robust_points(predictions, [detector, classifier])}
    assert out["deepfake-cnn-real+fake"].operating_points[BENIGN_ROBUST] == pytest.approx(0.595)
    assert out["deepfake-cnn-real+fake"].operating_points["fpr_0.01"] == 0.4925  # the clean point is kept beside it
    assert BENIGN_ROBUST not in out["pneumonia-cnn-real"].operating_points
    # No re-processed validation reals: nothing to fix it on, the run is unchanged.
    no_val = predictions.filter(pc.equal(predictions.column("table"), "benign"))
    assert with_benign_robust_points(no_val, [detector]) == [detector]


def test_rates_at_report_exact_bounds_for_cells_without_errors():
    """618 reals, none flagged: FPR 0 with the one-sided bound 1 - 0.05**(1/618) = 0.0048, not [0, 0]."""
    y = np.r_[np.zeros(618, np.int64), np.ones(100, np.int64)]
    score = np.r_[np.linspace(0.0, 0.4, 618), np.linspace(0.3, 1.0, 100)]
    groups = np.r_[np.repeat(np.arange(309), 2), 1000 + np.arange(100)].astype(str)  # two images per real patient
    cells = rates_at(y, score, 0.5, groups=groups, n_boot=200, seed=0)
    value, low, high = cells["fpr"]
    assert (value, low) == (0.0, 0.0) and high == pytest.approx(1 - 0.05 ** (1 / 618)) and round(high, 4) == 0.0048
    tpr = float(np.mean(score[y == 1] >= 0.5))
    assert cells["tpr"][0] == pytest.approx(tpr) and cells["tpr"][1] < tpr < cells["tpr"][2]  # errors: bootstrap
    # PPV at a prevalence: from the cell's tpr and fpr; with no false alarm every flag is a fake.
    assert cells["ppv@0.001"][0] == pytest.approx(1.0)
    tpr_low = cells["tpr"][1]
    assert cells["ppv@0.01"][1] == pytest.approx(tpr_low * 0.01 / (tpr_low * 0.01 + high * 0.99))  # worst ends
    everything = rates_at(y, score, -1.0, groups=groups, n_boot=50, seed=0)
    assert everything["tpr"][:2] == (1.0, pytest.approx(0.05 ** (1 / 100)))  # every fake caught: exact lower bound
    record = at_points(y, score, {"fpr_0.01": 0.5}, groups=groups, n_boot=50, seed=0)["fpr_0.01"]
    assert record["threshold"] == 0.5 and record["fpr_ci_high"] == pytest.approx(high)


def fake_run(root: Path, metrics: dict, threshold: float = 0.42) -> str:
    """A finished run folder: test_metrics.json and a checkpoint with a plain-data classifier state."""
    run = root / "deepfake-cnn-old"
    checkpoint = run / "checkpoint_000000"
    checkpoint.mkdir(parents=True)
    state = build_classifier_state(
        config={"source": "real"}, task="deepfake", model_name="cnn", model_kwargs={"image_size": 64}, model_state={},
        optimizer_state=None, scheduler_state=None, epoch=0, val_metrics={}, threshold=threshold, history=[],
    )
    save_state(state, str(checkpoint / STATE_FILE))
    (run / TEST_METRICS_FILE).write_text(json.dumps({"run": run.name, "source": "real+fake", "checkpoint": str(checkpoint), **metrics}))
    return str(run)


def test_runs_without_operating_points_still_load(tmp_path):
    from cxr_ray.scoring import load_run

    old = load_run(fake_run(tmp_path / "a", {"threshold": 0.42}), None)
    assert (old.operating_points, old.temperature, old.threshold) == ({"youden": 0.42}, 1.0, 0.42)
    new = load_run(fake_run(tmp_path / "b", {"operating_points": {"youden": 0.42, "fpr_0.01": 0.9}, "temperature": 0.5}), None)
    assert (new.operating_points, new.temperature) == ({"youden": 0.42, "fpr_0.01": 0.9}, 0.5)
    with pytest.raises(ConfigError, match="temperature must be positive"):
        load_run(fake_run(tmp_path / "c", {"temperature": -1}), None)


def test_scan_threshold_from_val_predictions_or_the_youden_fallback(tmp_path):
    from cxr_ray.scan import scan_threshold

    run = fake_run(tmp_path, {})
    lines: list[str] = []
    assert scan_threshold(run, True, 0.42, 0.01, None, lines.append) == (0.42, "youden")
    assert len(lines) == 1 and "no validation predictions" in lines[0] and "Youden threshold 0.4200" in lines[0]
    table = pa.table({"path": [f"p{i}" for i in range(len(Y_VAL))], "patient_id": [f"q{i}" for i in range(len(Y_VAL))],
                      "target": Y_VAL, "score": S_VAL})
    pq.write_table(table, str(Path(run) / VAL_PREDICTIONS_FILE))
    assert scan_threshold(run, True, 0.42, 0.01, None, lines.append) == (0.4925, "fpr_0.01")
    assert scan_threshold(run, True, 0.42, 0.001, None, lines.append) == (0.7, "fpr_0.001")
    assert len(lines) == 1


def test_a_benign_table_read_for_a_threshold_yields_its_validation_rows_alone():
    from cxr_ray.scoring.pipeline import BENIGN_TABLE, BENIGN_VAL_TABLE, IMAGE_COLUMNS, benign_scored_rows

    n = 6
    batch = pa.table({
        **{c: [b"\x00"] * n if c == "image" else [0] * n if c == "label" else [f"{c}{i}" for i in range(n)] for c in IMAGE_COLUMNS},
        "condition": ["ingest", "jpeg60"] * 3,
    }).set_column(IMAGE_COLUMNS.index("split"), "split", pa.array(["val", "val", "test", "test", "test", "val"]))  # fmt: skip
    both = benign_scored_rows(batch, BENIGN_TABLE)
    assert sorted(both.column("table").to_pylist()) == [BENIGN_TABLE] * 3 + [BENIGN_VAL_TABLE] * 3
    val_only = benign_scored_rows(batch, BENIGN_VAL_TABLE)
    assert val_only.column("table").to_pylist() == [BENIGN_VAL_TABLE] * 3
    assert val_only.column("perturbation").to_pylist() == ["ingest", "jpeg60", "jpeg60"]
    assert val_only.schema == both.schema  # one layout, so either unions with the other parts
