"""Boxes as each model family reads and writes them; clinkd's data and metrics stay on 0–1000 markup.

One answer format per family (what training answers are rewritten to, and what responses are read back from):

| family | coordinates | answer format | convention |
|---|---|---|---|
| Qwen2-VL | 0–1000 of the image | ``data.box_style`` markup, e.g. ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` |
:class:`RelativeBoxes` |
| Qwen2.5-VL | pixels of the resized image | ``data.box_style`` markup, pixel numbers | :class:`PixelBoxes` |
| Qwen3-VL, Qwen3.5 | 0–1000 of the image, integers | JSON, ``{"bbox_2d": [x1, y1, x2, y2], "label": "liver"}`` |
:class:`JsonBoxes` |

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

Served models (``clinkd predict --endpoint``, docs/served.md) also answer in Qwen-VL's JSON: Qwen2.5-VL writes
``{"bbox_2d": [x1, y1, x2, y2], "label": …}`` in pixels of the resized image, Qwen3-VL the same keys (and
``point_2d``) on 0–1000 relative to the image. :func:`parse_json_grounding` reads that JSON and
:func:`read_served_answer` turns any answer into Med-GRIT markup on 0–1000. The syntax (markup or JSON) is never in
doubt; the scale is what ``predict.endpoint.boxes`` names (:data:`SERVED_SCALES`), or, with ``auto``, what the
answer's own numbers allow: a coordinate above 1000 is a pixel, one beyond the resized image is on 0–1000, and an
answer that fits both is read on 0–1000 and marked ambiguous. clinkd never looks at the ground truth to read an
answer (lmms-eval scores both readings and keeps the better one, which uses the answer key and can only raise the
score: every ambiguous wrong box gets a second chance).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from clinkd.boxes import (
    BOX_TAGS,
    SCALE,
    UNSIGNED_PAIR,
    UNSIGNED_TAGGED_BOX,
    BoxStyle,
    convert_markup,
    format_ref,
    json_to_markup,
)
from clinkd.images import decoded_size

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
        return _rewrite(text, self.relative_point(image_size))

    def relative_point(self, image_size: Size) -> Callable[[float, float], tuple[int, int]]:
        """A pixel point of the resized image → its integer 0–1000 point, clamped."""
        width, height = self.resized(image_size)
        return lambda x, y: (_clamp(round(x * SCALE / width)), _clamp(round(y * SCALE / height)))


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


def image_size(path: str | Path, square_size: int | None = None, max_pixels: int | None = None) -> Size:
    """The ``(width, height)`` of the image given to the processor: ``square_size`` when set, else the file's as
    :func:`clinkd.model.processor.load_image` decodes it for ``max_pixels`` (read from the header only)."""
    if square_size:
        return square_size, square_size
    with Image.open(path) as image:
        return decoded_size(image.size, max_pixels)


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


# ---- served models: answers in any convention, read into Med-GRIT markup on 0–1000 ---------------------------------
# The scale each ``predict.endpoint.boxes`` reads coordinates on (``auto``: decided per answer).
SERVED_SCALES: dict[str, str | None] = {"medgrit": "0-1000", "qwen3-vl": "0-1000", "qwen2.5-vl": "pixels", "auto": None}
# Qwen-VL grounding JSON holds flat objects ({"bbox_2d": [...], "label": ...}), fenced or not, in a list or not.
_FLAT_JSON_OBJECT = re.compile(r"\{[^{}]*\}")
Point = tuple[float, float]


@dataclass(frozen=True)
class JsonGrounding:
    """One object of a Qwen-VL JSON answer: a box (``bbox_2d``) or a point (``point_2d``), with its label if any."""

    label: str | None
    box: tuple[float, float, float, float] | None = None
    point: Point | None = None

    def points(self) -> list[Point]:
        return [self.box[:2], self.box[2:]] if self.box else [self.point]


def parse_json_grounding(text: str) -> list[JsonGrounding]:
    """Every ``bbox_2d`` (four numbers) and ``point_2d`` (two) object in ``text``, in order; an object cut short
    (``max_tokens``) or not JSON is skipped. Coordinates are as written (Qwen3-VL: 0–1000; Qwen2.5-VL: pixels)."""
    found = []
    for match in _FLAT_JSON_OBJECT.finditer(text):
        try:
            item = json.loads(match.group(0))
        except ValueError:
            continue
        box, point = _numbers(item.get("bbox_2d"), 4), _numbers(item.get("point_2d"), 2)
        if box or point:
            label = item.get("label")
            found.append(JsonGrounding(label.strip() if isinstance(label, str) and label.strip() else None, box, point))
    return found


def _numbers(value, count: int) -> tuple[float, ...] | None:
    ok = (
        isinstance(value, list)
        and len(value) == count
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )
    return tuple(float(v) for v in value) if ok else None


def json_as_markup(
    items: Sequence[JsonGrounding], style: str, point: Callable[[float, float], tuple[float, float]]
) -> str:
    """The objects in Med-GRIT markup of ``style``, their corners through ``point``:
    ``<ref>label</ref><box>(x1,y1),(x2,y2)</box>``
    (a point is written ``(x,y)``, no box), separated by spaces."""
    open_tag, close_tag = BOX_TAGS[style]
    parts = []
    for item in items:
        corners = ",".join(f"({x:g},{y:g})" for x, y in (point(*p) for p in item.points()))
        ref = format_ref(item.label, style) if item.label else ""
        parts.append(f"{ref}{open_tag}{corners}{close_tag}" if item.box else f"{ref}{corners}")
    return " ".join(parts)


@dataclass(frozen=True)
class ServedAnswer:
    """A served model's answer as clinkd scores it: ``response`` with its boxes on 0–1000 (JSON rewritten as Med-GRIT
    markup); ``box_format`` (``markup``, ``json``, or None: no box), ``box_scale`` it was read on (``0-1000`` or
    ``pixels``), and ``ambiguous`` when both scales fitted its numbers (``auto`` only)."""

    response: str
    box_format: str | None = None
    box_scale: str | None = None
    ambiguous: bool = False


def read_served_answer(
    text: str, boxes: str, style: str, image_size: Size, pixels: PixelBoxes | None = None
) -> ServedAnswer:
    """``text`` read under the convention ``boxes`` (:data:`SERVED_SCALES`; ``pixels`` is the served model's budget,
    needed for ``qwen2.5-vl`` and ``auto``). JSON objects become the whole response in markup of ``style`` (their
    fences and any prose dropped); markup keeps its text, pixel coordinates rewritten to 0–1000."""
    items = parse_json_grounding(text)
    points = [p for item in items for p in item.points()] or _markup_points(text)
    if not points:
        return ServedAnswer(text)
    scale, ambiguous = SERVED_SCALES[boxes], False
    if scale is None:
        scale, ambiguous = auto_scale(points, pixels.resized(image_size))
    if items:
        point = pixels.relative_point(image_size) if scale == "pixels" else (lambda x, y: (x, y))
        return ServedAnswer(json_as_markup(items, style, point), "json", scale, ambiguous)
    return ServedAnswer(pixels.from_model(text, image_size) if scale == "pixels" else text, "markup", scale, ambiguous)


def auto_scale(points: Sequence[Point], resized: Size) -> tuple[str, bool]:
    """``(scale, ambiguous)`` of an answer's points: ``pixels`` only when no coordinate fits 0–1000 but all fit the
    resized image; otherwise ``0-1000``, ambiguous when the pixel reading fitted too."""
    width, height = resized
    fits_relative = all(0 <= v <= SCALE for p in points for v in p)
    fits_pixels = all(0 <= x <= width and 0 <= y <= height for x, y in points)
    if fits_pixels and not fits_relative:
        return "pixels", False
    return "0-1000", fits_relative and fits_pixels


def _markup_points(text: str) -> list[Point]:
    """Both corners of every box :func:`_rewrite` rewrites: the tagged boxes, else the bare pairs."""
    numbers = [m.groups()[1:5] for m in UNSIGNED_TAGGED_BOX.finditer(text)] or [
        m.groups() for m in UNSIGNED_PAIR.finditer(text)
    ]
    return [(float(x), float(y)) for x1, y1, x2, y2 in numbers for x, y in ((x1, y1), (x2, y2))]
