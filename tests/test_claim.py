"""The seed's transfer claim: train_per_class subsampling, the pairing check, both readings' statistics
(pure numpy, hand-made scores), and one end-to-end run on a tiny matched pair trained with the real trainer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cxr_ray import metrics as M
from cxr_ray import storage
from cxr_ray.claim import (
    CLAIM_COLUMNS,
    ClaimConfig,
    EvalSet,
    RunRecord,
    check_pair,
    check_pairs,
    pick,
    reading_a,
    reading_b,
    verdict_a,
    verdict_b,
)
from cxr_ray.config import ConfigError
from cxr_ray.data import schema
from cxr_ray.data.datasets import TaskData, train_subset
from cxr_ray.train.classifier import ClassifierConfig

quiet = lambda m: None  # noqa: E731


# ---------------------------------------------------------------- train_per_class


def write_table(folder: Path, counts: dict[tuple[str, int], int], source: str = "real") -> str:
    """A complete image table of 4x4 images: `counts[(split, label)]` rows each, paths shuffled on purpose."""
    rows = []
    rng = np.random.default_rng(7)
    for (split, label), n in counts.items():
        for i in range(n):
            rows.append({
                "image": bytes(16), "height": 4, "width": 4, "label": label,
                "class_name": ("NORMAL", "PNEUMONIA")[label], "patient_id": f"p{split}{label}{i // 2}", "split": split,
                "source": source, "sha256": f"{split}{label}{i}", "path": f"/{split}/{label}/img{i:03d}.jpeg",
                "generator_run": None, "seed": None,
            })
    rows = [rows[i] for i in rng.permutation(len(rows))]
    (folder / schema.IMAGES_DIR).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema.IMAGE_SCHEMA), folder / schema.IMAGES_DIR / "part-0.parquet")
    (folder / schema.SUMMARY_FILE).write_text(json.dumps({"resolution": 4}))
    (folder / storage.SUCCESS_MARKER).write_text("")
    return str(folder)


def test_train_subset_picks_n_per_class_deterministically(tmp_path):
    table = write_table(tmp_path / "t", {("train", 0): 9, ("train", 1): 5, ("val", 0): 3, ("test", 1): 4})
    data = TaskData(task="pneumonia", real=table)
    paths, counts = train_subset(data, 3, seed=0)
    assert counts == {0: 3, 1: 3} and len(paths) == 6 == len(set(paths))
    assert all(p.startswith("/train/") for p in paths)
    assert sum(p.startswith("/train/0/") for p in paths) == 3
    assert train_subset(data, 3, seed=0) == (paths, counts)  # same seed, same table: same images
    assert any(train_subset(data, 3, seed=s)[0] != paths for s in range(1, 6))  # the seed decides the draw
    # A class with fewer images keeps all of them.
    short, counts = train_subset(data, 7, seed=0)
    assert counts == {0: 7, 1: 5} and sum(p.startswith("/train/1/") for p in short) == 5


def test_train_per_class_is_validated_and_named_only_when_set():
    base = ClassifierConfig(data="real")
    assert "train_per_class" not in base.identity()  # runs trained before keep their names
    cut = ClassifierConfig(data="real", train_per_class=250)
    assert cut.identity()["train_per_class"] == 250 and cut.run_name() != base.run_name()
    with pytest.raises(ConfigError, match="train_per_class"):
        ClassifierConfig(data="real", train_per_class=0)


# ---------------------------------------------------------------- pairing


def record(run_dir: str, **changes) -> RunRecord:
    config = {
        "task": "pneumonia", "model": "cnn", "source": "fake", "seed": 0, "train_per_class": 250, "epochs": 10,
        "batch_size": 64, "num_workers": 2, "lr": 1e-3, "weight_decay": 1e-4, "aug_strength": 0.5, "robust_aug": 0.0,
        "label_smoothing": 0.0, "pretrained": False,
    }
    config.update(changes)
    return RunRecord(run_dir, {"run": run_dir.split("/")[-1], "config": config})


def test_pairing_check_names_the_run_and_field():
    fake, real = record("runs/F0"), record("runs/R0", source="real")
    check_pair(fake, real)
    with pytest.raises(ConfigError, match=r"runs/R0: seed=1 .*runs/F0 has seed=0"):
        check_pair(fake, record("runs/R0", source="real", seed=1))
    with pytest.raises(ConfigError, match=r"runs/R0: trained on source 'fake', expected 'real'"):
        check_pair(fake, record("runs/R0"))
    with pytest.raises(ConfigError, match=r"runs/F0: trained without train_per_class"):
        check_pair(record("runs/F0", train_per_class=None), record("runs/R0", source="real", train_per_class=None))
    with pytest.raises(ConfigError, match=r"runs/R0: model='resnet18'"):
        check_pair(fake, record("runs/R0", source="real", model="resnet18"))
    with pytest.raises(ConfigError, match=r"runs/F1: seed 0 of cnn is already given by runs/F0"):
        check_pairs([(fake, real), (record("runs/F1"), record("runs/R1", source="real"))])
    with pytest.raises(ConfigError, match=r"runs/F1: epochs=5"):
        check_pairs([(fake, real), (record("runs/F1", seed=1, epochs=5), record("runs/R1", source="real", seed=1, epochs=5))])
    with pytest.raises(ConfigError, match="one real control per fake-trained run"):
        ClaimConfig(fake_runs=("a", "b"), real_runs=("c",), real="r", fakes="f", dest="d")


# ---------------------------------------------------------------- the two readings (pure numpy)


def patients(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n images, two per patient, classes alternating by patient."""
    groups = np.repeat(np.arange(n // 2), 2).astype(str).astype(object)
    y = np.repeat(np.arange(n // 2) % 2, 2)
    return y, groups


def scored(y, groups, scores, thresholds=None) -> EvalSet:
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    t = np.full(len(scores), 0.5) if thresholds is None else np.asarray(thresholds, np.float64)
    return EvalSet(y=np.asarray(y), groups=np.asarray(groups, dtype=object), scores=scores, thresholds=t)


def test_reading_a_random_fake_trained_against_a_perfect_control():
    y, g = patients(80)
    rng = np.random.default_rng(1)
    random = rng.random((3, y.size))
    perfect = np.vstack([y * 0.8 + 0.1 + rng.normal(0, 0.01, y.size) for _ in range(3)])
    names = (["F0", "F1", "F2"], ["R0", "R1", "R2"])
    rows = reading_a(scored(y, g, random), scored(y, g, perfect), [0, 1, 2], names, "cnn", n_boot=300, seed=0)
    assert {tuple(sorted(r)) for r in rows} == {tuple(sorted(CLAIM_COLUMNS))}
    diff = pick(rows, metric="auc_difference", seed=None)[0]
    assert diff["ci_high"] < 0 and diff["value"] == pytest.approx(np.mean([M.roc_auc(y, s) for s in random]) - 1.0)
    assert [r["run"] for r in pick(rows, metric="auc_difference") if r["seed"] is not None] == ["F0 - R0", "F1 - R1", "F2 - R2"]
    verdict = verdict_a(rows, "cnn", 250)
    assert verdict["reproduced"] and verdict["sentence"].startswith("Reading A is reproduced for cnn")

    # The same model in both arms: no difference, nothing reproduced.
    same = reading_a(scored(y, g, perfect), scored(y, g, perfect), [0, 1, 2], names, "cnn", n_boot=300, seed=0)
    diff = pick(same, metric="auc_difference", seed=None)[0]
    assert (diff["value"], diff["ci_low"], diff["ci_high"]) == (0.0, 0.0, 0.0)
    verdict = verdict_a(same, "cnn", 250)
    assert not verdict["reproduced"] and "does not lie below 0" in verdict["sentence"] and "contains 0.5" in verdict["sentence"]


def test_reading_a_hand_computed_and_equal_to_the_paired_bootstrap_per_seed():
    y = np.array([0, 0, 1, 1])
    perfect, inverted = np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.9, 0.8, 0.2, 0.1])
    g = np.array(["a", "b", "c", "d"], dtype=object)
    # Seed 0: AUC 0 vs 1 (difference -1); seed 1: 1 vs 1 (0). The mean over seeds: -0.5.
    rows = reading_a(scored(y, g, [inverted, perfect]), scored(y, g, [perfect, perfect]), [0, 1], (["F0", "F1"], ["R0", "R1"]),
                     "cnn", n_boot=50, seed=0)
    assert [r["value"] for r in pick(rows, metric="auc_difference")] == [-1.0, 0.0, -0.5]
    assert [r["value"] for r in pick(rows, metric="accuracy_difference")] == [-1.0, 0.0, -0.5]
    # One seed: the paired patient bootstrap of metrics.paired_difference_ci, number for number.
    y, g = patients(60)
    rng = np.random.default_rng(3)
    a, b = rng.random(y.size), y * 0.5 + rng.random(y.size)
    rows = reading_a(scored(y, g, a), scored(y, g, b), [0], (["F0"], ["R0"]), "cnn", n_boot=200, seed=4)
    expected = M.paired_difference_ci(y, a, b, M.roc_auc, groups=g, n_boot=200, seed=4)
    for row in pick(rows, metric="auc_difference"):  # the seed's row and the (one-seed) mean
        assert (row["value"], row["ci_low"], row["ci_high"]) == pytest.approx(expected)


def test_reading_b_drop_on_fakes_and_equal_to_the_independent_bootstrap():
    y_real, g_real = patients(60)
    y_fake = np.arange(40) % 2
    g_fake = np.array([f"fake/{i}" for i in range(40)], dtype=object)
    rng = np.random.default_rng(5)
    on_real = np.vstack([y_real * 0.8 + 0.1 for _ in range(3)])
    on_fakes = rng.random((3, 40))
    rows = reading_b(scored(y_fake, g_fake, on_fakes), scored(y_real, g_real, on_real), [0, 1, 2], ["R0", "R1", "R2"],
                     "cnn", n_boot=300, seed=0)
    assert pick(rows, metric="auc_difference", seed=None)[0]["ci_high"] < 0
    verdict = verdict_b(rows, "cnn")
    assert verdict["reproduced"] and "held-out fakes" in verdict["sentence"]
    # Better on fakes than on real test images: the hypothesis' drop is not there.
    rows = reading_b(scored(y_real, g_real, on_real), scored(y_fake, g_fake, on_fakes), [0, 1, 2], ["R0", "R1", "R2"],
                     "cnn", n_boot=300, seed=0)
    assert not verdict_b(rows, "cnn")["reproduced"]
    # One seed: metrics.difference_ci_independent, number for number.
    rows = reading_b(scored(y_fake, g_fake, on_fakes[0]), scored(y_real, g_real, on_real[0]), [0], ["R0"], "cnn", n_boot=200, seed=9)
    expected = M.difference_ci_independent(y_fake, on_fakes[0], g_fake, y_real, on_real[0], g_real, M.roc_auc, n_boot=200, seed=9)
    for row in pick(rows, metric="auc_difference"):
        assert (row["value"], row["ci_low"], row["ci_high"]) == pytest.approx(expected)


# ---------------------------------------------------------------- end to end (Ray)


@pytest.fixture(scope="module")
def pair(sample64, tmp_path_factory) -> dict[str, str]:
    """The sample's reals, blurred stand-in fakes, and one matched pair: 16 fakes / 16 reals per class, 1 epoch."""
    from cxr_ray.train.classifier import train_classifier
    from test_classifier import blurred_fakes

    root = tmp_path_factory.mktemp("claim")
    real, fakes = sample64, str(root / "fakes-64")
    blurred_fakes(real, fakes)
    runs = {}
    for source in ("fake", "real"):
        cfg = ClassifierConfig(data=real, fakes=fakes, source=source, train_per_class=16, epochs=1, batch_size=8, num_workers=1,
                               storage=str(root / "runs"), n_boot=20)
        runs[source] = str(root / "runs" / train_classifier(cfg, log=quiet)["run"])
    return {"root": str(root), "real": real, "fakes": fakes, "fake_run": runs["fake"], "real_run": runs["real"]}


@pytest.mark.slow  # CXR_RAY_SLOW=1 (the default run keeps the claim's tables and verdicts without Ray)
def test_read_split_cuts_the_train_rows_only(pair):
    from cxr_ray.data.datasets import read_split

    data = TaskData(task="pneumonia", real=pair["real"])
    assert read_split(data, ["train"], per_class=16, seed=0, log=quiet).count() == 32
    full_val = read_split(data, ["val"]).count()
    assert read_split(data, ["val"], per_class=16, seed=0).count() == full_val > 0
    trained = json.loads((Path(pair["fake_run"]) / "test_metrics.json").read_text())
    assert trained["config"]["train_per_class"] == 16  # recorded with the run


@pytest.mark.slow  # CXR_RAY_SLOW=1 (the default run keeps the claim's tables and verdicts without Ray)
def test_run_claim_writes_both_readings(pair):
    from cxr_ray.claim import run_claim

    dest = str(Path(pair["root"]) / "claim")
    cfg = ClaimConfig(fake_runs=(pair["fake_run"],), real_runs=(pair["real_run"],), real=pair["real"], fakes=pair["fakes"],
                      dest=dest, n_boot=50)
    summary = run_claim(cfg, log=quiet)
    assert set(summary["verdicts"]["cnn"]) == {"A", "B"}
    record = json.loads((Path(dest) / "claim.json").read_text())
    (design,) = record["pairs"]
    assert design["train_images"] == {"fake": 32, "real": 32} and design["matched_size"]
    assert design["total_steps"]["fake"] == design["total_steps"]["real"] == 4  # 32 images / 1 worker / batch 8
    table = pq.read_table(Path(dest) / "claim.parquet")
    assert tuple(table.column_names) == CLAIM_COLUMNS
    rows = table.to_pylist()
    n_real = pick(rows, reading="A", arm="fake_trained", metric="auc", seed=None)[0]["n"]
    assert n_real == 65 == pick(rows, reading="B", eval_set="real_test", metric="auc", seed=0)[0]["n"]  # the sample's test split
    text = (Path(dest) / "claim.md").read_text()
    assert "Reading A" in text and "Reading B" in text and "scores about 50%" in text
    assert summary["verdicts"]["cnn"]["A"]["sentence"] in text
    # The pair's roles swapped: a clear error naming the run, before anything is scored.
    swapped = ClaimConfig(fake_runs=(pair["real_run"],), real_runs=(pair["fake_run"],), real=pair["real"],
                          fakes=pair["fakes"], dest=dest + "-2", n_boot=50)
    with pytest.raises(ConfigError, match="expected 'fake'"):
        run_claim(swapped, log=quiet)
