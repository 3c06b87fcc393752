"""Pure rules: patient ids, split carving, decoding of every accepted encoding."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_ray import storage
from cxr_ray.config import IngestConfig
from cxr_ray.data.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_to_gray
from cxr_ray.data.layout import carve_validation, classify_path, patient_id


@pytest.mark.parametrize(
    "name, split, expected",
    [
        ("person1000_bacteria_2931.jpeg", "train", "train/person1000"),
        ("person447_virus_921_1.jpeg", "train", "train/person447"),
        ("IM-0115-0001.jpeg", "train", "train/IM-0115"),
        ("NORMAL2-IM-0173-0001-0002.jpeg", "test", "test/NORMAL2-IM-0173"),
        ("IM-0011-0001-0001.jpeg", "test", "test/IM-0011"),
        ("person1_virus_6.jpeg", "test", "test/person1"),
        ("person1946_bacteria_4874.jpeg", "val", "train/person1946"),  # Kaggle val continues train's numbering
    ],
)
def test_patient_id(name, split, expected):
    assert patient_id(name, split) == (expected, True)


def test_unparsed_names_are_their_own_patient():
    assert patient_id("scan_42.png", "train") == ("train/scan_42", False)


def test_classify_path():
    assert classify_path("train/NORMAL/a.jpeg") == ("train", "NORMAL", None)
    assert classify_path("val/PNEUMONIA/b.png") == ("val", "PNEUMONIA", None)
    assert classify_path("train/COVID/a.jpeg")[2].startswith("unknown class folder")
    assert classify_path("holdout/NORMAL/a.jpeg")[2].startswith("unknown split folder")
    assert classify_path("train/a.jpeg")[2].startswith("not inside")
    assert classify_path("train/NORMAL/.DS_Store")[2] == "hidden file"


def test_carve_validation_is_stratified_seeded_and_order_free():
    pool = {"NORMAL": [f"n{i}" for i in range(50)], "PNEUMONIA": [f"p{i}" for i in range(100)]}
    val = carve_validation(pool, 0.1, seed=0)
    assert sum(v.startswith("n") for v in val) == 5 and sum(v.startswith("p") for v in val) == 10
    shuffled = {k: list(reversed(v)) for k, v in pool.items()}
    assert carve_validation(shuffled, 0.1, seed=0) == val
    assert carve_validation(pool, 0.1, seed=1) != val
    assert carve_validation(pool, 0.0, seed=0) == set()


def _encode(arr: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format=fmt) if mode else Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("resolution", [64, 128, 224])
def test_decode_formats_to_square_gray(resolution):
    rng = np.random.default_rng(0)
    gray = (np.add.outer(np.arange(200), np.arange(180)) % 256).astype(np.uint8)
    rgb = np.stack([gray] * 3, axis=-1)
    rgba = np.concatenate([rgb, np.full((200, 180, 1), 255, np.uint8)], axis=-1)
    deep = (gray.astype(np.uint16) * 16 + rng.integers(0, 16, gray.shape)).astype(np.uint16)  # 12-bit in 16
    for blob in (_encode(gray, "JPEG"), _encode(rgb, "JPEG"), _encode(gray, "PNG"), _encode(rgb, "PNG"), _encode(rgba, "PNG"), _encode(deep, "PNG")):
        out = decode_to_gray(blob, resolution)
        assert out.shape == (resolution, resolution) and out.dtype == np.uint8
        assert out.max() > 150  # nothing crushed into the dark end


def test_decode_rejects_bad_bytes():
    good = _encode(np.zeros((64, 64), np.uint8) + 100, "JPEG")
    with pytest.raises(DecodeError, match="empty file"):
        decode_to_gray(b"", 64)
    with pytest.raises(DecodeError, match="not an image"):
        decode_to_gray(b"hello world, not pixels", 64)
    with pytest.raises(DecodeError, match="corrupt or truncated"):
        decode_to_gray(good[: len(good) // 2], 64)
    gif = io.BytesIO()
    Image.new("L", (32, 32)).save(gif, format="GIF")
    with pytest.raises(DecodeError, match="unsupported image format 'GIF'"):
        decode_to_gray(gif.getvalue(), 64)
    with pytest.raises(ValueError, match="resolution must be one of"):
        decode_to_gray(good, 96)


def huge_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit black PNG of `width` x `height`: a few tens of kB that claim hundreds of megapixels.

    Written chunk by chunk (rows of zeros streamed through zlib): PIL would
    need seconds and 50 MB to build the same image.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    rows_per_piece = 1000
    idat = b"".join(packer.compress(row * min(rows_per_piece, height - start)) for start in range(0, height, rows_per_piece))
    idat += packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decode_refuses_an_image_over_the_pixel_limit_from_its_header():
    blob = huge_png()
    assert len(blob) < 1_000_000
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DecodeError) as info:
        decode_to_gray(blob, 64)
    reason = str(info.value)
    assert reason == "image too large: 20000x20000 pixels (400 megapixels), over the limit of 40 megapixels (max_pixels=40000000)"
    assert Image.MAX_IMAGE_PIXELS == limit_before  # PIL's process-wide limit is left as it was
    # The limit is configurable, both ways; the default is the configs' default.
    small = _encode(np.full((100, 80), 100, np.uint8), "PNG")
    assert decode_to_gray(small, 64, max_pixels=8000).shape == (64, 64)
    with pytest.raises(DecodeError, match=r"80x100 pixels \(0.008 megapixels\), over the limit of .* \(max_pixels=7999\)"):
        decode_to_gray(small, 64, max_pixels=7999)
    assert decode_to_gray(huge_png(9000, 5000), 64, max_pixels=45_000_000).shape == (64, 64)
    assert IngestConfig(src="a", dest="b").max_pixels == DEFAULT_MAX_PIXELS
    from cxr_ray.scan import ScanConfig

    assert ScanConfig(src="a", detector="d", out="o").max_pixels == DEFAULT_MAX_PIXELS


def test_local_listing_walks_a_symlink_loop_once_and_lists_broken_links(tmp_path):
    root = tmp_path / "tree"
    (root / "train" / "NORMAL").mkdir(parents=True)
    (root / "test" / "NORMAL").mkdir(parents=True)
    (root / "train" / "NORMAL" / "a.jpeg").write_bytes(b"a")
    (root / "test" / "NORMAL" / "b.jpeg").write_bytes(b"bb")
    os.symlink("../..", root / "train" / "NORMAL" / "loop")  # back to the root: a loop
    os.symlink("../test", root / "train" / "again")  # a second way into test/
    os.symlink("self", root / "train" / "NORMAL" / "self")  # a link to itself
    os.symlink("nowhere", root / "train" / "NORMAL" / "dangling")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "c.jpeg").write_bytes(b"ccc")
    os.symlink(outside, root / "test" / "linked")  # a folder outside the tree is still read

    listed = {Path(i.path).relative_to(root).as_posix(): i.size for i in storage.list_files(str(root))}
    assert listed == {
        "test/NORMAL/b.jpeg": 2,
        "train/NORMAL/a.jpeg": 1,
        "test/linked/c.jpeg": 3,
        "train/NORMAL/self": None,
        "train/NORMAL/dangling": None,
    }
