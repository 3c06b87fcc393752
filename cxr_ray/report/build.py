"""The study report: report.md plus a self-contained report.html (images inlined) in the study's report folder.

Reads only what the stages wrote (manifest, tables, run folders), found
through the study's layout (cxr_ray/study/layout.py), so it can be rebuilt
at any time; a section whose inputs are missing says so.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any, Callable

import numpy as np

from cxr_ray import storage
from cxr_ray.data.fingerprint import INPUTS_SUFFIX
from cxr_ray.data.layout import CLASS_NAMES
from cxr_ray.filenames import TEST_PREDICTIONS_FILE
from cxr_ray.manifest import Manifest
from cxr_ray.report import plots
from cxr_ray.report.detection import (
    ARCHIVE_SET,
    benign_section,
    claim_section,
    differences_section,
    headline_section,
    index_rows,
    operating_section,
)
from cxr_ray.report.doc import CSS, Doc, markdown_to_html  # noqa: F401  (markdown_to_html: the report's public helper)
from cxr_ray.report.families import families_section, generalise_section
from cxr_ray.report.tampering import tamper_section
from cxr_ray.storage import S3Settings
from cxr_ray.study.layout import STAGES, TIMELINE, StudyLayout


def _read_parquet(uri: str, s3: S3Settings | None):
    import pyarrow.parquet as pq

    if not storage.exists(uri, s3):
        return None
    fs, path = storage.resolve(uri, s3)
    return pq.read_table(path, filesystem=fs)


def _table_or_say(doc: Doc, uri: str, s3: S3Settings | None, missing: str):
    """The Parquet table at `uri`, or None after saying `missing` in the report."""
    table = _read_parquet(uri, s3)
    if table is None:
        doc.para(missing)
    return table


def _sample_images(table_uri: str, class_name: str, split: str, n: int, s3: S3Settings | None) -> np.ndarray:
    import pyarrow.compute as pc

    from cxr_ray.data.datasets import images_from_column

    table = _read_parquet(storage.join(storage.published(table_uri, s3), "images"), s3)
    if table is None:
        return np.zeros((0, 1, 1), np.uint8)
    table = table.filter(pc.and_(pc.equal(table.column("class_name"), class_name), pc.equal(table.column("split"), split)))
    return images_from_column(table.slice(0, n))


def build_report(layout: StudyLayout, s3: S3Settings | None = None, log: Callable[[str], None] = print) -> dict[str, str]:
    """Write report.md and report.html into the study's report folder; returns their URIs."""
    manifest = Manifest.load(layout.root, s3).stages
    out = lambda name: manifest.get(name, {}).get("outputs", {})  # noqa: E731
    doc = Doc(layout.report, s3)
    doc.heading("cxr-ray study report", 1)
    doc.para(f"Study root: {layout.root}. Built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")

    detection = _detection_inputs(layout, out("train"), s3)
    detection_sections(doc, detection)
    generalise_section(doc, out("generalise"), layout.generalise, s3)
    tamper_section(doc, manifest.get("tamper", {}), layout.attack, s3)
    _data_section(doc, out("ingest"))
    real_uri = out("ingest").get("table")
    fake_uri = out("generate").get("table")
    _samples_section(doc, real_uri, fake_uri, s3)
    _gan_section(doc, out("gan"), out("gan_quality"))
    families_section(doc, out("families"), lambda table, cls, split, n: _sample_images(table, cls, split, n, s3))
    _classifier_section(doc, out("train"), s3)
    claim_section(doc, layout.claim, s3)
    _transfer_section(doc, layout, s3)
    _detector_section(doc, out("train"), s3)
    operating_section(doc, detection["rows"], detection["labels"], detection["points"])
    differences_section(doc, detection["differences"], run_label)
    _robustness_section(doc, layout, s3)
    _tune_section(doc, out("tune"))
    _timing_section(doc, manifest)

    md_uri = storage.join(layout.report, "report.md")
    html_uri = storage.join(layout.report, "report.html")
    storage.write_bytes_atomic(md_uri, "\n".join(doc.md).encode(), s3)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>cxr-ray study report</title>"
        f"<style>{CSS}</style></head><body>{''.join(doc.html)}</body></html>"
    )
    storage.write_bytes_atomic(html_uri, page.encode(), s3)
    log(f"report: {md_uri} and {html_uri}")
    return {"md": md_uri, "html": html_uri}


