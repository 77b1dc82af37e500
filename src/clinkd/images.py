"""Image preparation shared by the model's loader and ``clinkd convert``: what clinkd reads is what it writes."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

# PIL modes of 16- and 32-bit integer images (medical PNGs); 8-bit readers clip them to white.
WIDE_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in WIDE_INTEGER_MODES:
        # 16-bit medical PNGs: stretch the used range to 8 bits rather than clipping it.
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype("uint8"), "L")
    return image.convert("RGB")


def eight_bit_file(path: Path, folder: Path) -> Path:
    """``path`` when it is already an 8-bit image; else ``folder/<stem>.png``, written as clinkd reads it (:func:`to_rgb`)."""
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
