"""`cxr-ray scan`: score every image under a folder or S3 prefix with a trained deepfake detector.

The file list streams through Ray Data: read + decode tasks (the same
`decode_to_gray` as ingest, at the detector's resolution, so a scanned image
reaches the model exactly as the training images did) feed an actor pool
that loads the detector once per actor. Every file ends up in the result:
with a fake probability and a verdict, or as `unreadable` with the reason.
One bad file never stops a scan.

The verdict's threshold is the one whose false-positive rate on the
detector's validation reals is at most `fpr` (default 1%: a hospital's
operating point, not the Youden point); a detector trained before its val
predictions were recorded falls back to its Youden threshold, and says so.
Given a benign table with re-processed validation reals (`--benign`; a study
root's own by default) the threshold also holds `fpr` under every benign
re-processing (cxr_ray.operating.benign_robust_threshold).

DICOM files are read when pydicom is installed; otherwise they are listed as
unreadable with the reason.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.data.decode import DEFAULT_MAX_PIXELS
from cxr_ray.filenames import STATE_FILE, TEST_METRICS_FILE, VAL_PREDICTIONS_FILE
from cxr_ray.operating import YOUDEN
from cxr_ray.storage import S3Settings

RESULTS_NAME = "results"
VERDICT_FAKE, VERDICT_REAL, VERDICT_UNREADABLE = "fake", "real", "unreadable"
DICOM_SUFFIXES = (".dcm", ".dicom")
NO_PYDICOM = "DICOM support needs pydicom (pip install 'cxr-ray[dicom]')"
DEFAULT_SCAN_FPR = 0.01
RESULT_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size_bytes", pa.int64()),
        ("sha256", pa.string()),
        ("fake_probability", pa.float64()),
        ("verdict", pa.string()),
        ("reason", pa.string()),
        # With a localiser (issue 16; null without one): its probability that the image was edited, its verdict at
        # its own threshold (1% of its val reals), the box its map marks ("x0,y0,x1,y1" in scanned pixels) and, for
        # each image called edited or fake, the overlay PNG's path inside the output folder.
        ("edited_probability", pa.float64()),
        ("edit_verdict", pa.string()),
        ("box", pa.string()),
        ("overlay", pa.string()),
    ]
)
VERDICT_EDITED, VERDICT_UNEDITED = "edited", "unedited"


@dataclass(frozen=True)
class ScanConfig:
    src: str  # folder, S3 prefix or one file
    detector: str  # finished detector run dir (test_metrics.json), a checkpoint dir (state.pt) or a study root
    out: str  # output folder: results.csv, results.parquet, summary.json
    batch_size: int = 256
    max_actors: int | None = None
    resources: dict | None = None  # what each actor asks of a node, and the pool's bounds (cxr_ray.resources)
    progress: bool = True
    overwrite: bool = False
    # Larger images are listed as unreadable, never decoded (= data.decode.DEFAULT_MAX_PIXELS).
    max_pixels: int = 40_000_000
    # Target false-positive rate: the threshold is chosen on the detector's validation reals.
    fpr: float = DEFAULT_SCAN_FPR
    # A benign table (cxr_ray.benign) with re-processed validation reals: the threshold then holds `fpr` under every
    # condition too. None: a study root's own benign table when it has one, else the stored validation reals alone.
    benign: str | None = None
    # A finished localiser run (cxr-ray train-localiser): edited-probability, box and overlays per image.
    localiser: str | None = None

    def __post_init__(self) -> None:
        from cxr_ray.config import at_least, check_fields

        check_fields(self)
        at_least(self, 1, "batch_size", "max_actors")
        at_least(self, 64, "max_pixels")  # 8x8, the smallest image decoded
        if not 0.0 <= float(self.fpr) < 1.0:
            raise ConfigError(f"fpr must be in [0, 1), got {self.fpr}")


@dataclass(frozen=True)
class Detector:
    run: str
    state_uri: str
    model: str
    threshold: float  # the one verdicts use
    resolution: int
    youden_threshold: float = float("nan")  # chosen on val during training
    operating_point: str = YOUDEN  # which point `threshold` is: "fpr_0.01", "fpr_0.01_benign", ... or "youden" (fallback)


def scan_threshold(uri: str, finished: bool, youden: float, fpr: float, s3: S3Settings | None, log: Callable[[str], None]) -> tuple[float, str]:
    """(threshold, operating point) for a target FPR, from the run's val predictions; Youden when it has none."""
    from cxr_ray.operating import point_name, threshold_for_fpr, val_arrays

    val = val_arrays(uri, s3) if finished else None
    if val is None or not (val[0] == 0).any():
        why = ("is a checkpoint folder, not a finished run" if not finished
               else f"has no validation predictions ({VAL_PREDICTIONS_FILE}: trained before they were recorded)"
               if val is None else f"has no real images among its validation predictions ({VAL_PREDICTIONS_FILE})")
        log(f"scan: {uri} {why}; using its Youden threshold {youden:.4f}, not FPR {fpr:g}")
        return youden, YOUDEN
    return threshold_for_fpr(val[0], val[1], fpr), point_name(fpr)


