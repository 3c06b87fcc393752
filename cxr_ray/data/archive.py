"""The archive's image format: read it from the source files, and store images the same way.

A real X-ray reached the study as a file in the hospital archive's format (for
the Kaggle copy: 224 px RGB JPEG, quality 75, 4:2:0) and was decoded by
ingest. A fake that skips that history differs from the reals in format alone,
and a detector can learn the format instead of the fake. Ingest records the
format (summary.json, ARCHIVE_FORMAT_KEY); generate can then write fakes as an
attacker would store them: resampled to the archive's size, encoded in its
format, decoded by ingest's own decode path.

Only file headers and quantisation tables are read to learn a format: no pixels are decoded.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from cxr_ray.config import ConfigError
from cxr_ray.data.decode import DecodeError, decode_to_gray

if TYPE_CHECKING:
    from cxr_ray.storage import S3Settings

ARCHIVE_FORMAT_KEY = "archive_format"  # key in an ingested table's summary.json (and a generated table's)

FORMATS = ("JPEG", "PNG")
# PIL modes a gray image can be written in; per format, the ones its encoder takes.
WRITABLE_MODES = {"JPEG": ("L", "RGB"), "PNG": ("L", "RGB", "I;16")}
SUBSAMPLINGS = ("4:4:4", "4:2:2", "4:2:0")  # PIL's get_sampling codes 0, 1, 2
RESAMPLE_FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

# The IJG (libjpeg) standard luminance quantisation table (JPEG spec, Annex K), row by row.
_IJG_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


def _zigzag_order() -> list[int]:
    """Row-major index of each zigzag position: the order the tables have inside a JPEG file."""
    cells = [(r, c) for r in range(8) for c in range(8)]
    cells.sort(key=lambda rc: (rc[0] + rc[1], rc[1] if (rc[0] + rc[1]) % 2 == 0 else rc[0]))
    return [r * 8 + c for r, c in cells]


def _ijg_table(quality: int) -> np.ndarray:
    """libjpeg's `jpeg_set_quality` luminance table for `quality` (1-100), row-major, baseline-clamped."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((np.asarray(_IJG_LUMA, np.int64) * scale + 50) // 100, 1, 255)


_QUALITIES = np.arange(1, 101)
_TABLES_ROW_MAJOR = np.stack([_ijg_table(int(q)) for q in _QUALITIES])  # (100, 64)
_TABLES_ZIGZAG = _TABLES_ROW_MAJOR[:, _zigzag_order()]


@dataclass(frozen=True)
class ArchiveFormat:
    """How the archive stores its images."""

    format: str  # "JPEG" | "PNG"
    width: int
    height: int
    mode: str  # PIL mode of the stored files: "RGB", "L", "I;16"
    quality: int | None = None  # JPEG: estimated from the quantisation tables (IJG scale 1-100)
    subsampling: str | None = None  # JPEG: "4:4:4" | "4:2:2" | "4:2:0"
    files_sampled: int = 1
    agreement: float = 1.0  # share of the sampled files that match this format exactly

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ArchiveFormat":
        """The format from `to_dict`'s output; ConfigError naming the field when it cannot be written by `encode_as_archive`."""
        from cxr_ray.config import from_dict

        if not isinstance(d, Mapping):
            raise ConfigError(f"archive_format: expected a mapping, got {d!r}")
        missing = [k for k in ("format", "width", "height", "mode") if k not in d]
        if missing:
            raise ConfigError(f"archive_format: missing {', '.join(missing)}")
        fmt = from_dict(cls, d, where="archive_format")  # unknown keys and wrong types named
        _check_writable(fmt)
        return fmt

    def describe(self) -> str:
        """One line: 'JPEG 224x224 RGB q75 4:2:0'."""
        parts = [self.format, f"{self.width}x{self.height}", self.mode]
        if self.quality is not None:
            parts.append(f"q{self.quality}")
        if self.subsampling is not None:
            parts.append(self.subsampling)
        return " ".join(parts)

    def key(self) -> tuple[Any, ...]:
        """What two files must share to be stored the same way (not the sampling statistics)."""
        return (self.format, self.width, self.height, self.mode, self.quality, self.subsampling)


