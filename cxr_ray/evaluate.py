"""Cross-evaluation on Ray Data: every finished model run on every evaluation set, clean and perturbed.

Finished classifier/detector runs are found as `{runs root}/*/test_metrics.json`
and scored by `cxr_ray.scoring` on the test splits of the real and fake
tables, once per perturbation. The metrics (patient-bootstrap intervals, at
the operating points each run fixed on its validation split) go into one tidy
table, with the frequency baseline's rows when there are fakes; paired
differences between detectors go into a second one.

Evaluation sets: `real_test` and `fake_test` for pneumonia models (target:
the class; a fake's class is the class its GAN was trained on);
`real+fake_test` (the `fakes` table), `real+raw_fake_test` (the `raw_fakes`
table) and `benign_real` (the `benign` table's re-processed test reals, their
condition as the perturbation) for deepfake detectors (target: fake). The
benign table's re-processed validation reals are scored too, only to fix each
detector's benign-robust 1% point (`fpr_0.01_benign`,
cxr_ray.scoring.with_benign_robust_points), at which every set is then scored.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.perturb import DEFAULT_PERTURBATIONS, check_perturbations
from cxr_ray.scoring import (
    BENIGN_TABLE,
    METRICS_NAME,
    PREDICTIONS_NAME,
    ModelRun,
    ScoringConfig,
    check_inputs,
    differences_table,
    load_runs,
    metrics_table,
    rows_to_table,
    score_runs,
    with_benign_robust_points,
    write_output_folder,
)
from cxr_ray.scoring.pipeline import CONDITION
from cxr_ray.storage import S3Settings

FREQ_BASELINE_FILE = "freq_baseline.json"
DIFFERENCES_NAME = "detector_differences"


@dataclass(frozen=True)
class EvaluateConfig(ScoringConfig):
    """Which runs to score on which tables, with which perturbations, and where the table goes."""

    perturbations: tuple[str, ...] = DEFAULT_PERTURBATIONS
    freq_baseline: bool = True  # also fit and score the frequency baseline (needs fakes)
    raw_fakes: str | None = None  # fakes as the generator wrote them (eval set real+raw_fake_test)
    benign: str | None = None  # re-processed reals (cxr_ray.benign; eval set benign_real)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "perturbations", check_perturbations(tuple(self.perturbations)))

    def tagged_tables(self) -> dict[str, str]:
        extra = {tag: uri for tag, uri in (("raw_fakes", self.raw_fakes), (BENIGN_TABLE, self.benign)) if uri}
        return {**super().tagged_tables(), **extra}


def run_evaluate(
    cfg: EvaluateConfig,
    *,
    s3: S3Settings | None = None,
    log: Callable[[str], None] = print,
    address: str | None = None,
) -> dict[str, Any]:
    """Score every run on every evaluation set and perturbation; write metrics (Parquet + CSV) and predictions."""
    from cxr_ray.runtime import init_ray

    s3 = s3 or S3Settings.from_env()
    t0 = time.perf_counter()
    cfg.check_output(s3)
    runs = load_runs(cfg.runs, s3)
    detectors = [r.run for r in runs if r.task == "deepfake"]
    if detectors and not cfg.fakes:
        raise ConfigError(f"detector runs ({', '.join(detectors)}) need a fake table (--fakes)")
    if cfg.benign:
        check_benign_table(cfg.benign, s3)
    resolution = check_inputs(cfg.tables(), runs, s3)
    init_ray(address)
    log(
        f"evaluate: {len(runs)} run(s) x {len(cfg.perturbations)} perturbation(s) on the test splits of "
        f"{', '.join(cfg.tables())} -> {cfg.dest}"
    )
    t_score = time.perf_counter()
    predictions = score_runs(
        runs, cfg.tagged_tables(), cfg.perturbations, s3, seed=cfg.seed, batch_size=cfg.batch_size, max_actors=cfg.max_actors,
        resources=cfg.resources,
    )
    score_seconds = time.perf_counter() - t_score
    runs = with_benign_robust_points(predictions, runs)
    table, texts = with_freq_baseline(cfg, metrics_table(predictions, runs, cfg.n_boot, cfg.seed), s3)
    differences = differences_table(predictions, runs, cfg.n_boot, cfg.seed)
    summary = evaluate_summary(cfg, runs, resolution, table, predictions, score_seconds, time.perf_counter() - t0)
    write_output_folder(
        cfg.dest,
        {METRICS_NAME: table, DIFFERENCES_NAME: differences, PREDICTIONS_NAME: predictions},
        summary,
        s3,
        cfg.overwrite,
        texts=texts,
        csv=(METRICS_NAME, DIFFERENCES_NAME),
    )
    return summary


def check_benign_table(uri: str, s3: S3Settings) -> None:
    """The benign table carries the `condition` column its rows are scored under (ConfigError naming it otherwise)."""
    import pyarrow.dataset as pads

    from cxr_ray.data.datasets import images_uri, require_complete

    fs, path = storage.resolve(images_uri(require_complete(uri, s3)), s3)
    try:
        names = pads.dataset(path, filesystem=fs, format="parquet").schema.names
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{uri}: unreadable benign table ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if CONDITION not in names:
        raise ConfigError(f"{uri}: not a benign table (no `{CONDITION}` column; make one with `cxr-ray benign`)")


def with_freq_baseline(cfg: EvaluateConfig, table: pa.Table, s3: S3Settings) -> tuple[pa.Table, dict[str, str]]:
    """The metrics table with the frequency baseline's rows appended, and its report as a text file (when asked for)."""
    if not (cfg.freq_baseline and cfg.fakes):
        return table, {}
    from cxr_ray.freq_baseline import run_freq_baseline

    baseline = run_freq_baseline(cfg.real, cfg.fakes, s3, perturbations=cfg.perturbations, n_boot=cfg.n_boot, seed=cfg.seed)
    report = {k: v for k, v in baseline.items() if k != "rows"}
    text = json.dumps(report, indent=2, sort_keys=True, default=str) + "\n"
    return pa.concat_tables([table, rows_to_table(baseline["rows"])]), {FREQ_BASELINE_FILE: text}


def evaluate_summary(
    cfg: EvaluateConfig,
    runs: list[ModelRun],
    resolution: int,
    table: pa.Table,
    predictions: pa.Table,
    score_seconds: float,
    seconds: float,
) -> dict[str, Any]:
    scored = predictions.num_rows
    return {
        "dest": cfg.dest,
        "runs": [r.__dict__ for r in runs],
        "tables": cfg.tables(),
        "tagged_tables": cfg.tagged_tables(),
        "resolution": resolution,
        "perturbations": list(cfg.perturbations),
        "n_boot": cfg.n_boot,
        "metric_rows": table.num_rows,
        "scores": scored,
        "score_seconds": round(score_seconds, 3),
        "scores_per_second": round(scored / score_seconds, 1) if score_seconds > 0 else None,
        "seconds": round(seconds, 3),
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"evaluate: {len(summary['runs'])} run(s), {len(summary['perturbations'])} perturbation(s), "
        f"{summary['scores']} scores ({summary['scores_per_second']} /s) -> {summary['dest']}",
        f"  metrics: {summary['metric_rows']} rows in {storage.join(summary['dest'], METRICS_NAME + '.parquet')} (and .csv)",
        f"  detector differences: {storage.join(summary['dest'], DIFFERENCES_NAME + '.parquet')} (and .csv)",
    ]
    return "\n".join(lines)
