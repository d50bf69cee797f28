"""Batched PNG decoding: one zlib call per image, the row filters undone across the batch.

A dataset of small images pays more for per-image decoder set-up than for pixels: PIL takes about
24 us for an 8x8 greyscale PNG, of which the inflate is about 1 us. `decode_batch` reads every
image's chunks in Python, inflates each image's IDAT stream with `zlib`, and reverses the PNG row
filters (None, Sub, Up, Average, Paeth; PNG spec section 9) with NumPy on all images at once, row
by row and, for Average and Paeth, pixel column by pixel column. Anything outside that path
(another format, palette or 16-bit images, interlacing, another size, a broken file) is decoded by
PIL, so the pixels (and the errors) are always PIL's.
The row and column loops cost the same for any batch, so a cost model (`batched_is_faster`) uses
the batched path only for many small images (digits at batch 256) and PIL for the rest
(CIFAR-10's 32x32x3 up to batch 512).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence

import numpy as np

from scorejax._optional import import_optional

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# 8-bit colour types -> samples per pixel: grey, RGB, grey + alpha, RGBA (palette: PIL).
_SAMPLES = {0: 1, 2: 3, 4: 2, 6: 4}
_FORMATS = ("PNG", "JPEG")  # the encodings of TFDS's Image feature


def _filtered_rows(png: bytes, height: int, width: int, channels: int) -> bytes | None:
    """The inflated IDAT stream (`height` rows of a filter byte and `width * channels` samples)
    of a non-interlaced 8-bit PNG of that size, or None if `png` is anything else or broken."""
    if not png.startswith(_SIGNATURE):
        return None
    pos, end, idat = len(_SIGNATURE), len(png), []
    while pos + 12 <= end:
        length, kind = struct.unpack_from(">I4s", png, pos)
        data_end = pos + 8 + length
        if data_end + 4 > end or zlib.crc32(png[pos + 4 : data_end]) != struct.unpack_from(
            ">I", png, data_end
        )[0]:
            return None
        if kind == b"IHDR":
            w, h, depth, colour, compression, filtering, interlace = struct.unpack_from(
                ">IIBBBBB", png, pos + 8
            )
            if (h, w, depth, compression, filtering, interlace) != (height, width, 8, 0, 0, 0):
                return None
            if _SAMPLES.get(colour) != channels:
                return None
        elif kind == b"IDAT":
            idat.append(png[pos + 8 : data_end])
        elif kind == b"IEND":
            break
        elif kind[0] < 97 and kind != b"PLTE":  # an unknown critical chunk (upper-case initial)
            return None
        pos = data_end + 4
    else:
        return None  # no IEND
    try:
        rows = zlib.decompress(b"".join(idat))
    except zlib.error:
        return None
    return rows if len(rows) == height * (1 + width * channels) else None


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """PNG's Paeth predictor of int16 left `a`, above `b`, upper-left `c` (ties: a, then b)."""
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def unfilter(rows: np.ndarray, width: int, channels: int) -> np.ndarray:
    """Reverses PNG row filters: [B, H, 1 + W*C] uint8 filtered rows -> [B, H, W, C] pixels.

    Row r of image i starts with its filter type f in {0..4}; with x the raw sample, a the same
    sample one pixel left, b the one above and c above-left (0 outside the image), the stored
    byte is x - {0, a, b, floor((a + b) / 2), paeth(a, b, c)}[f] mod 256.

    Examples:
      >>> import numpy as np
      >>> rows = np.array([[[1, 5, 1, 1],      # Sub: 5, 6, 7
      ...                   [2, 1, 1, 1],      # Up: 6, 7, 8
      ...                   [3, 9, 0, 250]]],  # Average: 9 + 6 // 2, 0 + (12 + 7) // 2, ...
      ...                 np.uint8)
      >>> unfilter(rows, 3, 1)[0, :, :, 0].tolist()
      [[5, 6, 7], [6, 7, 8], [12, 9, 2]]
    """
    batch, height, stride = rows.shape
    if stride != 1 + width * channels:
        raise ValueError(f"rows of {stride} bytes do not hold {width} x {channels} samples")
    filters = rows[:, :, 0]
    if filters.max(initial=0) > 4:
        raise ValueError(f"unknown PNG filter type {int(filters.max())}")
    samples = rows[:, :, 1:].reshape(batch, height, width, channels)
    # Pixel (r, x) lives at [r + 1, x + 1]: row 0 and column 0 are the zeros outside the image.
    out = np.zeros((batch, height + 1, width + 1, channels), np.uint8)
    for r in range(height):
        prior = out[:, r]
        for f in np.unique(filters[:, r]):
            sel = filters[:, r] == f
            x = samples[sel, r]
            if f == 0:
                cur = x
            elif f == 1:
                cur = np.cumsum(x, axis=1, dtype=np.uint8)
            elif f == 2:
                cur = x + prior[sel, 1:]
            else:
                above = prior[sel].astype(np.int16)
                cur = np.zeros((x.shape[0], width + 1, channels), np.int16)
                for col in range(width):
                    a, b = cur[:, col], above[:, col + 1]
                    pred = (a + b) >> 1 if f == 3 else _paeth(a, b, above[:, col])
                    cur[:, col + 1] = (x[:, col] + pred) & 255
                cur = cur[:, 1:]
            out[sel, r + 1, 1:] = cur
    return out[:, 1:, 1:]