def _check_writable(fmt: ArchiveFormat) -> None:
    where = "archive_format"
    if fmt.format not in FORMATS:
        raise ConfigError(f"{where}.format: must be one of {FORMATS}, got {fmt.format!r}")
    if fmt.mode not in WRITABLE_MODES[fmt.format]:
        raise ConfigError(f"{where}.mode: {fmt.format} is written as one of {WRITABLE_MODES[fmt.format]}, got {fmt.mode!r}")
    if not (fmt.width >= 8 and fmt.height >= 8):
        raise ConfigError(f"{where}: width and height must be at least 8, got {fmt.width}x{fmt.height}")
    if fmt.format == "JPEG":
        if fmt.quality is None or not 1 <= fmt.quality <= 100:
            raise ConfigError(f"{where}.quality: JPEG needs a quality in 1-100, got {fmt.quality!r}")
        if fmt.mode == "RGB" and fmt.subsampling not in SUBSAMPLINGS:
            raise ConfigError(f"{where}.subsampling: RGB JPEG needs one of {SUBSAMPLINGS}, got {fmt.subsampling!r}")
    if not 0.0 <= fmt.agreement <= 1.0 or fmt.files_sampled < 1:
        raise ConfigError(f"{where}: files_sampled must be >= 1 and agreement in [0, 1], got {fmt.files_sampled}, {fmt.agreement}")


def estimate_jpeg_quality(quantization: dict[int, Sequence[int]]) -> int:
    """The IJG quality (1-100) whose luminance table is nearest the file's table 0 (sum of absolute differences).

    Pillow lists the 64 entries row by row (older releases: in zigzag order);
    both orders are compared, so either reading gives the same answer. Ties go
    to the higher quality. Exact for files written by libjpeg at a quality.
    """
    table = np.asarray(list(quantization[0]), dtype=np.int64) if 0 in quantization else None
    if table is None or table.shape != (64,):
        raise ValueError("JPEG luminance quantisation table (table 0, 64 entries) not found")
    costs = np.minimum(np.abs(_TABLES_ROW_MAJOR - table).sum(axis=1), np.abs(_TABLES_ZIGZAG - table).sum(axis=1))
    best = np.flatnonzero(costs == costs.min())
    return int(_QUALITIES[best[-1]])


def file_format(blob: bytes) -> ArchiveFormat:
    """The format of one image file, from its header and quantisation tables (no pixels decoded).

    DecodeError (a ValueError) when the bytes are not a JPEG or PNG image.
    """
    try:
        img = Image.open(io.BytesIO(blob))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"not a readable image ({exc})") from None
    if img.format not in FORMATS:
        raise DecodeError(f"unsupported image format {img.format!r} (JPEG and PNG are accepted)")
    quality = subsampling = None
    if img.format == "JPEG":
        quality = estimate_jpeg_quality(getattr(img, "quantization", None) or {})
        code = JpegImagePlugin.get_sampling(img)
        subsampling = SUBSAMPLINGS[code] if 0 <= code < len(SUBSAMPLINGS) else None
    return ArchiveFormat(img.format, img.width, img.height, img.mode, quality, subsampling)