def _detection_inputs(layout: StudyLayout, train: dict[str, Any], s3: S3Settings | None) -> dict[str, Any]:
    """The evaluate stage's detector rows by key, the detectors' labels, their recorded operating points, and the
    paired differences table (each None/empty when the stage has not run)."""
    from cxr_ray.evaluate import FREQ_BASELINE_FILE
    from cxr_ray.filenames import SUMMARY_FILE, TEST_METRICS_FILE
    from cxr_ray.freq_baseline import RUN_NAME as FREQ_BASELINE_RUN
    from cxr_ray.scoring import METRICS_NAME

    folder = storage.published(layout.evaluate, s3)
    metrics = _read_parquet(storage.join(folder, f"{METRICS_NAME}.parquet"), s3)
    rows = index_rows(metrics.to_pylist(), run_label) if metrics is not None else {}
    points = {}
    for name, run in train.items():
        uri = storage.join(run["run_dir"], TEST_METRICS_FILE)
        if name.startswith("deepfake-") and storage.exists(uri, s3):
            points[run_label(name)] = storage.read_json(uri, s3)
    summary_uri = storage.join(folder, SUMMARY_FILE)
    for run in (storage.read_json(summary_uri, s3).get("runs") or []) if storage.exists(summary_uri, s3) else []:
        if run.get("task") != "deepfake":  # a pneumonia run shares its detector twin's label
            continue
        # Points fixed at evaluation (the benign-robust 1% point) sit beside those the run fixed in training.
        recorded = points.setdefault(run_label(run["run"]), {}).setdefault("operating_points", {})
        for name, threshold in (run.get("operating_points") or {}).items():
            recorded.setdefault(name, threshold)
    baseline = storage.join(folder, FREQ_BASELINE_FILE)
    if storage.exists(baseline, s3):  # the frequency baseline fixes its points on its own validation split
        points[FREQ_BASELINE_RUN] = storage.read_json(baseline, s3)
    return {"rows": rows, "labels": sorted({k[0] for k in rows}), "points": points,
            "differences": _read_parquet(storage.join(folder, "detector_differences.parquet"), s3)}


def detection_sections(doc: Doc, detection: dict[str, Any]) -> None:
    """The headline (archive-format fakes and benign false alarms at the 1% point) and the benign table."""
    headline_section(doc, detection["rows"], detection["labels"])
    benign_section(doc, detection["rows"], detection["labels"])


def _data_section(doc: Doc, ingest: dict[str, Any]) -> None:
    doc.heading("Data")
    summary = ingest.get("summary")
    if not summary:
        doc.para("No ingest summary found.")
        return
    rows = []
    for split in ("train", "val", "test"):
        counts = summary["by_split_class"].get(split, {})
        rows.append([split, *(counts.get(cls, 0) for cls in CLASS_NAMES), summary["patients_by_split"].get(split, 0)])
    doc.para(
        f"Source {summary['src']} at {summary['resolution']} px: {summary['files_found']} files = {summary['rows']} images "
        f"+ {summary['quarantined']} quarantined + {summary['duplicates']} byte-identical duplicates. Validation was "
        f"carved from train by patient ({summary['val_fraction']:.0%}, seed {summary['seed']})."
    )
    doc.table(["split", *CLASS_NAMES, "patients"], rows)


def _samples_section(doc: Doc, real_uri: str | None, fake_uri: str | None, s3: S3Settings | None) -> None:
    doc.heading("Real and fake images")
    if not real_uri:
        doc.para("No image tables found.")
        return
    for cls in CLASS_NAMES:
        real = _sample_images(real_uri, cls, "train", 16, s3)
        if len(real):
            doc.image(f"real_{cls.lower()}.png", plots.image_grid(real, f"real {cls}, train split"),
                      f"Real {cls} X-rays (train split, {real_uri}).")
        if fake_uri:
            fake = _sample_images(fake_uri, cls, "test", 16, s3)
            if len(fake):
                doc.image(f"fake_{cls.lower()}.png", plots.image_grid(fake, f"DCGAN fakes {cls}, held-out seeds"),
                          f"DCGAN fakes of class {cls} (held-out test seeds, {fake_uri}).")


def _gan_section(doc: Doc, gans: dict[str, Any], quality: dict[str, Any]) -> None:
    doc.heading("GANs: losses and quality")
    if not gans:
        doc.para("No GAN runs recorded.")
        return
    histories = {cls: g["losses"] for cls, g in gans.items() if g.get("losses")}
    if histories:
        runs = ", ".join(g["run"] for g in gans.values())
        doc.image("gan_losses.png", plots.loss_curves(histories, "DCGAN losses per class"),
                  f"Discriminator (solid) and generator (dashed) losses per epoch; runs {runs}.")
    rows = []
    for cls, q in sorted(quality.items()):
        for r in q.get("rows", []):
            rows.append([cls, r["comparison"], r["n_reference"], r["n_other"], r["fd"], r["kid"]])
    if rows:
        first = next(iter(quality.values()))
        doc.para(
            f"Fréchet distance (FD) and KID in the {first['feature']['dim']}-d feature space of {first['feature']['name']} "
            "(an X-ray encoder trained by this project; Inception weights are not available offline). Lower is closer to "
            "the real test images; 'real train vs real test' is the floor, the untrained generator the ceiling."
        )
        doc.table(["class", "comparison", "n real", "n other", "FD", "KID"], rows)
    curves = [q["curve"] for _, q in sorted(quality.items()) if q.get("curve")]
    if curves:
        doc.image("gan_quality_curve.png", plots.quality_curves(curves, "GAN quality over training"),
                  f"KID x1000 of each epoch's {curves[0]['n_fake']} fixed-noise samples against the real "
                  f"{curves[0]['split']} images of the class (epoch 0 = untrained); dashed: {curves[0]['n_fake']} real "
                  "train images against the same reference.")