def load_detector(
    uri: str, s3: S3Settings | None, fpr: float = DEFAULT_SCAN_FPR, log: Callable[[str], None] = print
) -> Detector:
    """A finished deepfake run (its best checkpoint), a checkpoint folder, or a study root (the detector its
    generalise stage deployed), with its threshold for `fpr`; refuses pneumonia models."""
    from cxr_ray.checkpoint import CheckpointError
    from cxr_ray.classifier_state import load_classifier_state
    from cxr_ray.data.decode import SUPPORTED_RESOLUTIONS
    from cxr_ray.study.deployed import study_detector
    from cxr_ray.scoring import checkpoint_state_uri, is_finished_run

    deployed = study_detector(uri, s3)
    if deployed:
        log(f"scan: {uri} is a study root; its deployed detector is {deployed}")
        uri = deployed

    finished = is_finished_run(uri, s3)
    if finished:
        recorded = str(storage.read_json(storage.join(uri, TEST_METRICS_FILE), s3).get("checkpoint") or "")
        state_uri = checkpoint_state_uri(uri, recorded, s3)
    elif storage.exists(storage.join(uri, STATE_FILE), s3):
        state_uri = storage.join(uri, STATE_FILE)
    else:
        raise ConfigError(f"{uri}: not a finished detector run ({TEST_METRICS_FILE}) or checkpoint folder ({STATE_FILE})")
    try:
        state = load_classifier_state(state_uri, s3)
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    if state.get("task") != "deepfake":
        raise ConfigError(f"{uri}: not a deepfake detector (task {state.get('task')!r}); train one with --task deepfake")
    resolution = int(state["model_kwargs"]["image_size"])
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise ConfigError(f"{state_uri}: detector resolution {resolution} is not one of {SUPPORTED_RESOLUTIONS}")
    threshold, point = scan_threshold(uri, finished, float(state["threshold"]), fpr, s3, log)
    return Detector(
        run=uri.rstrip("/").split("/")[-1],
        state_uri=state_uri,
        model=str(state["model_name"]),
        threshold=threshold,
        resolution=resolution,
        youden_threshold=float(state["threshold"]),
        operating_point=point,
    )


def benign_table_for(cfg: ScanConfig, detector: Detector, s3: S3Settings | None, log: Callable[[str], None]) -> str | None:
    """The benign table the threshold is fixed on, checked before Ray starts: --benign (ConfigError naming what
    is wrong with it), else a study root's own one when it can serve (skipped with a line saying why)."""
    from cxr_ray.manifest import MANIFEST_FILE
    from cxr_ray.study.layout import StudyLayout

    table = cfg.benign
    if not table and storage.exists(storage.join(cfg.detector, MANIFEST_FILE), s3):
        table = StudyLayout(cfg.detector).benign(detector.resolution)
        if not storage.is_complete(table, s3):
            return None
    if not table:
        return None
    try:
        check_benign_serves(table, detector, s3)
    except ConfigError as exc:
        if cfg.benign:  # asked for: say why it cannot be used
            raise
        log(f"scan: the study's benign table cannot fix a benign-robust threshold ({exc}); using {detector.operating_point}")
        return None
    return table