def archive_format_of(blobs: Iterable[bytes | BaseException]) -> ArchiveFormat:
    """The most common format among the files; files_sampled counts the readable ones, agreement the winner's share.

    Unreadable files (and the OSErrors `storage.read_many` puts in their
    place) are skipped; ValueError when none is readable.
    """
    counts: Counter[tuple[Any, ...]] = Counter()
    skipped = 0
    for blob in blobs:
        try:
            if not isinstance(blob, (bytes, bytearray)):
                raise DecodeError(str(blob))
            counts[file_format(bytes(blob)).key()] += 1
        except ValueError:
            skipped += 1
    if not counts:
        raise ValueError(f"cannot tell the archive format: none of the {skipped} sampled files is a readable JPEG or PNG")
    # Most common first; among equals the first seen, so the answer depends on the files' order only.
    winner, n = counts.most_common(1)[0]
    total = sum(counts.values())
    return ArchiveFormat(*winner, files_sampled=total, agreement=n / total)


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """A gray 'L' image in the archive's mode; 16-bit spreads 0-255 over 0-65535 (x257) as an 8-to-16-bit export does."""
    if mode == "L":
        return img
    if mode == "RGB":
        return img.convert("RGB")
    if mode == "I;16":
        return Image.fromarray(np.asarray(img, np.uint16) * np.uint16(257))
    raise ConfigError(f"archive_format.mode: cannot write mode {mode!r}")


def encode_as_archive(gray: np.ndarray, fmt: ArchiveFormat, resample: str = "lanczos") -> bytes:
    """A gray (H, W) uint8 image as the archive stores one: resized to its size, in its mode and format."""
    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"resample must be one of {tuple(RESAMPLE_FILTERS)}, got {resample!r}")
    _check_writable(fmt)
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a gray (H, W) uint8 image, got shape {gray.shape} dtype {gray.dtype}")
    img = Image.fromarray(gray, mode="L")
    if img.size != (fmt.width, fmt.height):
        img = img.resize((fmt.width, fmt.height), RESAMPLE_FILTERS[resample])
    img = _to_mode(img, fmt.mode)
    out = io.BytesIO()
    if fmt.format == "JPEG":
        options: dict[str, Any] = {"quality": fmt.quality, "optimize": False}
        if fmt.mode == "RGB":
            options["subsampling"] = fmt.subsampling
        img.save(out, "JPEG", **options)
    else:
        img.save(out, "PNG")
    return out.getvalue()


def store_as_archive(images: np.ndarray, fmt: ArchiveFormat, resolution: int) -> tuple[np.ndarray, list[bytes]]:
    """(pixels, files): each (N, S, S) uint8 image stored as the archive does (`encode_as_archive`, the files),
    then decoded by ingest's path (`decode_to_gray`) at `resolution`, so it has the history of an ingested real."""
    images = np.asarray(images)
    files = [encode_as_archive(image, fmt) for image in images]
    out = np.zeros((len(images), resolution, resolution), np.uint8)
    for i, blob in enumerate(files):
        out[i] = decode_to_gray(blob, resolution)
    return out, files


def to_archive_pixels(images: np.ndarray, fmt: ArchiveFormat, resolution: int) -> np.ndarray:
    """The pixels of `store_as_archive`: (N, S, S) uint8 -> (N, resolution, resolution) uint8."""
    return store_as_archive(images, fmt, resolution)[0]


def read_archive_format(table_uri: str, s3: S3Settings | None = None) -> ArchiveFormat:
    """The archive format an ingested table recorded in its summary.json; ConfigError naming the table when absent."""
    from cxr_ray import storage
    from cxr_ray.data import schema
    from cxr_ray.data.datasets import require_complete

    summary = storage.read_json(storage.join(require_complete(table_uri, s3), schema.SUMMARY_FILE), s3)
    if not isinstance(summary, dict) or ARCHIVE_FORMAT_KEY not in summary:
        raise ConfigError(
            f"{table_uri}: no {ARCHIVE_FORMAT_KEY} in its {schema.SUMMARY_FILE}: the table was ingested before the "
            "archive format was recorded; re-run cxr-ray ingest with --overwrite"
        )
    recorded = summary[ARCHIVE_FORMAT_KEY]
    if recorded is None:
        raise ConfigError(f"{table_uri}: records no archive format (a table of raw fakes, or an ingest that read no image)")
    try:
        return ArchiveFormat.from_dict(recorded)
    except ConfigError as exc:
        raise ConfigError(f"{table_uri}: {exc}") from None
