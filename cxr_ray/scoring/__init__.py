"""The scoring library: finished model runs scored on test images with Ray Data, as tidy metric tables.

The evaluate, transfer and scan jobs and the frequency baseline are built on it:

- `runs`: finding finished classifier/detector runs and reading them (`ModelRun`, `load_runs`).
- `pipeline`: the Ray Data pipeline: test rows, perturbed copies, an actor pool of
  `ModelScorer`s (`score_runs`).
- `tables`: per-image scores -> metric rows at each run's val-chosen operating points, with patient-bootstrap
  intervals (`metrics_table`; `with_benign_robust_points` adds each detector's benign-robust 1% point), and paired differences between detectors (`differences_table`).
- `output`: the published output folder (`write_output_folder`).
- `inputs`: what every scoring job is given (`ScoringConfig`) and `check_inputs`.
"""

from cxr_ray.scoring.inputs import ScoringConfig, check_inputs
from cxr_ray.scoring.output import METRICS_NAME, PREDICTIONS_NAME, table_to_csv, write_output_folder
from cxr_ray.scoring.pipeline import (
    BENIGN_TABLE,
    IMAGE_COLUMNS,
    ModelScorer,
    collect,
    eval_dataset,
    expand_perturbations,
    keep_test_rows,
    score_runs,
)
from cxr_ray.scoring.runs import ModelRun, checkpoint_state_uri, discover_runs, is_finished_run, load_run, load_runs
from cxr_ray.scoring.tables import (
    BENIGN_METRICS,
    BENIGN_TEST,
    DETECTION_TEST,
    DETECTOR_METRICS,
    DETECTOR_POINT_METRICS,
    DIFFERENCE_COLUMNS,
    FAKE_TEST,
    METRIC_COLUMNS,
    PNEUMONIA_METRICS,
    RAW_DETECTION_TEST,
    REAL_TEST,
    differences_table,
    eval_sets_for,
    metric_rows,
    metrics_table,
    rows_to_table,
    targets_for,
    with_benign_robust_points,
)

__all__ = [
    "BENIGN_METRICS",
    "BENIGN_TABLE",
    "BENIGN_TEST",
    "DETECTION_TEST",
    "DETECTOR_METRICS",
    "DETECTOR_POINT_METRICS",
    "DIFFERENCE_COLUMNS",
    "FAKE_TEST",
    "IMAGE_COLUMNS",
    "METRICS_NAME",
    "METRIC_COLUMNS",
    "PNEUMONIA_METRICS",
    "PREDICTIONS_NAME",
    "RAW_DETECTION_TEST",
    "REAL_TEST",
    "ModelRun",
    "ModelScorer",
    "ScoringConfig",
    "check_inputs",
    "checkpoint_state_uri",
    "collect",
    "differences_table",
    "discover_runs",
    "eval_dataset",
    "eval_sets_for",
    "expand_perturbations",
    "is_finished_run",
    "keep_test_rows",
    "load_run",
    "load_runs",
    "metric_rows",
    "metrics_table",
    "rows_to_table",
    "score_runs",
    "table_to_csv",
    "targets_for",
    "with_benign_robust_points",
    "write_output_folder",
]
