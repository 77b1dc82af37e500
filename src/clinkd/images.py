"""Image files as clinkd reads them: shared by the model's loader, the data checks and ``clinkd convert``, so what
clinkd reads is what it writes and what it checks.

An image is decoded once per use at no more than the pixels its reader needs: a file with more than
:data:`REDUCE_ABOVE` times the reader's budget is decoded reduced (JPEG's DCT scaling through ``draft``, then PIL's
``reduce`` inside ``resize``) and the result kept in a small cache, so a huge scan costs one decode, not one per epoch.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from PIL import Image

# PIL modes of 16- and 32-bit integer images (medical PNGs); 8-bit readers clip them to white.
WIDE_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I")
PATCH_SIZE = 14  # the vision patch side of Qwen2-VL and Qwen2.5-VL; a thinner image has no whole patch
MAX_ASPECT_RATIO = 200  # Qwen2-VL's smart_resize refuses a longer side more than 200 times the shorter
PIL_PIXEL_LIMIT = 2 * Image.MAX_IMAGE_PIXELS  # PIL refuses to open a larger image (DecompressionBombError)
VIEW_PIXELS = 1024 * 1024  # an image looked at rather than fed to the model (SASG and CLIP crops, infer's overlay)
REDUCE_ABOVE = 4  # a file with more than this many times the budget's pixels is decoded reduced (the rest: as it is)
REDUCED_CACHE = 16  # reduced decodes kept; small files decode faster than a cache lookup would save


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in WIDE_INTEGER_MODES:
        # 16-bit medical PNGs: stretch the used range to 8 bits rather than clipping it.
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype("uint8"), "L")
    return image.convert("RGB")


def unusable_reason(size: tuple[int, int], max_pixels: int = PIL_PIXEL_LIMIT) -> str | None:
    """Why an image of ``size`` (width, height) cannot be fed to the model, or ``None``: a side below one patch, an
    aspect ratio the processor refuses, or more than ``max_pixels`` pixels (``data.max_image_pixels``)."""
    width, height = size
    if min(width, height) < PATCH_SIZE:
        return f"{width}×{height} px: a side is below one {PATCH_SIZE}-px patch"
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        ratio = max(width, height) / min(width, height)
        return f"{width}×{height} px: aspect ratio {ratio:.0f}, above the processor's {MAX_ASPECT_RATIO}"
    if width * height > max_pixels:
        return f"{width}×{height} px: {width * height} pixels, above data.max_image_pixels={max_pixels}"
    return None


def decoded_size(size: tuple[int, int], max_pixels: int | None) -> tuple[int, int]:
    """The size an image of ``size`` is decoded at for a reader of ``max_pixels``: its own, or divided by the largest
    integer factor that keeps at least ``REDUCE_ABOVE × max_pixels`` pixels (the processor still makes the final
    resize)."""
    width, height = size
    factor = math.isqrt(width * height // (REDUCE_ABOVE * max_pixels)) if max_pixels else 1
    return size if factor < 2 else (math.ceil(width / factor), math.ceil(height / factor))


def read_rgb(source: str | Path | BinaryIO, max_pixels: int | None = None) -> Image.Image:
    """The image in ``source`` (a path, or an open file such as an in-memory PNG) as RGB, decoded at
    :func:`decoded_size` for a reader of ``max_pixels`` (``None``: every pixel)."""
    with Image.open(source) as image:
        size = decoded_size(image.size, max_pixels)
        if size == image.size:
            return to_rgb(image)
        if not isinstance(source, (str, Path)):  # no file to key a cache by
            return _reduce(image, size)
    status = Path(source).stat()
    return _reduced(Path(source), status.st_mtime_ns, status.st_size, size).copy()  # a copy: callers may draw on it


@lru_cache(maxsize=REDUCED_CACHE)
def _reduced(path: Path, mtime_ns: int, file_size: int, size: tuple[int, int]) -> Image.Image:
    """``path`` decoded reduced to ``size``; the file's mtime and size are in the key, so an edited file is read
    again."""
    with Image.open(path) as image:
        return _reduce(image, size)


def _reduce(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    image.draft(image.mode, size)  # JPEG: decode at 1/2, 1/4 or 1/8 scale, never below size; other formats: no-op
    return to_rgb(image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0))


def eight_bit_file(path: Path, folder: Path) -> Path:
    """``path`` when it is already an 8-bit image; else ``folder/<stem>.png``, written as clinkd reads it
    (:func:`to_rgb`)."""
    if not path.is_file():  # unchecked and absent (check_images none): referenced as it is
        return path
    with Image.open(path) as image:
        if image.mode not in WIDE_INTEGER_MODES:
            return path
        converted = to_rgb(image)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{path.stem}.png"
    converted.save(target)
    return target