# The cost model `decode_batch` picks its path by, in microseconds (2-core x86 CPU, NumPy 2).
# It only chooses between equal results: PIL's per-image set-up against the per-image chunk walk
# and inflate plus NumPy's per-call overhead, which `unfilter` pays per row and filter present,
# and per pixel column for Average and Paeth rows (assumed present in every row: the worst case).
_US_PIL_IMAGE, _US_PIL_BYTE = 20.0, 0.01
_US_IMAGE, _US_INFLATE_BYTE = 3.0, 0.006
_US_ROW_GROUP, _US_COLUMN = 6.0, 10.0
METHODS = ("auto", "batched", "pil")


def _pil_decode(encoded: bytes, image_shape: tuple[int, int, int]) -> np.ndarray:
    Image = import_optional("PIL.Image")
    with Image.open(io.BytesIO(encoded), formats=_FORMATS) as im:
        return np.asarray(im).reshape(image_shape)


def batched_is_faster(batch: int, image_shape: tuple[int, int, int]) -> bool:
    """Whether the cost model expects batched decoding of `batch` PNGs of `image_shape` to beat
    PIL: true for large batches of small images (256 digits of 8x8x1: about 3 against 21 us per
    image), false for CIFAR-10's 32x32x3 at any batch up to 256.

    Examples:
      >>> batched_is_faster(256, (8, 8, 1)), batched_is_faster(8, (8, 8, 1))
      (True, False)
      >>> batched_is_faster(256, (32, 32, 3))
      False
    """
    height, width, channels = image_shape
    size = height * width * channels
    pil = batch * (_US_PIL_IMAGE + _US_PIL_BYTE * size)
    batched = batch * (_US_IMAGE + _US_INFLATE_BYTE * size) + height * (
        3 * _US_ROW_GROUP + 2 * width * _US_COLUMN
    )
    return batched < pil


def decode_batch(
    images: Sequence[bytes], image_shape: tuple[int, int, int], *, method: str = "auto"
) -> np.ndarray:
    """Encoded images [B] (PNG or JPEG bytes) -> uint8 pixels [B, H, W, C], equal to PIL's.

    With the batched path, 8-bit non-interlaced PNGs of shape `image_shape` (grey, RGB, grey +
    alpha or RGBA matching C) are inflated one by one and unfiltered together by `unfilter`, and
    every other image is decoded by PIL, which must give `H * W * C` samples. `unfilter`'s Python
    loops run over rows and pixel columns, not over the batch, so it pays off only for large
    batches of small images: `method="auto"` takes it where `batched_is_faster` says so and PIL
    for the whole batch otherwise; "batched" and "pil" force one path.

    Examples:
      >>> import io, numpy as np
      >>> from PIL import Image
      >>> pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
      >>> buffer = io.BytesIO(); Image.fromarray(pixels).save(buffer, format="PNG")
      >>> decoded = decode_batch([buffer.getvalue()] * 2, (3, 4, 1), method="batched")
      >>> decoded.shape, bool((decoded[..., 0] == pixels).all())
      ((2, 3, 4, 1), True)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        method = "batched" if batched_is_faster(len(images), image_shape) else "pil"
    height, width, channels = image_shape
    out = np.empty((len(images), height, width, channels), np.uint8)
    fast, streams = [], []
    for i, encoded in enumerate(images):
        rows = None if method == "pil" else _filtered_rows(encoded, height, width, channels)
        if rows is None:
            out[i] = _pil_decode(encoded, image_shape)
        else:
            fast.append(i)
            streams.append(rows)
    if fast:
        rows = np.frombuffer(b"".join(streams), np.uint8).reshape(len(fast), height, -1)
        out[fast] = unfilter(rows, width, channels)
    return out