def check_benign_serves(table: str, detector: Detector, s3: S3Settings | None) -> None:
    """ConfigError unless `table` is a benign table at the detector's resolution with re-processed validation reals
    and the detector has validation predictions (its clean threshold is one of the maxima)."""
    import pyarrow.dataset as pads

    from cxr_ray.data.datasets import images_uri, resolution_of
    from cxr_ray.evaluate import check_benign_table

    if detector.operating_point == YOUDEN:
        raise ConfigError(f"{detector.run}: no validation predictions, so no benign-robust threshold; scan without --benign")
    check_benign_table(table, s3)
    if resolution_of(table, s3) != detector.resolution:
        raise ConfigError(f"{table}: benign table at {resolution_of(table, s3)}px, detector at {detector.resolution}px")
    fs, path = storage.resolve(images_uri(storage.published(table, s3)), s3)
    if pads.dataset(path, filesystem=fs, format="parquet").count_rows(filter=pads.field("split") == "val") == 0:
        raise ConfigError(f"{table}: no re-processed validation reals (make one with `cxr-ray benign --splits val,test`)")


def with_benign_threshold(
    detector: Detector, table: str, cfg: ScanConfig, s3: S3Settings | None, log: Callable[[str], None]
) -> Detector:
    """The detector at its benign-robust point: cfg.fpr on its validation reals as stored and under every condition of
    `table`'s re-processed validation reals (scored here, with Ray Data; `check_benign_serves` passed)."""
    from dataclasses import replace

    from cxr_ray.operating import benign_point_name, benign_robust_threshold
    from cxr_ray.scoring import ModelRun, score_runs
    from cxr_ray.scoring.pipeline import BENIGN_VAL_TABLE
    from cxr_ray.scoring.tables import benign_val_scores

    run = ModelRun(run=detector.run, run_dir="", state_uri=detector.state_uri, task="deepfake", model=detector.model,
                   train_source="", threshold=detector.youden_threshold, image_size=detector.resolution)  # fmt: skip
    scored = score_runs([run], {BENIGN_VAL_TABLE: table}, ("none",), s3, batch_size=cfg.batch_size, max_actors=cfg.max_actors,
                        resources=cfg.resources)
    by_condition = benign_val_scores(scored, run.run)
    threshold = benign_robust_threshold(detector.threshold, by_condition, cfg.fpr)
    n_val = len(next(iter(by_condition.values())))
    log(f"scan: threshold {threshold:.4f} holds FPR {cfg.fpr:g} on {n_val} validation reals under "
        f"{len(by_condition)} benign condition(s) of {table} (stored reals alone: {detector.threshold:.4f})")
    return replace(detector, threshold=threshold, operating_point=benign_point_name(cfg.fpr))


def list_inputs(src: str, s3: S3Settings | None) -> list[dict[str, Any]]:
    """Every file under SRC (or SRC itself), as (path URI, size)."""
    import pyarrow.fs as pafs

    info = storage.file_info(src, s3)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"{src}: nothing to scan there (no such file, folder or prefix)")
    if info.type == pafs.FileType.File:
        return [{"path": src, "size": int(info.size or 0)}]
    return [{"path": storage.uri_for(src, f.path), "size": int(f.size or 0)} for f in storage.list_files(src, s3)]


# ---------------------------------------------------------------- read + decode


def is_dicom(path: str, blob: bytes) -> bool:
    return path.lower().endswith(DICOM_SUFFIXES) or blob[128:132] == b"DICM"


def _check_dicom_size(dataset: Any, max_pixels: int) -> None:
    """Rows x Columns (x frames: pydicom decodes them all) from the header, before any pixel is decoded."""
    from cxr_ray.data.decode import check_pixels

    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return  # no usable size in the header: pixel_array says what is wrong
    check_pixels(columns, rows * frames, max_pixels)


