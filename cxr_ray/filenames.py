"""File and folder names inside run folders that more than one module reads or writes.

One place for each name, so a writer and its readers can never drift apart.
The ingested table's own names live beside its schema (cxr_ray/data/schema.py);
the study root's layout in cxr_ray/study/layout.py.
"""

STATE_FILE = "state.pt"  # a plain-data checkpoint inside every Ray Train checkpoint folder

# A classifier / detector run (cxr_ray.train.classifier).
TEST_METRICS_FILE = "test_metrics.json"  # written last: its presence means "this run is finished"
TEST_METRICS_TABLE = "test_metrics.parquet"
TEST_PREDICTIONS_FILE = "test_predictions.parquet"
VAL_PREDICTIONS_FILE = "val_predictions.parquet"  # the best checkpoint's val scores: operating points are chosen on them
HISTORY_FILE = "history.json"

# A GAN run (cxr_ray.train.gan).
GAN_SUMMARY_FILE = "gan_summary.json"  # written at the end of a run
GAN_LOSSES_FILE = "losses.json"
GAN_CONFIG_FILE = "gan_config.json"
SAMPLES_DIR = "samples"

# A tamper-model run (cxr_ray.train.tamper_model); its sample grids go to SAMPLES_DIR too.
TAMPER_SUMMARY_FILE = "tamper_summary.json"  # written at the end of a run

# A search (cxr_ray.tune, cxr_ray.tune_gan).
BEST_CONFIG_FILE = "best_config.json"

# Output folders of scoring jobs (evaluate, transfer, scan).
SUMMARY_FILE = "summary.json"
