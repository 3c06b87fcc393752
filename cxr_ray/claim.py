"""The seed's transfer claim, tested as written: both readings, each against a real control matched in size.

The seed study wrote two sentences that point in opposite directions:

- Reading A, its result: a model trained on 500 DCGAN fakes scores about 50%.
  Tested as: pneumonia models trained on fakes (N per class, the runs'
  `train_per_class`) against controls trained on N real images per class
  (same model, seed, epochs, batch size and workers, hence the same optimiser
  steps), all scored on the REAL test split: AUC (threshold-free) and accuracy
  at each run's val-chosen threshold, and the difference fake-trained minus control.
- Reading B, its hypothesis: accuracy drops when learning from originals is
  transferred to deepfakes. Tested as: the real-trained controls scored on the
  held-out FAKE test split against the real test split: AUC(fakes) - AUC(real test).

Intervals (95%, percentile bootstrap, `n_boot` replicates, patients resampled
within their class by `metrics.patient_weights`):

- Reading A: every run, both arms and every seed, sees the same draw of real
  test patients in a replicate. A seed's difference is then the paired bootstrap
  of two models on the same images (the numbers of `metrics.paired_difference_ci`),
  and the mean over seeds is taken inside each replicate,
  mean_i [AUC(fake-trained_i) - AUC(control_i)], so its interval is that of the
  seed-averaged difference. (`paired_difference_ci` on seed-averaged scores
  would measure an ensemble, a different model; separate per-seed intervals
  would ignore that the seeds share their test images.)
- Reading B: the two test sets are resampled independently (each fake its own
  patient, reals by patient), with the same fake draws and the same real draws
  for every seed (per seed, the numbers of `metrics.difference_ci_independent`).
- The intervals hold the trained models fixed: they measure the test sample's
  uncertainty, not seed-to-seed training variation (three seeds cannot
  estimate it). The per-seed rows show that variation, and a verdict also
  requires every seed's difference to point the claimed way.

Verdicts: A is reproduced when the interval of the mean AUC difference lies
below 0, every seed agrees, and the fake-trained level is "about 50%" (the
interval of its mean AUC or of its mean accuracy contains 0.5). B is
reproduced when the interval of AUC(fakes) - AUC(real test) lies below 0 and
every seed agrees. Anything else is "not reproduced", with the numbers.

Output at `dest`: claim.json (everything: runs, seeds, N per class, epochs,
optimiser steps, numbers, verdicts), claim.parquet (CLAIM_COLUMNS), claim.md,
summary.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.storage import S3Settings

READING_A = "A model trained on 500 DCGAN fakes scores about 50%."
READING_B = "Accuracy drops when learning from originals is transferred to deepfakes."
CLAIM_NAME = "claim"
CLAIM_JSON, CLAIM_MARKDOWN = "claim.json", "claim.md"
CLAIM_COLUMNS = ("reading", "model", "seed", "run", "arm", "eval_set", "metric", "value", "ci_low", "ci_high", "n")
REAL_TEST, FAKE_TEST = "real_test", "fake_test"
# Training settings a fake-trained run and its control must share (besides sources and N per class).
MATCHED_FIELDS = (
    "model", "seed", "train_per_class", "epochs", "batch_size", "num_workers", "lr", "weight_decay",
    "aug_strength", "robust_aug", "label_smoothing", "pretrained",
)
# ... and every seed of one model (the mean over seeds is over one design).
SHARED_FIELDS = ("train_per_class", "epochs", "batch_size", "num_workers")


@dataclass(frozen=True)
class ClaimConfig:
    """Pairs of finished pneumonia runs (fake_runs[i] with its real control real_runs[i]) and the tables to score."""

    fake_runs: tuple[str, ...]  # run dirs trained on fakes, one per seed
    real_runs: tuple[str, ...]  # their controls, trained on real images (same order)
    real: str  # ingested real table: its test split
    fakes: str  # generated fake table: its held-out test split
    dest: str
    n_boot: int = 1000
    seed: int = 0  # of the bootstrap
    overwrite: bool = False
    batch_size: int = 256
    max_actors: int | None = None
    resources: dict | None = None  # what each actor asks of a node, and the pool's bounds (cxr_ray.resources)

    def __post_init__(self) -> None:
        from cxr_ray.config import at_least, check_fields

        check_fields(self)
        if not self.fake_runs:
            raise ConfigError("fake_runs: give at least one run trained on fakes")
        if len(self.fake_runs) != len(self.real_runs):
            raise ConfigError(
                f"fake_runs has {len(self.fake_runs)} runs but real_runs has {len(self.real_runs)}: "
                "give one real control per fake-trained run, in the same order"
            )
        at_least(self, 1, "n_boot", "batch_size", "max_actors")
        at_least(self, 0, "seed")

    def tables(self) -> list[str]:
        return [self.real, self.fakes]

    def check_output(self, s3: S3Settings | None) -> None:
        """StorageError when dest overlaps an input, or exists without `overwrite`; nothing is written."""
        storage.check_separate(self.dest, list(self.fake_runs) + list(self.real_runs), "runs folder")
        storage.check_separate(self.dest, [self.real], "real table")
        storage.check_separate(self.dest, [self.fakes], "fake table")
        storage.check_destination(self.dest, s3, self.overwrite)


# ---------------------------------------------------------------- pairing


@dataclass(frozen=True)
class RunRecord:
    """A finished run's directory, its test_metrics.json and the config it was trained with."""

    run_dir: str
    metrics: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.metrics.get("config") or {})

    @property
    def name(self) -> str:
        return str(self.metrics.get("run") or self.run_dir.rstrip("/").split("/")[-1])


