"""Decode an image file once into the study's pixel format: square grayscale uint8.

Reals at ingest, fakes from the generator and files under `cxr-ray scan` all
end up in this one format, so no model can tell real from fake by format.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

SUPPORTED_RESOLUTIONS: tuple[int, ...] = (64, 128, 224)

# Largest image decoded, in pixels (width x height). Chest X-ray detectors
# make at most ~18 megapixels; a bigger file is quarantined (ingest) or listed
# as unreadable (scan) before its pixels are decoded, so a small file that
# claims a huge size (a "decompression bomb") cannot exhaust a worker's memory.
DEFAULT_MAX_PIXELS = 40_000_000


class DecodeError(ValueError):
    """The bytes are not a usable image; the message is the quarantine reason."""


def to_uint8_gray(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 'L'. Deep (16-bit, int32, float) images are min-max scaled per image,
    so a 12-bit radiograph in a 16-bit container is not crushed into the dark end."""
    mode = img.mode
    if mode == "L":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if hi <= lo:
            scaled = np.zeros(arr.shape, dtype=np.uint8)
        else:
            scaled = np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        return Image.fromarray(scaled, mode="L")
    if mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGB" if mode != "LA" else "L")
        return img.convert("L") if img.mode != "L" else img
    return img.convert("L")


def too_large(width: int, height: int, max_pixels: int) -> str:
    """The reason given for an image over the pixel limit: its size and the limit."""
    return (
        f"image too large: {width}x{height} pixels ({width * height / 1e6:.3g} megapixels), over the limit of "
        f"{max_pixels / 1e6:.3g} megapixels (max_pixels={max_pixels})"
    )


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """DecodeError when a `width` x `height` image is over `max_pixels`."""
    if width * height > max_pixels:
        raise DecodeError(too_large(width, height, max_pixels))


@contextlib.contextmanager
def _pil_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """PIL's own bomb check at our limit (None: off), its warning an error: PIL and we refuse the same images.

    PIL's limit is process-wide; decoding runs one file at a time per process, so setting it per call is safe.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _open_bounded(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse an image over `max_pixels` before any pixel is decoded."""
    with _pil_pixel_limit(None):  # our check below names the size; PIL's would not
        img = Image.open(io.BytesIO(data))
    check_pixels(img.width, img.height, max_pixels)
    return img


def decode_to_gray(data: bytes, resolution: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes of a JPEG/PNG (8/16-bit, gray/RGB) -> uint8 array (resolution, resolution).

    An image over `max_pixels` is a DecodeError naming its size and the limit, found from the header alone.
    """
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {SUPPORTED_RESOLUTIONS}, got {resolution}")
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        img = _open_bounded(data, max_pixels)
        fmt = img.format
        if fmt not in ("JPEG", "PNG"):
            raise DecodeError(f"unsupported image format {fmt!r} (JPEG and PNG are accepted)")
        if fmt == "JPEG":
            # Let libjpeg decode at a reduced DCT scale straight to luma: far
            # less work than full decode + colour conversion, same result after resize.
            img.draft("L", (resolution, resolution))
        with _pil_pixel_limit(max_pixels):  # in case a plugin checks again while decoding
            img.load()
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"image too large: {exc} (max_pixels={max_pixels})") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"corrupt or truncated image: {exc}") from None
    if img.width < 8 or img.height < 8:
        raise DecodeError(f"image too small ({img.width}x{img.height})")
    gray = to_uint8_gray(img)
    if gray.size != (resolution, resolution):
        # Aspect ratio is not kept: the published dataset copy is already
        # square-resized, and the study compares at a fixed square size.
        gray = gray.resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)