def _ci(row: dict[str, Any], name: str) -> str:
    """A "value [low, high]" cell from a row with name, name_ci_low and name_ci_high."""
    return f"{row[name]:.3f} [{row[f'{name}_ci_low']:.3f}, {row[f'{name}_ci_high']:.3f}]"


def run_label(run: str) -> str:
    """The study's run names are task-label-source; the label is the model, plus "-robust" for augmented detectors.

    A run retrained on new inputs is task-label-source-inputs-<digest> (cxr_ray/data/fingerprint.py): same label.
    """
    parts = re.sub(rf"{INPUTS_SUFFIX}[0-9a-f]{{8}}$", "", run).split("-")
    return "-".join(parts[1:-1]) if len(parts) > 2 else run


def _test_rows(train: dict[str, Any], task: str, source: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for name, run in sorted(train.items()):
        parts = name.split("-")
        if parts[0] != task or (source and not name.endswith(f"-{source}")):
            continue
        rows.append({"label": run_label(name), "run": name, **run["test"]})
    return rows


def _classifier_section(doc: Doc, train: dict[str, Any], s3: S3Settings | None) -> None:
    doc.heading("Pneumonia classifiers (trained on real images, real test split)")
    rows = _test_rows(train, "pneumonia", "real")
    if not rows:
        doc.para("No classifier runs recorded.")
        return
    doc.table(
        ["model", "accuracy [95% CI]", "AUC [95% CI]", "sensitivity", "specificity", "n"],
        [[r["label"], _ci(r, "accuracy"),
          _ci(r, "auc"), r["sensitivity"], r["specificity"], r["n"]]
         for r in rows],
    )
    doc.para("Published anchors on this test split: " + "; ".join(f"{a}: accuracy {acc:.3f}, AUC {auc:.3f}" for a, acc, auc in plots.PUBLISHED_ANCHORS) + ".")
    doc.image("classifier_auc.png", plots.metric_bars(rows, "auc", "Test AUC with 95% bootstrap CI"),
              "Test AUC of each classifier (threshold-free) with 95% bootstrap intervals, beside the published anchors; runs "
              + ", ".join(r["run"] for r in rows) + ".")
    doc.image("classifier_accuracy.png", plots.metric_bars(rows, "accuracy", "Test accuracy at the val-chosen threshold"),
              "Test accuracy at the threshold chosen on validation, with 95% bootstrap intervals.")


def _transfer_section(doc: Doc, layout: StudyLayout, s3: S3Settings | None) -> None:
    from cxr_ray.transfer import MARKDOWN_FILE, MATRIX_NAME

    doc.heading("Transfer: trained on real or fake, tested on real or fake")
    matrix = _table_or_say(doc, storage.join(storage.published(layout.transfer, s3), f"{MATRIX_NAME}.parquet"), s3, "No transfer matrix found.")
    if matrix is None:
        return
    rows = [r for r in matrix.to_pylist() if r["metric"] == "accuracy"]
    models = sorted({r["model"] for r in rows})
    cols = [("real", "real_test"), ("real", "fake_test"), ("fake", "real_test"), ("fake", "fake_test")]
    values = np.full((len(models), len(cols)), np.nan)
    for r in rows:
        key = (r["train_source"], r["eval_set"])
        if key in cols:
            values[models.index(r["model"]), cols.index(key)] = r["value"]
    doc.image("transfer.png", plots.heatmap(values, models, [f"train {a}\ntest {b.split('_')[0]}" for a, b in cols],
                                            "Accuracy, pneumonia classifiers"),
              "Transfer matrix: accuracy of each architecture trained on real or fake images, tested on the real test split and on "
              f"held-out fakes ({layout.transfer}).")
    text_uri = storage.join(storage.published(layout.transfer, s3), MARKDOWN_FILE)
    if storage.exists(text_uri, s3):
        text = storage.read_bytes(text_uri, s3).decode()
        # Its own top heading is this section's; sub-headings go one level below ours.
        lines = [("#" + line if line.startswith("##") else line) for line in text.splitlines() if not line.startswith("# ")]
        doc.markdown("\n".join(lines))


def _detector_section(doc: Doc, train: dict[str, Any], s3: S3Settings | None) -> None:
    from cxr_ray.metrics import roc_curve

    doc.heading("Deepfake detectors (real test split vs held-out fakes)")
    rows = _test_rows(train, "deepfake")
    if not rows:
        doc.para("No detector runs recorded.")
        return
    curves = {}
    for r in rows:
        preds = _read_parquet(storage.join(train[r["run"]]["run_dir"], TEST_PREDICTIONS_FILE), s3)
        if preds is not None:
            y = np.asarray(preds.column("target").to_pylist())
            s = np.asarray(preds.column("score").to_pylist())
            fpr, tpr, _ = roc_curve(y, s)
            curves[r["label"]] = (fpr, tpr, r["auc"])
    if curves:
        doc.image("detector_roc.png", plots.roc_curves(curves, "Detector ROC, real test vs held-out fakes"),
                  "ROC curves of the deepfake detectors on the real test split against fakes from held-out seeds.")
    doc.table(["detector", "AUC [95% CI]", "accuracy", "sensitivity (fake caught)", "specificity (real passed)"],
              [[r["label"], _ci(r, "auc"), r["accuracy"], r["sensitivity"], r["specificity"]] for r in rows])


def _robustness_section(doc: Doc, layout: StudyLayout, s3: S3Settings | None) -> None:
    from cxr_ray.scoring import METRICS_NAME

    doc.heading("Robustness of the detectors (same perturbation on both classes)")
    uri = storage.join(storage.published(layout.evaluate, s3), f"{METRICS_NAME}.parquet")
    metrics = _table_or_say(doc, uri, s3, "No cross-evaluation table found.")
    if metrics is None:
        return
    rows = [r for r in metrics.to_pylist() if r["task"] == "deepfake" and r["metric"] == "auc" and r["eval_set"] == ARCHIVE_SET]
    if not rows:
        doc.para("No detector rows in the cross-evaluation table.")
        return
    perturbations = list(dict.fromkeys(r["perturbation"] for r in rows))
    models = sorted({run_label(r["run"]) for r in rows})
    table = {(run_label(r["run"]), r["perturbation"]): r["value"] for r in rows}
    doc.para("Detector AUC on real test vs held-out archive-format fakes, each column one perturbation applied to both classes; "
             "'-robust' detectors were trained with random blur/JPEG and window/level augmentation "
             f"({storage.join(layout.evaluate, METRICS_NAME + '.csv')} has intervals and every other metric).")
    doc.table(["detector", *perturbations], [[m, *[table.get((m, p), float("nan")) for p in perturbations]] for m in models])


def _tune_section(doc: Doc, tune: dict[str, Any]) -> None:
    doc.heading("Hyperparameter search (Ray Tune, ASHA, validation AUC)")
    if not tune:
        doc.para("No search recorded.")
        return
    doc.table(
        ["model", "trials", "best val AUC", "lr", "weight decay", "batch", "aug", "epochs"],
        [[m, t["trials"], t["best_val_auc"], f"{t['best_config']['lr']:.2e}", f"{t['best_config']['weight_decay']:.1e}",
          t["best_config"]["batch_size"], t["best_config"]["aug_strength"], t["best_config"]["epochs"]] for m, t in sorted(tune.items())],
    )


def _timing_section(doc: Doc, manifest: dict[str, Any]) -> None:
    doc.heading("Time per stage")
    names = sorted((n for n in manifest if n != TIMELINE), key=lambda n: STAGES.index(n) if n in STAGES else len(STAGES))
    seconds = [manifest[name].get("seconds") for name in names]
    rows = [[name, manifest[name].get("status"), f"{sec:.0f}" if sec is not None else "-"] for name, sec in zip(names, seconds)]
    rows.append(["total", "", f"{sum(sec for sec in seconds if sec is not None):.0f}"])
    doc.table(["stage", "status", "seconds"], rows)
    tl = manifest.get(TIMELINE, {}).get("outputs", {})
    trainings = tl.get("rows", [])
    if trainings:
        busy = sum(r["end"] - r["start"] for r in trainings)
        span = max(r["end"] for r in trainings) - min(r["start"] for r in trainings)
        doc.para(
            f"{len(trainings)} trainings/searches took {busy:.0f} s of training time in {span:.0f} s of wall time "
            f"(up to {tl.get('max_parallel')} at once), an overlap of {busy / span if span else math.nan:.2f}x. "
            "Trainings that share a cluster slow each other down, so the speed-up over running them one after "
            "another is measured by re-running with --sequential (docs/performance.md)."
        )
        doc.image("timeline.png", plots.timeline(trainings, "Start and end of every training in this study"),
                  "Training timeline: overlapping bars ran at the same time on the cluster.")