def read_record(run_dir: str, s3: S3Settings | None) -> RunRecord:
    from cxr_ray.filenames import TEST_METRICS_FILE

    uri = storage.join(run_dir, TEST_METRICS_FILE)
    if not storage.exists(uri, s3):
        raise ConfigError(f"{run_dir}: not a finished run (no {TEST_METRICS_FILE})")
    metrics = storage.read_json(uri, s3)
    if not isinstance(metrics.get("config"), dict):
        raise ConfigError(f"{uri}: no training config recorded")
    return RunRecord(run_dir, metrics)


def check_pair(fake: RunRecord, real: RunRecord) -> None:
    """ConfigError naming the run unless `fake` (trained on fakes) and `real` (its control) form a matched pair."""
    for record, source in ((fake, "fake"), (real, "real")):
        cfg = record.config
        if cfg.get("task", "pneumonia") != "pneumonia":
            raise ConfigError(f"{record.run_dir}: a {cfg.get('task')} run; the claim compares pneumonia classifiers")
        if cfg.get("source", "real") != source:
            raise ConfigError(f"{record.run_dir}: trained on source {cfg.get('source', 'real')!r}, expected {source!r} here")
        if cfg.get("train_per_class") is None:
            raise ConfigError(
                f"{record.run_dir}: trained without train_per_class; the control must match the fake-trained "
                "run in images per class, so train both with the same --train-per-class"
            )
    for key in MATCHED_FIELDS:
        if fake.config.get(key) != real.config.get(key):
            raise ConfigError(
                f"{real.run_dir}: {key}={real.config.get(key)!r} but its fake-trained pair {fake.run_dir} has "
                f"{key}={fake.config.get(key)!r}; a control differs from its pair only in the source"
            )


def check_pairs(pairs: Sequence[tuple[RunRecord, RunRecord]]) -> None:
    """Every pair matched; per model, distinct seeds and one design (N per class, epochs, batch, workers)."""
    first: dict[str, RunRecord] = {}
    seeds: dict[tuple[str, int], str] = {}
    for fake, real in pairs:
        check_pair(fake, real)
        model, seed = fake.config["model"], int(fake.config["seed"])
        if (model, seed) in seeds:
            raise ConfigError(f"{fake.run_dir}: seed {seed} of {model} is already given by {seeds[(model, seed)]}")
        seeds[(model, seed)] = fake.run_dir
        ref = first.setdefault(model, fake)
        for key in SHARED_FIELDS:
            if fake.config.get(key) != ref.config.get(key):
                raise ConfigError(
                    f"{fake.run_dir}: {key}={fake.config.get(key)!r} but {ref.run_dir} ({model} too) has "
                    f"{ref.config.get(key)!r}; the seeds of one model must share the design"
                )


