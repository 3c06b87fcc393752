"""The archive format (cxr_ray.data.archive): JPEG quality from quantisation tables, one file's format, the
archive's most common format, and storing a gray image as the archive does (round trips, hand-checked cases).

Pure PIL/numpy; no Ray. Ingest recording the format and archive-format generation run on Ray in test_generate.py.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import SAMPLE
from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.data import schema
from cxr_ray.data.archive import (
    ARCHIVE_FORMAT_KEY,
    ArchiveFormat,
    archive_format_of,
    encode_as_archive,
    estimate_jpeg_quality,
    file_format,
    read_archive_format,
    to_archive_pixels,
)
from cxr_ray.data.decode import decode_to_gray
from cxr_ray.generate import GenerateConfig

# The Kaggle copy's files: 224 px RGB JPEGs written by libjpeg at quality 75 with 4:2:0 chroma.
KAGGLE = ArchiveFormat("JPEG", 224, 224, "RGB", quality=75, subsampling="4:2:0")

# The IJG standard luminance table (JPEG spec, Annex K), row by row: libjpeg's table at quality 50 (scale 100%).
IJG_LUMA = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip


def smooth_gray(size: int = 64) -> np.ndarray:
    """A smooth, full-range-ish test image: JPEG keeps it close, so 'close' is a meaningful check."""
    y, x = np.mgrid[0:size, 0:size]
    return np.clip(128 + 60 * np.sin(x / 7) + 50 * np.cos(y / 9), 0, 255).astype(np.uint8)


def jpeg_bytes(gray: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(gray).convert(options.pop("mode", "RGB")).save(out, "JPEG", **options)
    return out.getvalue()


def test_quality_estimate_hand_checked_tables():
    # Quality 50 is the standard table itself; quality 100 is all ones; quality 75 halves it: (16*50+50)//100 = 8, ...
    assert estimate_jpeg_quality({0: IJG_LUMA}) == 50
    assert estimate_jpeg_quality({0: [1] * 64}) == 100
    q75 = [min(255, max(1, (v * 50 + 50) // 100)) for v in IJG_LUMA]
    assert q75[:8] == [8, 6, 5, 8, 12, 20, 26, 31]
    assert estimate_jpeg_quality({0: q75, 1: [99] * 64}) == 75  # only the luminance table counts
    # The same table in the file's zigzag order (older Pillow's listing) reads the same.
    zigzag = sorted(((r, c) for r in range(8) for c in range(8)), key=lambda rc: (sum(rc), rc[1] if sum(rc) % 2 == 0 else rc[0]))
    assert estimate_jpeg_quality({0: [q75[r * 8 + c] for r, c in zigzag]}) == 75
    with pytest.raises(ValueError, match="quantisation table"):
        estimate_jpeg_quality({1: IJG_LUMA})


@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
def test_quality_estimate_round_trips_every_pillow_quality(subsampling):
    gray = smooth_gray()
    found = {q: file_format(jpeg_bytes(gray, quality=q, subsampling=subsampling)) for q in range(10, 101)}
    assert {q: f.quality for q, f in found.items()} == {q: q for q in range(10, 101)}
    assert {f.subsampling for f in found.values()} == {subsampling}
    assert {(f.format, f.width, f.height, f.mode) for f in found.values()} == {("JPEG", 64, 64, "RGB")}


def test_gray_jpeg_has_no_subsampling():
    fmt = file_format(jpeg_bytes(smooth_gray(), quality=85, mode="L"))
    assert (fmt.mode, fmt.quality, fmt.subsampling) == ("L", 85, None)


def test_a_real_sample_file_is_a_quality_75_jpeg():
    path = sorted((SAMPLE / "test" / "NORMAL").glob("*.jpeg"))[0]
    fmt = file_format(path.read_bytes())
    assert fmt == KAGGLE
    assert fmt.describe() == "JPEG 224x224 RGB q75 4:2:0"


def test_archive_format_is_the_most_common_and_skips_unreadable_files():
    gray = smooth_gray()
    a, b = jpeg_bytes(gray, quality=75, subsampling="4:2:0"), jpeg_bytes(gray, quality=90, subsampling="4:4:4")
    fmt = archive_format_of([a, b, a, b"not an image", OSError("gone"), a])
    assert (fmt.quality, fmt.subsampling, fmt.files_sampled, fmt.agreement) == (75, "4:2:0", 4, 0.75)
    with pytest.raises(ValueError, match="none of the 2 sampled files"):
        archive_format_of([b"", b"junk"])


def test_jpeg_archive_round_trip_is_close_but_not_exact():
    gray = smooth_gray()
    blob = encode_as_archive(gray, KAGGLE)
    assert file_format(blob).key() == KAGGLE.key()  # stored exactly as the archive stores its files
    back = decode_to_gray(blob, 64)  # ingest's decode path
    diff = np.abs(back.astype(int) - gray.astype(int))
    assert back.shape == (64, 64)
    assert 0 < diff.mean() < 1.5 and diff.max() <= 8  # lossy, but the same picture
    assert encode_as_archive(gray, KAGGLE) == blob  # deterministic: same image, same file


def test_png_archive_at_the_same_size_is_lossless():
    gray = (np.random.default_rng(0).random((64, 64)) * 256).astype(np.uint8)
    gray[0, 0], gray[0, 1] = 0, 255  # full range: decode's per-image min-max scaling of 16-bit is then exact
    for mode in ("L", "RGB", "I;16"):
        fmt = ArchiveFormat("PNG", 64, 64, mode)
        blob = encode_as_archive(gray, fmt, resample="nearest")
        assert file_format(blob) == fmt
        assert np.array_equal(decode_to_gray(blob, 64), gray), mode
    # Upsampled x2 (nearest) and brought back by decode's bilinear resize, neighbours mix: no longer exact.
    blob = encode_as_archive(gray, ArchiveFormat("PNG", 128, 128, "L"), resample="nearest")
    assert not np.array_equal(decode_to_gray(blob, 64), gray)


def test_to_archive_pixels_stores_and_decodes_each_image():
    images = np.stack([smooth_gray(), smooth_gray()[::-1]])
    pixels = to_archive_pixels(images, KAGGLE, 64)
    assert pixels.shape == (2, 64, 64) and pixels.dtype == np.uint8
    for image, got in zip(images, pixels):
        assert np.array_equal(got, decode_to_gray(encode_as_archive(image, KAGGLE), 64))
    assert not np.array_equal(pixels, images)
    assert to_archive_pixels(images[:0], KAGGLE, 64).shape == (0, 64, 64)


def test_format_dict_round_trip_and_named_errors():
    assert ArchiveFormat.from_dict(json.loads(json.dumps(KAGGLE.to_dict()))) == KAGGLE
    for bad, field in (
        ({**KAGGLE.to_dict(), "format": "GIF"}, "archive_format.format"),
        ({**KAGGLE.to_dict(), "quality": None}, "archive_format.quality"),
        ({**KAGGLE.to_dict(), "subsampling": "4:1:1"}, "archive_format.subsampling"),
        ({**KAGGLE.to_dict(), "mode": "I;16"}, "archive_format.mode"),  # JPEG cannot hold 16 bits
        ({**KAGGLE.to_dict(), "width": "224"}, "archive_format.width"),
        ({"format": "PNG"}, "missing width"),
    ):
        with pytest.raises(ConfigError, match=field):
            ArchiveFormat.from_dict(bad)
    with pytest.raises(ValueError, match="resample"):
        encode_as_archive(smooth_gray(), KAGGLE, resample="box")


def test_generate_config_storage_format_checks():
    base = {"generators": ("g",), "dest": "d"}
    assert GenerateConfig(**base).storage_format == "raw"
    assert GenerateConfig(**base, storage_format="archive", archive_format=KAGGLE.to_dict()).archive_format == KAGGLE.to_dict()
    with pytest.raises(ConfigError, match="needs archive_format"):
        GenerateConfig(**base, storage_format="archive")
    with pytest.raises(ConfigError, match="storage_format is 'raw'"):
        GenerateConfig(**base, archive_format=KAGGLE.to_dict())
    with pytest.raises(ConfigError, match="storage_format must be one of"):
        GenerateConfig(**base, storage_format="jpeg")
    with pytest.raises(ConfigError, match="archive_format.quality"):
        GenerateConfig(**base, storage_format="archive", archive_format={**KAGGLE.to_dict(), "quality": 0})


def fake_table(folder, summary: dict) -> str:
    """A complete table folder (_SUCCESS + summary.json): all that read_archive_format reads."""
    folder.mkdir()
    (folder / storage.SUCCESS_MARKER).write_text("")
    (folder / schema.SUMMARY_FILE).write_text(json.dumps(summary))
    return str(folder)


def test_read_archive_format_names_a_table_ingested_before_it_was_recorded(tmp_path):
    new = fake_table(tmp_path / "new", {"resolution": 64, ARCHIVE_FORMAT_KEY: KAGGLE.to_dict()})
    assert read_archive_format(new) == KAGGLE
    old = fake_table(tmp_path / "old", {"resolution": 64})
    with pytest.raises(ConfigError, match="ingested before the archive format was recorded.*--overwrite"):
        read_archive_format(old)

    # The command line says the same in one line, before any generator is loaded or Ray started.
    import typer

    from cxr_ray.cli.generate_cmd import generate

    app = typer.Typer()
    app.command()(generate)
    app.command(name="noop", hidden=True)(lambda: None)
    result = CliRunner().invoke(app, ["generate", "--gan", "unused", "--out", str(tmp_path / "o"), "--archive-like", old])
    assert result.exit_code == 2 and "re-run cxr-ray ingest" in result.output and "Traceback" not in result.output
