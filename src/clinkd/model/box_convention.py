"""Boxes as each model family reads and writes them; clinkd's data and metrics stay on 0–1000 markup.

One answer format per family (what training answers are rewritten to, and what responses are read back from):

| family | coordinates | answer format | convention |
|---|---|---|---|
| Qwen2-VL | 0–1000 of the image | ``data.box_style`` markup, e.g. ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` | :class:`RelativeBoxes` |
| Qwen2.5-VL | pixels of the resized image | ``data.box_style`` markup, pixel numbers | :class:`PixelBoxes` |
| Qwen3-VL, Qwen3.5 | 0–1000 of the image, integers | JSON, ``{"bbox_2d": [x1, y1, x2, y2], "label": "liver"}`` | :class:`JsonBoxes` |

* Qwen2-VL: ``(x1,y1),(x2,y2)`` on the 0–1000 scale of the image (clinkd's canonical form), so
  :class:`RelativeBoxes` leaves text unchanged.
* Qwen2.5-VL: absolute pixels of the image *as the model sees it*, i.e. after ``smart_resize``
  (both sides rounded to multiples of ``factor = patch_size · merge_size`` = 28 and the area brought
  into ``[min_pixels, max_pixels]``). :class:`PixelBoxes` rewrites prompts and training answers
  0–1000 → pixels on the way in, and responses pixels → 0–1000 on the way out, so evaluation always
  runs on 0–1000.
* Qwen3-VL and Qwen3.5: integers on a 0–1000 grid relative to the image, as clinkd's, written natively as
  JSON. :class:`JsonBoxes` rewrites prompts and answers into that JSON on the way in and responses back
  into Med-GRIT markup on the way out (``{"point_2d": [x, y]}`` reads as the zero-size box at the point).

For a resized image of ``W × H`` pixels: ``x_px = round(x · W / 1000)`` and back
``x = clamp(round(x_px · 1000 / W), 0, 1000)`` (likewise ``y`` with ``H``). A 0–1000 integer survives
the round trip exactly when ``W, H ≥ 1000``; otherwise it moves by at most ``⌊500 / W + 0.5⌋``.

Which boxes are rewritten follows :func:`clinkd.boxes.parse_boxes`: every tagged box (``<box>…</box>``
or ``<|box_start|>…<|box_end|>``), or the bare ``(x1,y1),(x2,y2)`` pairs when the text has no tagged box.
Apply :meth:`PixelBoxes.to_model` after the markup conversion (``convert_markup`` checks the 0–1000
range, which pixel coordinates may exceed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from clinkd.boxes import SCALE, UNSIGNED_PAIR, UNSIGNED_TAGGED_BOX, BoxStyle, convert_markup, json_to_markup

Size = tuple[int, int]  # (width, height) in pixels


@dataclass(frozen=True)
class RelativeBoxes:
    """Qwen2-VL: the model's coordinates are clinkd's (0–1000); nothing to convert."""

    def to_model(self, text: str, image_size: Size) -> str:
        return text

    def from_model(self, text: str, image_size: Size) -> str:
        return text


@dataclass(frozen=True)
class PixelBoxes:
    """Qwen2.5-VL: absolute pixels of the ``smart_resize``-d image (see the module docstring)."""

    factor: int
    min_pixels: int
    max_pixels: int

    @classmethod
    def from_processor(cls, processor) -> "PixelBoxes":
        image_processor = processor.image_processor
        size = image_processor.size
        return cls(image_processor.patch_size * image_processor.merge_size, size["shortest_edge"], size["longest_edge"])

    def resized(self, image_size: Size) -> Size:
        """``(W, H)`` the processor resizes an image of ``image_size`` to."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        width, height = image_size
        resized_height, resized_width = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        return resized_width, resized_height

    def to_model(self, text: str, image_size: Size) -> str:
        """0–1000 boxes → integer pixels of the resized image."""
        width, height = self.resized(image_size)
        return _rewrite(text, lambda x, y: (round(x * width / SCALE), round(y * height / SCALE)))

    def from_model(self, text: str, image_size: Size) -> str:
        """Pixel boxes of the resized image → integer 0–1000 boxes (clamped: a model may overshoot the border)."""
        width, height = self.resized(image_size)

        def scale(x: float, y: float) -> tuple[int, int]:
            return _clamp(round(x * SCALE / width)), _clamp(round(y * SCALE / height))

        return _rewrite(text, scale)


@dataclass(frozen=True)
class JsonBoxes:
    """Qwen3-VL and Qwen3.5: the same 0–1000 numbers, as JSON objects (see the module docstring)."""

    def to_model(self, text: str, image_size: Size) -> str:
        return convert_markup(text, BoxStyle.QWEN3_VL)

    def from_model(self, text: str, image_size: Size) -> str:
        return json_to_markup(text)


BoxCoordinates = RelativeBoxes | PixelBoxes | JsonBoxes
JSON_FAMILIES = ("qwen3_vl", "qwen3_5")


def box_coordinates(model_config, processor) -> BoxCoordinates:
    """The convention of a model (by its config's ``model_type``) with the budget of its processor."""
    model_type = getattr(model_config, "model_type", None)
    if model_type == "qwen2_5_vl":
        return PixelBoxes.from_processor(processor)
    return JsonBoxes() if model_type in JSON_FAMILIES else RelativeBoxes()


def image_size(path: str | Path, square_size: int | None = None) -> Size:
    """The ``(width, height)`` of the image given to the processor: ``square_size`` when set, else the file's
    (read from the header only)."""
    if square_size:
        return square_size, square_size
    with Image.open(path) as image:
        return image.size


def _clamp(value: int) -> int:
    return min(SCALE, max(0, value))


def _rewrite(text: str, point: Callable[[float, float], tuple[int, int]]) -> str:
    """Apply ``point`` to both corners of every box (tagged ones, else bare pairs), keeping the rest of the text."""

    def corners(numbers: tuple[str, ...]) -> str:
        x1, y1, x2, y2 = (float(value) for value in numbers)
        (a, b), (c, d) = point(x1, y1), point(x2, y2)
        return f"({a},{b}),({c},{d})"

    if UNSIGNED_TAGGED_BOX.search(text):
        return UNSIGNED_TAGGED_BOX.sub(lambda m: f"{m.group(1)}{corners(m.groups()[1:5])}{m.group(6)}", text)
    return UNSIGNED_PAIR.sub(lambda m: corners(m.groups()), text)
