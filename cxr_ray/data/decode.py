"""Decode an image file once into the study's pixel format: square grayscale uint8.

Reals at ingest, fakes from the generator and files under `cxr-ray scan` all
end up in this one format, so no model can tell real from fake by format.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

SUPPORTED_RESOLUTIONS: tuple[int, ...] = (64, 128, 224)


class DecodeError(ValueError):
    """The bytes are not a usable image; the message is the quarantine reason."""


def _to_uint8_gray(img: Image.Image) -> Image.Image:
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


def decode_to_gray(data: bytes, resolution: int) -> np.ndarray:
    """Bytes of a JPEG/PNG (8/16-bit, gray/RGB) -> uint8 array (resolution, resolution)."""
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {SUPPORTED_RESOLUTIONS}, got {resolution}")
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format
        if fmt not in ("JPEG", "PNG"):
            raise DecodeError(f"unsupported image format {fmt!r} (JPEG and PNG are accepted)")
        if fmt == "JPEG":
            # Let libjpeg decode at a reduced DCT scale straight to luma: far
            # less work than full decode + colour conversion, same result after resize.
            img.draft("L", (resolution, resolution))
        img.load()
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"corrupt or truncated image: {exc}") from None
    if img.width < 8 or img.height < 8:
        raise DecodeError(f"image too small ({img.width}x{img.height})")
    gray = _to_uint8_gray(img)
    if gray.size != (resolution, resolution):
        # Aspect ratio is not kept: the published dataset copy is already
        # square-resized, and the study compares at a fixed square size.
        gray = gray.resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)
