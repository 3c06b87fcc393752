"""Leave-one-family-out detection (issue 15): several fake tables per detector, held-out families scored at
each detector's own validation operating point, the frequency baseline fitted leave-one-out, benign false alarms.

Two "families" are untrained DCGANs with different seeds (plumbing, not quality); the detectors are trained
by the real trainer on the embedded sample, with a local Ray.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.generalise import (
    ALL_FAMILIES, BENIGN_ROBUST, DEPLOYED_DESIGN, POINT, GeneraliseConfig, held_out_summary, run_generalise, training_sets,
)
from cxr_ray.generate import GenerateConfig, run_generate
from cxr_ray.train.classifier import ClassifierConfig, task_data
from test_generate import save_untrained_gan

quiet = lambda m: None  # noqa: E731


def test_training_sets_each_alone_each_left_out_and_all():
    two = training_sets(("a", "b"))
    assert [(t.name, t.families) for t in two] == [("only-a", ("a",)), ("only-b", ("b",)), (ALL_FAMILIES, ("a", "b"))]
    three = {t.name: t.families for t in training_sets(("a", "b", "c"))}
    assert three["but-b"] == ("a", "c") and three[ALL_FAMILIES] == ("a", "b", "c") and len(three) == 7
    # With two families, "every family but one" is the other one alone, named so.
    assert [t.name for t in training_sets(("a", "b"), ("but", "all"))] == ["only-b", "only-a", ALL_FAMILIES]


def test_a_detector_reads_several_fake_tables_and_one_table_keeps_its_old_name():
    one = ClassifierConfig(data="r", task="deepfake", fakes="f")
    assert ClassifierConfig(data="r", task="deepfake", fakes=("f",)) == one  # a 1-tuple is the plain table
    assert one.run_name() == ClassifierConfig(data="r", task="deepfake", fakes=["f"]).run_name()
    many = ClassifierConfig(data="r", task="deepfake", fakes=["f", "g"])
    assert many.fakes == ("f", "g") and task_data(many).tables() == ["r", "f", "g"]
    assert many.run_name() != one.run_name()


def test_config_errors_name_the_field():
    base = dict(real="r", families=("a", "b"), fakes=("fa", "fb"), runs="runs", dest="out")
    GeneraliseConfig(**base)
    for bad, word in (
        ({"fakes": ("fa",)}, "one table per family"), ({"families": ("a",), "fakes": ("fa",)}, "at least two"),
        ({"families": ("a", "a")}, "each family once"), ({"designs": ("magic",)}, "designs"),
        ({"families": ("a-b", "c")}, "'-'"), ({"model": "vit"}, "model"),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=word):
            GeneraliseConfig(**{**base, **bad})


@pytest.fixture(scope="module")
def families(sample64, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("lofo")
    real = sample64
    tables = {}
    for family, seed in (("alpha", 1), ("beta", 7)):
        gans = tuple(
            save_untrained_gan(str(root / "gans" / f"{family}-{cls.lower()}"), cls, seed=seed + i)
            for i, cls in enumerate(("NORMAL", "PNEUMONIA"))
        )
        tables[family] = str(root / f"fakes-{family}-64")
        run_generate(
            GenerateConfig(generators=gans, dest=tables[family], train_seeds=(0, 40), test_seeds=(1_000_000, 1_000_010), val_fraction=0.25),
            log=quiet,
        )
    from cxr_ray.benign import BenignConfig, run_benign

    benign = str(root / "benign-64")
    run_benign(BenignConfig(real=real, dest=benign, conditions=("ingest", "jpeg60")), log=quiet)
    return {"root": str(root), "real": real, "benign": benign, **tables}


@pytest.mark.slow  # CXR_RAY_SLOW=1 (the default run keeps the designs' configs and tables without Ray)
def test_leave_one_family_out_end_to_end(families):
    root = Path(families["root"])
    cfg = GeneraliseConfig(
        real=families["real"], families=("alpha", "beta"), fakes=(families["alpha"], families["beta"]),
        runs=str(root / "runs"), dest=str(root / "generalise"), benign=families["benign"], model="cnn",
        designs=("upsampling",), epochs=1, batch_size=32, n_boot=50,
    )  # fmt: skip
    summary = run_generalise(cfg, log=quiet)
    assert [r["trained_on"] for r in summary["runs"]] == ["only-beta", "only-alpha", ALL_FAMILIES]

    # The detector trained on both families read both tables.
    all_run = next(r["run_dir"] for r in summary["runs"] if r["trained_on"] == ALL_FAMILIES)
    recorded = storage.read_json(storage.join(all_run, "test_metrics.json"))["config"]["fakes"]
    assert [Path(t).name for t in recorded] == ["fakes-alpha-64", "fakes-beta-64"]

    rows = pq.read_table(root / "generalise" / "lofo.parquet").to_pylist()
    detectors = [r for r in rows if r["design"] == "upsampling"]
    # Every detector on every family; held out exactly when the family was not in its training set.
    seen = {(r["trained_on"], r["test_family"], r["held_out"]) for r in detectors}
    assert seen == {
        ("only-alpha", "alpha", False), ("only-alpha", "beta", True), ("only-beta", "beta", False),
        ("only-beta", "alpha", True), (ALL_FAMILIES, "alpha", False), (ALL_FAMILIES, "beta", False),
    }  # fmt: skip
    # Each detector tested on a family: its reals and that family's 20 test fakes, at its own 1% points: the one on
    # stored validation reals and the benign-robust one (the benign table re-processed the validation reals too).
    for point in (POINT, BENIGN_ROBUST):
        at_point = [r for r in detectors if r["operating_point"] == point and r["metric"] == "tpr"]
        assert len(at_point) == 6 and all(0.0 <= r["value"] <= 1.0 for r in at_point)
    assert {e["point"] for e in held_out_summary(pa.Table.from_pylist(detectors), pa.table({}))} == {BENIGN_ROBUST}
    # The frequency baseline is fitted on the other family and tested on the held-out one only.
    baseline = {(r["trained_on"], r["test_family"]) for r in rows if r["design"] == "freq_baseline"}
    assert baseline == {("only-beta", "alpha"), ("only-alpha", "beta")}
    assert all(r["held_out"] for r in rows if r["design"] == "freq_baseline")

    benign = pq.read_table(root / "generalise" / "lofo_benign.parquet").to_pylist()
    assert {r["perturbation"] for r in benign} == {"ingest", "jpeg60"} and {r["metric"] for r in benign} == {"fpr"}
    assert len({r["run"] for r in benign}) == 3

    report = (root / "generalise" / "lofo.md").read_text()
    held_part, seen_part = report.split("## Families the detector was trained on")
    assert "| upsampling | only-alpha | beta |" in held_part and "| upsampling | only-alpha | alpha |" in seen_part
    # Re-running reuses every finished detector (no retraining: same run directories).
    again = run_generalise(cfg, log=quiet)
    assert [r["run_dir"] for r in again["runs"]] == [r["run_dir"] for r in summary["runs"]]


def test_held_out_summary_applies_all_three_targets():
    def row(metric, point, value, run="r1"):
        return {"design": "generalising", "trained_on": "only-a", "test_family": "b", "held_out": True, "run": run,
                "metric": metric, "operating_point": point, "perturbation": "none", "value": value,
                "ci_low": value, "ci_high": value, "n": 10}  # fmt: skip

    import pyarrow as pa

    detection = pa.Table.from_pylist([row("auc", "", 0.99), row("tpr", POINT, 0.95)])
    quiet_benign = pa.Table.from_pylist([{"run": "r1", "operating_point": POINT, "metric": "fpr", "value": 0.005, "perturbation": "jpeg60"}])
    noisy_benign = pa.Table.from_pylist([{"run": "r1", "operating_point": POINT, "metric": "fpr", "value": 0.03, "perturbation": "gamma1.2"}])
    assert held_out_summary(detection, quiet_benign)[0]["meets_target"]
    failed = held_out_summary(detection, noisy_benign)[0]
    assert not failed["meets_target"] and failed["worst_benign_condition"] == "gamma1.2"
    low_tpr = pa.Table.from_pylist([row("auc", "", 0.99), row("tpr", POINT, 0.5)])
    assert held_out_summary(low_tpr, quiet_benign)[0]["meets_target"] is False
    assert held_out_summary(detection, pa.table({}))[0]["meets_target"] is None  # benign not measured
    # With a benign-robust point the target is judged there, TPR and benign false alarms alike.
    robust = pa.Table.from_pylist([row("auc", "", 0.99), row("tpr", POINT, 0.95), row("tpr", BENIGN_ROBUST, 0.5)])
    robust_benign = pa.Table.from_pylist([{"run": "r1", "operating_point": BENIGN_ROBUST, "metric": "fpr", "value": 0.004, "perturbation": "png"}])
    judged = held_out_summary(robust, pa.concat_tables([noisy_benign, robust_benign]))[0]
    assert judged["point"] == BENIGN_ROBUST and judged["tpr"] == 0.5 and judged["meets_target"] is False
    assert judged["worst_benign_fpr"] == 0.004 and judged["worst_benign_condition"] == "png"


def test_cli_rejects_a_malformed_family_in_one_line(tmp_path):
    from cxr_ray.cli.app import app

    result = CliRunner().invoke(app, ["generalise", str(tmp_path / "out"), "--real", "r", "--runs", "x", "--family", "dcgan"])
    assert result.exit_code != 0 and "NAME=TABLE" in result.output


def test_resampled_fakes_turn_only_reals_into_upsampled_fakes():
    import torch

    from cxr_ray.train.loop import resampled_fakes

    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8)
    y = torch.tensor([0, 1] * 32)
    out, target = resampled_fakes(x, y, 1.0, gen)
    changed = (out != x).flatten(1).any(1)
    assert torch.equal(target, torch.ones_like(y)) and torch.equal(changed, y == 0)  # every real, no fake, touched
    assert torch.equal(out[y == 1], x[y == 1])
    # What a 2x upsampling leaves: no detail finer than the halved image held (the 2x2 means come back).
    halves = torch.nn.functional.avg_pool2d(out[y == 0].float(), 2)
    assert (halves - torch.nn.functional.avg_pool2d(x[y == 0].float(), 2)).abs().mean() < 8
    assert torch.equal(resampled_fakes(x, y, 0.0, gen)[0], x)
    with pytest.raises(ConfigError, match="deepfake"):
        ClassifierConfig(data="r", task="pneumonia", resample_fakes=0.3)
    assert "resample_fakes" not in ClassifierConfig(data="r", task="deepfake", fakes="f").identity()


def test_learnt_upsamplers_keep_brightness_and_leave_a_phase_pattern():
    """Transposed and sub-pixel convolutions with a random kernel per image: each output phase keeps the image's
    level within PHASE_GAIN, and the phases differ (the checkerboard); a LOFO run never shows the held-out family's
    own upsampler (the DCGAN's transposed convolutions)."""
    import torch

    from cxr_ray.generalise import design_options
    from cxr_ray.train.loop import PHASE_GAIN, learnt_upsample

    gen = torch.Generator().manual_seed(0)
    flat = torch.full((8, 1, 16, 16), 100.0)
    for mode in ("transposed", "pixel_shuffle"):
        up = learnt_upsample(flat, mode, gen)
        assert up.shape == (8, 1, 32, 32)
        assert (up - 100).abs().max() <= 100 * PHASE_GAIN + 1e-3  # borders included: no dark edge
        phases = torch.stack([up[:, 0, a::2, b::2].mean(dim=(1, 2)) for a in (0, 1) for b in (0, 1)], 1)
        assert (phases.max(1).values - phases.min(1).values).min() > 0.1  # every image has a phase pattern
    with pytest.raises(ValueError, match="learnt upsampler"):
        learnt_upsample(flat, "bilinear", gen)
    families = ("dcgan", "sngan", "vae")
    assert "transposed" not in design_options("residual_upsamplers_stored", ("sngan", "vae"), families)["resample_modes"]
    assert design_options("residual_upsamplers_stored", families, families)["resample_modes"] == (
        "nearest", "bilinear", "bicubic", "transposed", "pixel_shuffle")  # fmt: skip


def test_stored_fakes_reach_the_model_as_the_archive_stores_them():
    """resample_stored: the synthetic fakes go through the archive's format and ingest's decode, and only they do."""
    import torch

    from cxr_ray.data.archive import ArchiveFormat, to_archive_pixels
    from cxr_ray.train.loop import stored_as_archive

    fmt = ArchiveFormat("JPEG", 224, 224, "RGB", 75, "4:2:0")
    x = torch.randint(0, 256, (6, 1, 64, 64), dtype=torch.uint8)
    which = torch.tensor([True, False, True, False, False, True])
    out = stored_as_archive(x, which, fmt)
    assert torch.equal(out[~which], x[~which])
    expected = to_archive_pixels(x[which][:, 0].numpy(), fmt, 64)
    assert np.array_equal(out[which][:, 0].numpy(), expected) and not torch.equal(out[which], x[which])
    assert torch.equal(stored_as_archive(x, torch.zeros(6, dtype=torch.bool), fmt), x)
    with pytest.raises(ConfigError, match="resample_stored"):
        ClassifierConfig(data="r", task="deepfake", resample_stored=True)  # there are no synthetic fakes to store
    upsampling = ClassifierConfig(data="r", task="deepfake", resample_fakes=0.3)
    stored = ClassifierConfig(data="r", task="deepfake", resample_fakes=0.3, resample_stored=True)
    assert "resample_stored" not in upsampling.identity() and stored.run_name() != upsampling.run_name()


def test_the_upsampling_design_withholds_a_left_out_familys_own_interpolation():
    cfg = GeneraliseConfig(real="r", families=("dcgan", "sngan", "vae"), fakes=("a", "b", "c"), runs="x", dest="y",
                           designs=("upsampling", "plain"))  # fmt: skip
    modes = {c.name: c.resample_modes for _, _, c in cfg.detector_configs() if c.resample_fakes}
    assert modes["lofo-upsampling-resnet18-but-sngan"] == ("bilinear", "bicubic")  # SNGAN upsamples by nearest
    assert modes["lofo-upsampling-resnet18-but-vae"] == ("nearest", "bicubic")  # the VAE bilinearly
    assert modes["lofo-upsampling-resnet18-all"] == ("nearest", "bilinear", "bicubic")
    plain = [c for d, _, c in cfg.detector_configs() if d == "plain"]
    assert all(not c.resample_fakes and not c.robust_aug for c in plain) and len(plain) == 6
    with pytest.raises(ConfigError, match="its own table"):
        GeneraliseConfig(real="r", families=("a", "b"), fakes=("t", "t"), runs="x", dest="y")
    with pytest.raises(ConfigError, match="benign_designs"):
        GeneraliseConfig(real="r", families=("a", "b"), fakes=("t", "u"), runs="x", dest="y", benign_designs=("nope",))


def test_a_study_root_stands_for_its_deployed_detector_or_says_why_not(tmp_path):
    from cxr_ray.manifest import Manifest
    from cxr_ray.study.deployed import study_detector

    root = str(tmp_path / "study")
    assert study_detector(root, None) is None  # not a study root: scan treats it as a run folder
    manifest = Manifest(root)
    manifest.start("generalise", "h")
    with pytest.raises(ConfigError, match="has not finished"):
        study_detector(root, None)
    manifest.finish("generalise", {"runs": [{"design": "plain", "trained_on": ALL_FAMILIES, "run_dir": "/x"}]})
    with pytest.raises(ConfigError, match="deployed no detector"):
        study_detector(root, None)
    # A moved study: the recorded path is gone, the run is found under the root's own generalise-runs.
    run = tmp_path / "study" / "generalise-runs" / f"lofo-{DEPLOYED_DESIGN}-cnn-all"
    run.mkdir(parents=True)
    (run / "test_metrics.json").write_text("{}")
    manifest.start("generalise", "h")
    manifest.finish("generalise", {"runs": [{"design": DEPLOYED_DESIGN, "trained_on": ALL_FAMILIES,
                                             "run_dir": f"/old/place/lofo-{DEPLOYED_DESIGN}-cnn-all"}]})  # fmt: skip
    assert study_detector(root, None) == str(run)


def test_report_sections_show_the_families_and_the_held_out_table(tmp_path):
    import numpy as np

    from cxr_ray.report.doc import Doc
    from cxr_ray.report.families import families_section, generalise_section

    doc = Doc(str(tmp_path / "report"), None)
    quality = {"rows": [{"comparison": "generator (epoch 10) vs real test", "n_reference": 9, "n_other": 9, "fd": 1.5, "kid": 0.01}]}
    families = {"vae": {"table": "t", "quality": {"NORMAL": quality}}}
    families_section(doc, families, lambda table, cls, split, n: np.full((4, 8, 8), 128, np.uint8))
    dest = tmp_path / "generalise"
    dest.mkdir()
    (dest / "lofo.md").write_text("# Leave-one-family-out detection\n\n## Families the detector never saw\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (dest / "_SUCCESS").write_text("")
    summary = {"runs": [{"design": DEPLOYED_DESIGN, "trained_on": ALL_FAMILIES, "run_dir": "/s/generalise-runs/d"}]}
    generalise_section(doc, summary, str(dest), None)
    text = "\n".join(doc.md)
    assert "| vae | NORMAL | generator (epoch 10) vs real test |" in text and "fake_vae_normal.png" in text
    assert "Deployed detector" in text and "/s/generalise-runs/d" in text
    assert "### Families the detector never saw" in text  # the job's own headings sit one level below the section's