def design(fake: RunRecord, real: RunRecord, s3: S3Settings | None) -> dict[str, Any]:
    """One pair's training design: N per class, the images each run drew, epochs, optimiser steps, best epochs."""
    from cxr_ray.data.datasets import DatasetError, TaskData, train_subset
    from cxr_ray.storage import StorageError

    cfg = fake.config
    n, seed = int(cfg["train_per_class"]), int(cfg["seed"])
    counts = {}
    for record, source in ((fake, "fake"), (real, "real")):
        rc = record.config
        data = TaskData(task="pneumonia", real=rc.get("data"), fake=rc.get("fakes"), source=source)
        try:
            counts[source] = sum(train_subset(data, n, seed, s3)[1].values())
        except (DatasetError, StorageError, ValueError):
            counts[source] = None  # the training table moved: the count is not known here
    workers, batch = int(cfg.get("num_workers", 1)), int(cfg["batch_size"])
    # A worker's shard is ~1/workers of the images; its steps per epoch are floor(shard / batch) (at least 1).
    steps = {k: (max(1, (v // workers) // batch) if v is not None else None) for k, v in counts.items()}
    return {
        "model": cfg["model"], "seed": seed, "fake_run": fake.name, "real_run": real.name,
        "fake_run_dir": fake.run_dir, "real_run_dir": real.run_dir, "train_per_class": n,
        "train_images": counts, "epochs": int(cfg["epochs"]), "batch_size": batch, "num_workers": workers,
        "steps_per_epoch": steps,
        "total_steps": {k: (v * int(cfg["epochs"]) if v is not None else None) for k, v in steps.items()},
        "best_epoch": {"fake": fake.metrics.get("best_epoch"), "real": real.metrics.get("best_epoch")},
        "matched_size": counts["fake"] is not None and counts["fake"] == counts["real"],
    }


# ---------------------------------------------------------------- statistics (pure numpy)


@dataclass(frozen=True)
class EvalSet:
    """One test set scored by k runs: targets, patient ids, scores (k, N) and each run's val threshold (k,)."""

    y: np.ndarray
    groups: np.ndarray
    scores: np.ndarray
    thresholds: np.ndarray


def replicates(es: EvalSet, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Per run: point values (k,) and bootstrap replicates (k, n_boot) of auc and accuracy, all runs on `weights`."""
    from cxr_ray import metrics as M

    out: dict[str, Any] = {"auc": [], "accuracy": [], "auc_rep": [], "accuracy_rep": []}
    for s, t in zip(es.scores, es.thresholds):
        out["auc"].append(M.roc_auc(es.y, s))
        out["accuracy"].append(M.threshold_metrics(es.y, s, float(t))["accuracy"])
        reps = M.summary_replicates(es.y.astype(np.int64), np.asarray(s, np.float64), float(t), weights)
        out["auc_rep"].append(reps["auc"])
        out["accuracy_rep"].append(reps["accuracy"])
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def interval(reps: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    from cxr_ray.metrics import percentile_interval

    return percentile_interval(np.asarray(reps, np.float64), alpha)


def stat_rows(point: np.ndarray, reps: np.ndarray, base: dict[str, Any], seeds: Sequence[int], runs: Sequence[str]) -> list[dict]:
    """One row per seed (value, interval) and one for the mean over seeds (mean taken inside each replicate)."""
    rows = []
    for i, (seed, run) in enumerate(zip(seeds, runs)):
        low, high = interval(reps[i])
        rows.append({**base, "seed": int(seed), "run": run, "value": float(point[i]), "ci_low": low, "ci_high": high})
    low, high = interval(reps.mean(axis=0))
    rows.append({**base, "seed": None, "run": "", "value": float(point.mean()), "ci_low": low, "ci_high": high})
    return rows


def reading_a(
    fake_trained: EvalSet, control: EvalSet, seeds: Sequence[int], runs: tuple[Sequence[str], Sequence[str]],
    model: str, n_boot: int, seed: int,
) -> list[dict[str, Any]]:
    """Rows of reading A: both arms on the real test split, and fake-trained minus control, on shared patient draws."""
    from cxr_ray.metrics import patient_weights

    if not (np.array_equal(fake_trained.y, control.y) and np.array_equal(fake_trained.groups, control.groups)):
        raise ConfigError(f"{', '.join(runs[0])} and their controls scored other real test images: no paired comparison")
    weights = patient_weights(fake_trained.y, fake_trained.groups, n_boot, seed)
    a, b = replicates(fake_trained, weights), replicates(control, weights)
    n = int(fake_trained.y.size)
    base = {"reading": "A", "model": model, "eval_set": REAL_TEST, "n": n}
    diff_runs = [f"{x} - {y}" for x, y in zip(*runs)]
    rows = []
    for metric in ("auc", "accuracy"):
        rows += stat_rows(a[metric], a[f"{metric}_rep"], {**base, "arm": "fake_trained", "metric": metric}, seeds, runs[0])
        rows += stat_rows(b[metric], b[f"{metric}_rep"], {**base, "arm": "control", "metric": metric}, seeds, runs[1])
        rows += stat_rows(
            a[metric] - b[metric], a[f"{metric}_rep"] - b[f"{metric}_rep"],
            {**base, "arm": "difference", "metric": f"{metric}_difference"}, seeds, diff_runs,
        )
    return rows


def reading_b(
    on_fakes: EvalSet, on_real: EvalSet, seeds: Sequence[int], runs: Sequence[str], model: str, n_boot: int, seed: int
) -> list[dict[str, Any]]:
    """Rows of reading B: the controls on fakes and on the real test split, and AUC(fakes) - AUC(real test).

    The two sets are resampled independently, on the streams `metrics.difference_ci_independent` uses.
    """
    from cxr_ray.metrics import patient_weights

    seed_fake, seed_real = (int(x) for x in np.random.SeedSequence(seed).generate_state(2))
    f = replicates(on_fakes, patient_weights(on_fakes.y, on_fakes.groups, n_boot, seed_fake))
    r = replicates(on_real, patient_weights(on_real.y, on_real.groups, n_boot, seed_real))
    base = {"reading": "B", "model": model, "arm": "control"}
    rows = []
    for metric in ("auc", "accuracy"):
        for es, rep, eval_set in ((on_fakes, f, FAKE_TEST), (on_real, r, REAL_TEST)):
            meta = {**base, "eval_set": eval_set, "metric": metric, "n": int(es.y.size)}
            rows += stat_rows(rep[metric], rep[f"{metric}_rep"], meta, seeds, runs)
        meta = {**base, "arm": "difference", "eval_set": f"{FAKE_TEST} - {REAL_TEST}", "metric": f"{metric}_difference",
                "n": int(on_fakes.y.size + on_real.y.size)}
        rows += stat_rows(f[metric] - r[metric], f[f"{metric}_rep"] - r[f"{metric}_rep"], meta, seeds, runs)
    return rows


# ---------------------------------------------------------------- verdicts


def pick(rows: Sequence[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def fmt(row: dict[str, Any]) -> str:
    return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def contains_half(row: dict[str, Any]) -> bool:
    return row["ci_low"] <= 0.5 <= row["ci_high"]


def direction(rows: Sequence[dict[str, Any]], **where: Any) -> tuple[dict[str, Any], bool, int, int]:
    """The mean-over-seeds row, whether its interval lies below 0, and how many of the seeds' values are below 0."""
    mean = pick(rows, seed=None, **where)[0]
    seeds = [r for r in pick(rows, **where) if r["seed"] is not None]
    return mean, bool(mean["ci_high"] < 0), sum(r["value"] < 0 for r in seeds), len(seeds)


def verdict_a(rows: Sequence[dict[str, Any]], model: str, per_class: int) -> dict[str, Any]:
    """Reading A: fake-trained clearly below its control, every seed agreeing, at about 50% (AUC or accuracy)."""
    diff, below, n_below, k = direction(rows, reading="A", model=model, metric="auc_difference")
    auc = pick(rows, reading="A", model=model, arm="fake_trained", metric="auc", seed=None)[0]
    acc = pick(rows, reading="A", model=model, arm="fake_trained", metric="accuracy", seed=None)[0]
    control = pick(rows, reading="A", model=model, arm="control", metric="auc", seed=None)[0]
    near_half = [name for name, row in (("AUC", auc), ("accuracy", acc)) if contains_half(row)]
    reproduced = below and n_below == k and bool(near_half)
    numbers = (
        f"trained on {per_class} fakes per class, {model} scores AUC {fmt(auc)} and accuracy {fmt(acc)} on the real "
        f"test split; its control trained on {per_class} real images per class scores AUC {fmt(control)}; "
        f"difference {fmt(diff)} ({n_below} of {k} seeds below 0)"
    )
    if reproduced:
        return {"reproduced": True, "sentence": f"Reading A is reproduced for {model}: {numbers}; "
                f"the {' and the '.join(near_half)} interval{'s contain' if len(near_half) > 1 else ' contains'} 0.5."}
    reasons = []
    if not below:
        reasons.append("the difference's interval does not lie below 0")
    if n_below < k:
        reasons.append("not every seed is below its control")
    if not near_half:
        reasons.append("neither the AUC nor the accuracy interval contains 0.5")
    return {"reproduced": False, "sentence": f"Reading A is not reproduced for {model}: {numbers}; {'; '.join(reasons)}."}


def verdict_b(rows: Sequence[dict[str, Any]], model: str) -> dict[str, Any]:
    """Reading B: the real-trained controls clearly worse on fakes than on real test images, every seed agreeing."""
    diff, below, n_below, k = direction(rows, reading="B", model=model, metric="auc_difference")
    on_fakes = pick(rows, reading="B", model=model, eval_set=FAKE_TEST, metric="auc", seed=None)[0]
    on_real = pick(rows, reading="B", model=model, eval_set=REAL_TEST, metric="auc", seed=None)[0]
    acc_diff = pick(rows, reading="B", model=model, metric="accuracy_difference", seed=None)[0]
    reproduced = below and n_below == k
    numbers = (
        f"trained on real images, {model} scores AUC {fmt(on_fakes)} on held-out fakes and {fmt(on_real)} on the real "
        f"test split; AUC difference {fmt(diff)} ({n_below} of {k} seeds below 0), accuracy difference {fmt(acc_diff)}"
    )
    if reproduced:
        return {"reproduced": True, "sentence": f"Reading B is reproduced for {model}: {numbers}."}
    reason = "the difference's interval does not lie below 0" if not below else "not every seed drops"
    return {"reproduced": False, "sentence": f"Reading B is not reproduced for {model}: {numbers}; {reason}."}


# ---------------------------------------------------------------- scoring and the driver


def eval_set(predictions: Any, runs: Sequence[Any], source: str) -> EvalSet:
    """The clean test rows of `source` ("real" / "fake") as scored by each of `runs` (ModelRun), aligned by path."""
    import pyarrow.compute as pc

    clean = predictions.filter(pc.and_(pc.equal(predictions.column("perturbation"), "none"),
                                       pc.equal(predictions.column("source"), source)))
    scores, paths, part = [], None, None
    for run in runs:
        part = clean.filter(pc.equal(clean.column("run"), run.run)).sort_by("path")
        mine = part.column("path").to_pylist()
        if not mine:
            raise ConfigError(f"no {source} test rows scored by {run.run_dir}")
        if paths is not None and mine != paths:
            raise ConfigError(f"{run.run_dir}: scored other {source} test images than the other runs")
        paths = mine
        scores.append(np.asarray(part.column("score").to_pylist(), dtype=np.float64))
    y = np.asarray(part.column("label").to_pylist(), dtype=np.int64)
    if "patient_id" in part.column_names:
        groups = np.asarray(part.column("patient_id").to_pylist(), dtype=object)
    else:
        groups = np.asarray(paths, dtype=object)  # no patient ids scored: each image its own patient
    thresholds = np.asarray([run.threshold for run in runs], dtype=np.float64)
    return EvalSet(y=y, groups=groups, scores=np.vstack(scores), thresholds=thresholds)


def model_readings(model: str, pairs: Sequence[tuple[Any, Any]], predictions: Any, cfg: ClaimConfig) -> list[dict[str, Any]]:
    """Reading A and B rows of one model; `pairs` are (fake-trained ModelRun, control ModelRun, seed)."""
    fakes_trained, controls, seeds = [p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]
    names = ([r.run for r in fakes_trained], [r.run for r in controls])
    real_controls = eval_set(predictions, controls, "real")
    rows = reading_a(eval_set(predictions, fakes_trained, "real"), real_controls, seeds, names, model, cfg.n_boot, cfg.seed)
    rows += reading_b(eval_set(predictions, controls, "fake"), real_controls, seeds, names[1], model, cfg.n_boot, cfg.seed)
    return rows


def rows_table(rows: Sequence[dict[str, Any]]) -> Any:
    import pyarrow as pa

    types = {"seed": pa.int64(), "n": pa.int64(), "value": pa.float64(), "ci_low": pa.float64(), "ci_high": pa.float64()}
    schema = pa.schema([(c, types.get(c, pa.string())) for c in CLAIM_COLUMNS])
    return pa.Table.from_pylist([{c: r.get(c) for c in CLAIM_COLUMNS} for r in rows], schema=schema)


def load_pairs(cfg: ClaimConfig, s3: S3Settings | None) -> tuple[list[tuple[RunRecord, RunRecord]], dict[str, Any]]:
    """The checked pairs, and every run as the scorer needs it (ModelRun by run dir; run names must be distinct)."""
    from cxr_ray.scoring import load_run

    pairs = [(read_record(f, s3), read_record(r, s3)) for f, r in zip(cfg.fake_runs, cfg.real_runs)]
    check_pairs(pairs)
    runs = {rec.run_dir: load_run(rec.run_dir, s3) for pair in pairs for rec in pair}
    names: dict[str, str] = {}
    for run in runs.values():
        if run.run in names:
            raise ConfigError(f"{run.run_dir}: the same run name as {names[run.run]} ({run.run}); give each run once")
        names[run.run] = run.run_dir
    return pairs, runs


def run_claim(
    cfg: ClaimConfig,
    *,
    s3: S3Settings | None = None,
    log: Callable[[str], None] = print,
    address: str | None = None,
) -> dict[str, Any]:
    """Score the pairs on the real and fake test splits, test both readings, write claim.json/.parquet/.md."""
    from cxr_ray.runtime import init_ray
    from cxr_ray.scoring import check_inputs, score_runs, write_output_folder

    s3 = s3 or S3Settings.from_env()
    t0 = time.perf_counter()
    cfg.check_output(s3)
    pairs, runs = load_pairs(cfg, s3)
    resolution = check_inputs(cfg.tables(), list(runs.values()), s3)
    designs = [design(fake, real, s3) for fake, real in pairs]
    for d in designs:
        if not d["matched_size"]:
            log(f"claim: warning: {d['fake_run']} drew {d['train_images']['fake']} train images, its control "
                f"{d['real_run']} {d['train_images']['real']}: not matched in size")
    init_ray(address)
    log(f"claim: {len(pairs)} pair(s) on the test splits of {cfg.real} and {cfg.fakes} -> {cfg.dest}")
    predictions = score_runs(list(runs.values()), {"real": cfg.real, "fakes": cfg.fakes}, ("none",), s3, seed=cfg.seed,
                             batch_size=cfg.batch_size, max_actors=cfg.max_actors, resources=cfg.resources)
    rows, verdicts = claim_rows(cfg, pairs, runs, predictions, designs)
    record = {
        "dest": cfg.dest, "real": cfg.real, "fakes": cfg.fakes, "resolution": resolution, "n_boot": cfg.n_boot,
        "bootstrap_seed": cfg.seed, "readings": {"A": READING_A, "B": READING_B}, "pairs": designs,
        "verdicts": verdicts, "rows": rows, "seconds": round(time.perf_counter() - t0, 3),
    }
    summary = {k: record[k] for k in ("dest", "n_boot", "verdicts", "seconds")}
    summary["pairs"] = [{k: d[k] for k in ("model", "seed", "fake_run", "real_run", "train_per_class")} for d in designs]
    texts = {CLAIM_JSON: json.dumps(record, indent=2, default=str) + "\n", CLAIM_MARKDOWN: claim_markdown(record)}
    write_output_folder(cfg.dest, {CLAIM_NAME: rows_table(rows)}, summary, s3, cfg.overwrite, texts=texts)
    for model in verdicts:
        for reading in ("A", "B"):
            log(verdicts[model][reading]["sentence"])
    return summary


def claim_rows(
    cfg: ClaimConfig, pairs: Sequence[tuple[RunRecord, RunRecord]], runs: dict[str, Any], predictions: Any,
    designs: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every model's rows and its two verdicts (model -> {"A": ..., "B": ...})."""
    by_model: dict[str, list[tuple[Any, Any, int]]] = {}
    for fake, real in pairs:
        model = fake.config["model"]
        by_model.setdefault(model, []).append((runs[fake.run_dir], runs[real.run_dir], int(fake.config["seed"])))
    rows: list[dict[str, Any]] = []
    verdicts = {}
    for model, mine in by_model.items():
        model_rows = model_readings(model, mine, predictions, cfg)
        per_class = next(d["train_per_class"] for d in designs if d["model"] == model)
        verdicts[model] = {"A": verdict_a(model_rows, model, per_class), "B": verdict_b(model_rows, model)}
        rows += model_rows
    return rows, verdicts


# ---------------------------------------------------------------- the report


def _cell(rows: Sequence[dict[str, Any]], **where: Any) -> str:
    found = pick(rows, **where)
    return fmt(found[0]) if found else "-"


def _seed_label(seed: int | None) -> str:
    return "mean" if seed is None else str(seed)


def design_table(designs: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | seed | trained on fakes | control (real) | N per class | train images fake / real | epochs | "
        "optimiser steps fake / real | best epoch fake / real |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for d in designs:
        lines.append(
            f"| {d['model']} | {d['seed']} | {d['fake_run']} | {d['real_run']} | {d['train_per_class']} | "
            f"{d['train_images']['fake']} / {d['train_images']['real']} | {d['epochs']} | "
            f"{d['total_steps']['fake']} / {d['total_steps']['real']} | {d['best_epoch']['fake']} / {d['best_epoch']['real']} |"
        )
    return lines


def reading_a_table(rows: Sequence[dict[str, Any]], model: str) -> list[str]:
    lines = [
        "| seed | AUC fake-trained | AUC control | AUC difference | accuracy fake-trained | accuracy control |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    seeds = sorted({r["seed"] for r in pick(rows, reading="A", model=model) if r["seed"] is not None}) + [None]
    for seed in seeds:
        at = {"reading": "A", "model": model, "seed": seed}
        lines.append(
            f"| {_seed_label(seed)} | {_cell(rows, arm='fake_trained', metric='auc', **at)} | "
            f"{_cell(rows, arm='control', metric='auc', **at)} | {_cell(rows, metric='auc_difference', **at)} | "
            f"{_cell(rows, arm='fake_trained', metric='accuracy', **at)} | {_cell(rows, arm='control', metric='accuracy', **at)} |"
        )
    return lines


def reading_b_table(rows: Sequence[dict[str, Any]], model: str) -> list[str]:
    lines = [
        "| seed | AUC on fakes | AUC on real test | AUC difference | accuracy on fakes | accuracy on real test |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    seeds = sorted({r["seed"] for r in pick(rows, reading="B", model=model) if r["seed"] is not None}) + [None]
    for seed in seeds:
        at = {"reading": "B", "model": model, "seed": seed}
        lines.append(
            f"| {_seed_label(seed)} | {_cell(rows, eval_set=FAKE_TEST, metric='auc', **at)} | "
            f"{_cell(rows, eval_set=REAL_TEST, metric='auc', **at)} | {_cell(rows, metric='auc_difference', **at)} | "
            f"{_cell(rows, eval_set=FAKE_TEST, metric='accuracy', **at)} | {_cell(rows, eval_set=REAL_TEST, metric='accuracy', **at)} |"
        )
    return lines


def claim_markdown(record: dict[str, Any]) -> str:
    """The readable report: both readings as the seed wrote them, the design, the numbers, the verdicts."""
    rows, verdicts = record["rows"], record["verdicts"]
    lines = [
        "# The seed's transfer claim, tested as written", "",
        "The seed study's two sentences point in opposite directions; each is tested against a real control "
        "matched in images per class and optimiser steps.", "",
        f"- **Reading A** (its result): \"{READING_A}\" Fake-trained models vs controls trained on the same number "
        "of real images per class, both on the real test split.",
        f"- **Reading B** (its hypothesis): \"{READING_B}\" The real-trained controls on held-out fakes vs on the "
        "real test split.", "",
        "## Design", "", *design_table(record["pairs"]), "",
    ]
    for model in verdicts:
        lines += [f"## {model}", "", "Reading A (on the real test split):", "", *reading_a_table(rows, model), "",
                  verdicts[model]["A"]["sentence"], "", "Reading B (real-trained controls):", "",
                  *reading_b_table(rows, model), "", verdicts[model]["B"]["sentence"], ""]
    lines += ["## What is and is not reproduced", ""]
    for model, v in verdicts.items():
        for reading in ("A", "B"):
            lines.append(f"- {model}, reading {reading}: {'reproduced' if v[reading]['reproduced'] else 'not reproduced'}")
    lines += [
        "", f"95% percentile intervals, {record['n_boot']} bootstrap replicates of the test patients (stratified by "
        "class; each fake its own patient). Reading A: every run sees the same patient draws, so a difference is "
        "paired, and the mean over seeds is taken inside each replicate. Reading B: fakes and real test images are "
        "resampled independently. The intervals hold the trained models fixed (test-sample uncertainty); the "
        "per-seed rows show the spread between seeds, and a verdict needs every seed to agree. Accuracy is at each "
        "run's threshold chosen on its own validation split.", "",
    ]
    return "\n".join(lines)
