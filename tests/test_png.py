"""`scorejax.data.png`: batched PNG decoding equals PIL's, for every row filter and fallback."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest

from scorejax.data import png

Image = pytest.importorskip("PIL.Image")

_COLOUR = {1: 0, 3: 2, 2: 4, 4: 6}  # samples per pixel -> PNG colour type


def _chunk(kind: bytes, data: bytes, *, crc_ok: bool = True) -> bytes:
    crc = zlib.crc32(kind + data) ^ (0 if crc_ok else 1)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _filter_row(row: np.ndarray, prior: np.ndarray, f: int) -> np.ndarray:
    """Forward PNG filter of one [W, C] row given the [W, C] row above (zeros for the first)."""
    x = row.astype(np.int16)
    b = prior.astype(np.int16)
    a = np.concatenate([np.zeros_like(x[:1]), x[:-1]])
    c = np.concatenate([np.zeros_like(b[:1]), b[:-1]])
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    pred = [np.zeros_like(x), a, b, (a + b) >> 1, paeth][f]
    return ((x - pred) & 255).astype(np.uint8)


def _encode(image: np.ndarray, filters, *, idat_parts: int = 1, extra=b"", crc_ok=True) -> bytes:
    """An 8-bit PNG of `image` [H, W, C] with row r filtered by `filters[r]`, its IDAT split in
    `idat_parts` chunks and `extra` chunks before them."""
    h, w, ch = image.shape
    prior = np.zeros((w, ch), np.uint8)
    raw = b""
    for r in range(h):
        raw += bytes([filters[r]]) + _filter_row(image[r], prior, filters[r]).tobytes()
        prior = image[r]
    stream = zlib.compress(raw)
    cut = np.linspace(0, len(stream), idat_parts + 1).astype(int)
    idat = b"".join(_chunk(b"IDAT", stream[i:j]) for i, j in zip(cut[:-1], cut[1:], strict=True))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, _COLOUR[ch], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr, crc_ok=crc_ok) + extra + idat
            + _chunk(b"IEND", b""))


def _pil(encoded: bytes, shape) -> np.ndarray:
    with Image.open(io.BytesIO(encoded)) as im:
        return np.asarray(im).reshape(shape)


@pytest.mark.parametrize("shape", [(8, 8, 1), (5, 7, 3), (4, 6, 2), (3, 9, 4), (1, 1, 1)])
def test_every_filter_decodes_to_the_pixels_and_pils(shape):
    rng = np.random.default_rng(sum(shape))
    images = rng.integers(0, 256, (24, *shape), dtype=np.uint8)
    images[:4] = 255 - images[:4] // 64  # near-constant images, where Paeth ties are frequent
    encoded = [
        _encode(im, rng.integers(0, 5, shape[0]), idat_parts=1 + i % 3,
                extra=_chunk(b"tEXt", b"k\x00v") if i % 2 else b"")
        for i, im in enumerate(images)
    ]
    got = png.decode_batch(encoded, shape, method="batched")
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(got, np.stack([_pil(e, shape) for e in encoded]))


def test_pil_encoded_images_with_adaptive_filters():
    rng = np.random.default_rng(0)
    images = (rng.integers(0, 4, (64, 16, 16)) * 60 + np.arange(16)).astype(np.uint8)
    encoded = []
    for im in images:
        buffer = io.BytesIO()
        Image.fromarray(im, mode="L").save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    filters = set()
    for e in encoded:
        rows = png._filtered_rows(e, 16, 16, 1)
        assert rows is not None  # PIL's own PNGs take the batched path
        filters |= set(rows[:: 1 + 16])
    assert len(filters) >= 3, filters  # the test covers several of the filters PIL picks
    decoded = png.decode_batch(encoded, (16, 16, 1), method="batched")
    np.testing.assert_array_equal(decoded[..., 0], images)


def test_images_outside_the_fast_path_are_pils():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    variants = []
    for kwargs in ({"format": "JPEG"}, {"format": "PNG"}):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, **kwargs)
        variants.append(buffer.getvalue())
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).convert("RGB").save(
        buffer, format="PNG"
    )
    variants.append(buffer.getvalue())
    buffer = io.BytesIO()
    Image.fromarray(rgb).quantize(8).save(buffer, format="PNG")  # a palette PNG
    palette = buffer.getvalue()
    assert png._filtered_rows(palette, 6, 5, 3) is None and png._filtered_rows(
        variants[0], 6, 5, 3) is None
    got = png.decode_batch(variants, (6, 5, 3), method="batched")
    np.testing.assert_array_equal(got, np.stack([_pil(v, (6, 5, 3)) for v in variants]))
    # A palette image is expanded by neither path: PIL's indices do not fill 3 channels.
    with pytest.raises(ValueError):
        png.decode_batch([palette], (6, 5, 3), method="batched")


def test_mismatched_shape_falls_back_to_pil():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    encoded = _encode(image, [0, 1, 2])
    assert png._filtered_rows(encoded, 4, 3, 1) is None
    np.testing.assert_array_equal(png.decode_batch([encoded], (4, 3, 1), method="batched"),
                                  image.reshape(1, 4, 3, 1))
    with pytest.raises(ValueError):  # 12 samples cannot be reshaped to 2x2x1
        png.decode_batch([encoded], (2, 2, 1), method="batched")


@pytest.mark.parametrize("damage", ["crc", "truncated", "inflate"])
def test_broken_files_raise_pils_error(damage):
    image = np.full((4, 4, 1), 7, np.uint8)
    encoded = _encode(image, [0, 1, 2, 3], crc_ok=damage != "crc")
    if damage == "truncated":
        encoded = encoded[: len(encoded) - 30]  # into the deflate stream
    if damage == "inflate":
        start = encoded.index(b"IDAT") + 4
        encoded = encoded[:start] + b"\xff\xff" + encoded[start + 2 :]
    assert png._filtered_rows(encoded, 4, 4, 1) is None
    with pytest.raises((OSError, SyntaxError, ValueError)):
        png.decode_batch([encoded], (4, 4, 1), method="batched")


def test_unfilter_rejects_bad_rows():
    with pytest.raises(ValueError, match="filter type 5"):
        png.unfilter(np.full((1, 2, 3), 5, np.uint8), 2, 1)
    with pytest.raises(ValueError, match="do not hold"):
        png.unfilter(np.zeros((1, 2, 4), np.uint8), 2, 1)


def test_methods_agree_and_auto_follows_the_cost_model():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (300, 8, 8, 1), dtype=np.uint8)
    encoded = [_encode(im, rng.integers(0, 5, 8)) for im in images]
    for n in (1, 40, 300):
        for method in png.METHODS:
            np.testing.assert_array_equal(png.decode_batch(encoded[:n], (8, 8, 1), method=method),
                                          images[:n])
    # Batched decoding pays per row and pixel column, PIL per image: the model picks batched
    # only for many small images.
    assert png.batched_is_faster(300, (8, 8, 1)) and not png.batched_is_faster(1, (8, 8, 1))
    assert not png.batched_is_faster(256, (32, 32, 3))  # measured: 72 us per image against 44
    with pytest.raises(ValueError, match="method must be one of"):
        png.decode_batch(encoded[:1], (8, 8, 1), method="fast")