def decode_dicom(blob: bytes, resolution: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """DICOM pixels -> uint8 square, min-max scaled like a deep PNG (MONOCHROME1 inverted).

    An image over `max_pixels` is refused from its header, like a PNG or JPEG.
    """
    from PIL import Image

    from cxr_ray.data.decode import DecodeError

    try:
        import pydicom
    except ImportError:
        raise DecodeError(NO_PYDICOM) from None
    try:
        dataset = pydicom.dcmread(io.BytesIO(blob))
        _check_dicom_size(dataset, max_pixels)
        pixels = np.asarray(dataset.pixel_array, dtype=np.float64)
    except DecodeError:
        raise
    except Exception as exc:  # pydicom raises many types for bad files; all mean "unreadable"
        raise DecodeError(f"unreadable DICOM: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if pixels.ndim == 3:  # multi-frame or colour: the first frame / channel mean
        pixels = pixels[0] if pixels.shape[0] < pixels.shape[-1] else pixels.mean(axis=-1)
    if pixels.ndim != 2 or min(pixels.shape) < 8:
        raise DecodeError(f"unsupported DICOM pixel data of shape {pixels.shape}")
    if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        pixels = pixels.max() - pixels
    lo, hi = float(pixels.min()), float(pixels.max())
    scaled = np.zeros(pixels.shape, np.uint8) if hi <= lo else np.round((pixels - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    image = Image.fromarray(scaled, mode="L").resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode_file(path: str, blob: bytes, resolution: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any supported file's bytes -> uint8 (resolution, resolution); DecodeError with the reason otherwise."""
    from cxr_ray.data.decode import decode_to_gray

    if is_dicom(path, blob):
        return decode_dicom(blob, resolution, max_pixels)
    return decode_to_gray(blob, resolution, max_pixels)


def read_and_decode(
    batch: pa.Table, resolution: int, s3: dict[str, Any] | None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> pa.Table:
    """Ray Data UDF: read, hash and decode files; failures (an image over `max_pixels` too) become rows
    with an empty image and a reason."""
    from cxr_ray.data.decode import DecodeError

    paths = batch.column("path").to_pylist()
    blobs = storage.read_many(paths, S3Settings.from_dict(s3))
    images, shas, reasons = [], [], []
    for path, blob in zip(paths, blobs):
        if isinstance(blob, Exception):
            images.append(b"")
            shas.append(None)
            reasons.append(f"unreadable: {str(blob).splitlines()[0] if str(blob) else type(blob).__name__}")
            continue
        shas.append(hashlib.sha256(blob).hexdigest())
        try:
            images.append(decode_file(path, blob, resolution, max_pixels).tobytes())
            reasons.append("")
        except DecodeError as exc:
            images.append(b"")
            reasons.append(str(exc))
    return pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "size_bytes": batch.column("size").cast(pa.int64()),
            "sha256": pa.array(shas, pa.string()),
            "image": pa.array(images, pa.binary()),
            "reason": pa.array(reasons, pa.string()),
        }
    )


def verdicts(scored: pa.Table, threshold: float, edit_threshold: float | None = None) -> tuple[pa.Table, dict[str, bytes]]:
    """The result table (probability and verdict per file, unreadable files with their reason, sorted by path) and
    the overlay PNGs by their path inside the output folder (with a localiser's columns; else none)."""
    from cxr_ray.tamper.overlay import OVERLAYS_DIR

    n = scored.num_rows
    score = scored.column("score_0").to_pylist()
    reasons = scored.column("reason").to_pylist()
    verdict = [
        VERDICT_UNREADABLE if s is None else (VERDICT_FAKE if s >= threshold else VERDICT_REAL) for s in score
    ]
    # A decoded image the scorer could not use (wrong size) would have no score and no reason: say so.
    reasons = [r or ("not scored" if s is None else "") for r, s in zip(reasons, score)]
    edited: list[float | None] = [None] * n
    edit_verdict: list[str | None] = [None] * n
    boxes: list[str | None] = [None] * n
    overlays: list[str | None] = [None] * n
    files: dict[str, bytes] = {}
    if edit_threshold is not None:
        edited = scored.column("edited_probability").to_pylist()
        edit_verdict = [None if e is None else (VERDICT_EDITED if e >= edit_threshold else VERDICT_UNEDITED) for e in edited]
        boxes = scored.column("box").to_pylist()
        shas = scored.column("sha256").to_pylist()
        for i, png in enumerate(scored.column("overlay_png").to_pylist()):
            if png is not None:
                overlays[i] = f"{OVERLAYS_DIR}/{shas[i]}.png"  # named by content: the same on every re-run
                files[overlays[i]] = png
    table = pa.table(
        {
            "path": scored.column("path"),
            "size_bytes": scored.column("size_bytes"),
            "sha256": scored.column("sha256"),
            "fake_probability": pa.array(score, pa.float64()),
            "verdict": pa.array(verdict, pa.string()),
            "reason": pa.array(reasons, pa.string()),
            "edited_probability": pa.array(edited, pa.float64()),
            "edit_verdict": pa.array(edit_verdict, pa.string()),
            "box": pa.array(boxes, pa.string()),
            "overlay": pa.array(overlays, pa.string()),
        },
        schema=RESULT_SCHEMA,
    )
    return table.sort_by("path"), files


# ---------------------------------------------------------------- the job


def _set_progress_bars(enabled: bool) -> bool:
    import ray

    ctx = ray.data.DataContext.get_current()
    previous = ctx.enable_progress_bars
    ctx.enable_progress_bars = enabled
    return previous


def localiser_for(cfg: ScanConfig, detector: Detector, s3: S3Settings | None) -> Any:
    """The localiser run scan draws maps with (cxr_ray.tamper.overlay.LocaliserRun), checked before Ray starts; None
    without --localiser."""
    if not cfg.localiser:
        return None
    from cxr_ray.tamper.overlay import load_localiser_run

    storage.check_separate(cfg.out, [cfg.localiser], "localiser")
    localiser = load_localiser_run(cfg.localiser, s3)
    if localiser.resolution != detector.resolution:
        raise ConfigError(f"{cfg.localiser}: the localiser works at {localiser.resolution} px, the detector at {detector.resolution} px")
    return localiser


def scorer_for(detector: Detector, localiser: Any, s3: S3Settings) -> tuple[Any, dict[str, Any]]:
    """The scoring actor class and its constructor arguments: the detector alone, or with the localiser beside it."""
    from cxr_ray.scoring import ModelScorer

    kwargs: dict[str, Any] = {"state_uris": [detector.state_uri], "s3": s3.to_dict()}
    if localiser is None:
        return ModelScorer, kwargs
    from cxr_ray.tamper.overlay import EditMarker

    return EditMarker, {**kwargs, "localiser": localiser.__dict__, "detector_threshold": detector.threshold}


def run_scan(
    cfg: ScanConfig,
    *,
    s3: S3Settings | None = None,
    log: Callable[[str], None] = print,
    address: str | None = None,
) -> dict[str, Any]:
    """Scan cfg.src with the detector; write results (CSV + Parquet) and summary.json to cfg.out."""
    from cxr_ray.resources import actor_pool_options, pool_size
    from cxr_ray.runtime import init_ray
    from cxr_ray.scoring import collect, write_output_folder

    s3 = s3 or S3Settings.from_env()
    t0 = time.perf_counter()
    # OUT must not hold or sit inside what is read: --overwrite would delete it.
    storage.check_separate(cfg.out, [cfg.src], "scanned folder")
    storage.check_separate(cfg.out, [cfg.detector], "detector")
    if cfg.benign:
        storage.check_separate(cfg.out, [cfg.benign], "benign table")
    storage.check_destination(cfg.out, s3, cfg.overwrite)
    detector = load_detector(cfg.detector, s3, cfg.fpr, log)
    files = list_inputs(cfg.src, s3)
    if not files:
        raise ConfigError(f"{cfg.src}: no files to scan")
    benign = benign_table_for(cfg, detector, s3, log)
    localiser = localiser_for(cfg, detector, s3)
    ray = init_ray(address)
    if benign:
        detector = with_benign_threshold(detector, benign, cfg, s3, log)
    pool = actor_pool_options(cfg.max_actors, cfg.resources)
    log(
        f"scan: {len(files)} file(s) under {cfg.src} with detector {detector.run} ({detector.model}, "
        f"{detector.resolution}px, threshold {detector.threshold:.4f} at {detector.operating_point}) on {pool_size(pool)} actor(s)"
    )
    blocks = max(2 * pool_size(pool), math.ceil(len(files) / cfg.batch_size))
    ds = ray.data.from_items(files, override_num_blocks=min(len(files), blocks))
    ds = ds.map_batches(
        read_and_decode,
        batch_format="pyarrow",
        batch_size=cfg.batch_size,
        fn_kwargs={"resolution": detector.resolution, "s3": s3.to_dict(), "max_pixels": cfg.max_pixels},
    )
    scorer, scorer_kwargs = scorer_for(detector, localiser, s3)
    ds = ds.map_batches(scorer, fn_constructor_kwargs=scorer_kwargs, batch_size=cfg.batch_size, batch_format="pyarrow", **pool)
    previous = _set_progress_bars(cfg.progress)
    try:
        t_scan = time.perf_counter()
        results, overlays = verdicts(collect(ds), detector.threshold, localiser.threshold if localiser else None)
        scan_seconds = time.perf_counter() - t_scan
    finally:
        _set_progress_bars(previous)
    summary = scan_summary(cfg, detector, results, scan_seconds, time.perf_counter() - t0, benign)
    if localiser is not None:
        summary["localiser"] = localiser.__dict__
        summary["flagged_edited"] = results.column("edit_verdict").to_pylist().count(VERDICT_EDITED)
        summary["overlays"] = len(overlays)
    write_output_folder(cfg.out, {RESULTS_NAME: results}, summary, s3, cfg.overwrite, csv=(RESULTS_NAME,), files=overlays)
    return summary


def scan_summary(
    cfg: ScanConfig, detector: Detector, results: pa.Table, scan_seconds: float, seconds: float, benign: str | None = None
) -> dict[str, Any]:
    verdict = results.column("verdict").to_pylist()
    unreadable = [
        {"path": p, "reason": r}
        for p, v, r in zip(results.column("path").to_pylist(), verdict, results.column("reason").to_pylist())
        if v == VERDICT_UNREADABLE
    ]
    return {
        "src": cfg.src,
        "out": cfg.out,
        "detector": {**detector.__dict__, "given": cfg.detector},
        "fpr": cfg.fpr,  # asked for; detector.operating_point says whether it was used (else Youden)
        "benign": benign,  # the table the benign-robust threshold was fixed on (None: stored validation reals alone)
        "threshold": detector.threshold,
        "max_pixels": cfg.max_pixels,
        "scanned": len(verdict),
        "flagged_fake": verdict.count(VERDICT_FAKE),
        "passed_real": verdict.count(VERDICT_REAL),
        "unreadable": len(unreadable),
        "unreadable_files": unreadable,
        "scan_seconds": round(scan_seconds, 3),
        "images_per_second": round(len(verdict) / scan_seconds, 1) if scan_seconds > 0 else None,
        "seconds": round(seconds, 3),
    }


def format_summary(summary: dict[str, Any], max_listed: int = 20) -> str:
    """The summary line, then the unreadable files with their reasons."""
    edited = f", called edited {summary['flagged_edited']} ({summary['overlays']} overlays)" if "localiser" in summary else ""
    lines = [
        f"scanned {summary['scanned']}, flagged fake {summary['flagged_fake']}{edited}, unreadable {summary['unreadable']} "
        f"(threshold {summary['threshold']:.4f} at {summary['detector']['operating_point']}; results in {summary['out']})"
    ]
    for item in summary["unreadable_files"][:max_listed]:
        lines.append(f"  unreadable: {item['path']}: {item['reason']}")
    hidden = summary["unreadable"] - max_listed
    if hidden > 0:
        lines.append(f"  ... and {hidden} more (see results.csv)")
    return lines[0] if len(lines) == 1 else "\n".join(lines)
