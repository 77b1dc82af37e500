"""One canonical bounding-box type and its text/pixel conventions.

Canonical form: ``Box(x1, y1, x2, y2)`` with the top-left and bottom-right corners on the
**0–1000 relative scale** of the original image (Qwen-VL and Qwen2-VL's convention, and the
scale Med-GRIT and every metric here use). Coordinates are floats so that a pixel box converts
in and out without loss; the text forms write integers.

Text conventions (``BoxStyle``):

* ``qwen-vl``   — ``<ref>X</ref><box>(x1,y1),(x2,y2)</box>`` (BiRD / Med-GRIT files)
* ``qwen2-vl``  — ``<|object_ref_start|>X<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``
* ``qwen3-vl``  — Qwen3-VL's (and Qwen3.5's) native JSON, ``{"bbox_2d": [x1, y1, x2, y2], "label": "X"}``, on
  the same 0–1000 scale; a lone ``<ref>X</ref>`` is written as plain ``X``. Answers may also hold
  ``{"point_2d": [x, y]}``, read as the zero-size box at that point (:func:`json_boxes`).
* ``plain``     — ``(x1,y1),(x2,y2)``

Qwen2.5-VL uses absolute pixels of the resized image instead: see :meth:`Box.to_pixels` and
:meth:`Box.from_pixels`. Converting to integer pixels is lossy whenever a side is under 1000 px;
the float conversion is exact up to floating-point rounding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Literal

SCALE = 1000


class BoxError(ValueError):
    """A box that cannot be parsed or violates the 0–1000 corner convention."""


class BoxStyle(str, Enum):
    QWEN_VL = "qwen-vl"
    QWEN2_VL = "qwen2-vl"
    QWEN3_VL = "qwen3-vl"
    PLAIN = "plain"


# The styles a model is trained to read and write (plain has no tags to find a box by).
ModelBoxStyle = Literal["qwen2-vl", "qwen-vl", "qwen3-vl"]


def _pair_pattern(signed: bool = True) -> str:
    """Regex text of a bare ``(x1,y1),(x2,y2)`` with the four numbers as groups; ``signed=False`` takes no minus
    sign."""
    number = rf"\s*({'-?' if signed else ''}\d+(?:\.\d+)?)\s*"
    return rf"\({number},{number}\)\s*,\s*\({number},{number}\)"


_PAIR = _pair_pattern()
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
BOX_PATTERNS = {
    BoxStyle.QWEN_VL: re.compile(rf"<box>\s*{_PAIR}\s*</box>"),
    BoxStyle.QWEN2_VL: re.compile(rf"<\|box_start\|>\s*{_PAIR}\s*<\|box_end\|>"),
    BoxStyle.QWEN3_VL: re.compile(rf'"bbox_2d"\s*:\s*\[{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}\]'),
    BoxStyle.PLAIN: re.compile(_PAIR),
}
JSON_POINT = re.compile(rf'"point_2d"\s*:\s*\[{_NUMBER},{_NUMBER}\]')
# One flat JSON object holding a bbox_2d or a point_2d, as Qwen3-VL writes them (alone, in a list, in a ```json block).
JSON_OBJECT = re.compile(r'\{[^{}]*"(?:bbox|point)_2d"[^{}]*\}')
JSON_LABEL = re.compile(r'"label"\s*:\s*"((?:[^"\\]|\\.)*)"')
# (opening, closing) markup of each style's boxes and referring phrases (PLAIN has none).
BOX_TAGS = {
    BoxStyle.QWEN_VL: ("<box>", "</box>"),
    BoxStyle.QWEN2_VL: ("<|box_start|>", "<|box_end|>"),
    BoxStyle.PLAIN: ("", ""),
}
REF_TAGS = {
    BoxStyle.QWEN_VL: ("<ref>", "</ref>"),
    BoxStyle.QWEN2_VL: ("<|object_ref_start|>", "<|object_ref_end|>"),
    BoxStyle.QWEN3_VL: ("", ""),
    BoxStyle.PLAIN: ("", ""),
}
# Any tagged box, in either tag style, with whatever is inside (validated separately).
ANY_TAGGED_BOX = re.compile(r"<box>(.*?)</box>|<\|box_start\|>(.*?)<\|box_end\|>", re.DOTALL)
# Model coordinates (pixels) are never negative: an unsigned pair, bare or between an opening and a closing tag of
# either style (groups: open tag, x1, y1, x2, y2, close tag).
UNSIGNED_PAIR = re.compile(_pair_pattern(signed=False))
UNSIGNED_TAGGED_BOX = re.compile(rf"(<box>|<\|box_start\|>)\s*{UNSIGNED_PAIR.pattern}\s*(</box>|<\|box_end\|>)")
ANY_REF = re.compile(r"<ref>(.*?)</ref>|<\|object_ref_start\|>(.*?)<\|object_ref_end\|>", re.DOTALL)
# A referring phrase directly followed by its box (groups: the phrase in either tag style, then the whole box).
REF_THEN_BOX = re.compile(
    r"(?:<ref>([^<]*)</ref>|<\|object_ref_start\|>([^<]*)<\|object_ref_end\|>)\s*(<box>.*?</box>|<\|box_start\|>.*?<\|box_end\|>)",
    re.DOTALL,
)


def either_group(match: re.Match) -> str:
    """What the ref/box pattern matched inside whichever tag style it found (group 1 or group 2)."""
    return match.group(1) if match.group(1) is not None else match.group(2)


@dataclass(frozen=True)
class Box:
    """Corners on the 0–1000 relative scale; ``x1 <= x2`` and ``y1 <= y2``."""

    x1: float
    y1: float
    x2: float
    y2: float

    def __post_init__(self) -> None:
        for name in ("x1", "y1", "x2", "y2"):
            value = getattr(self, name)
            if not 0 <= value <= SCALE:
                raise BoxError(f"{name}={value:g} is outside the 0–{SCALE} scale in {self._raw()}")
        if self.x2 < self.x1:
            raise BoxError(f"x2 < x1 in {self._raw()}")
        if self.y2 < self.y1:
            raise BoxError(f"y2 < y1 in {self._raw()}")

    def _raw(self) -> str:
        return f"({self.x1:g},{self.y1:g}),({self.x2:g},{self.y2:g})"

    # ---- text -------------------------------------------------------------------------------
    def to_text(self, style: BoxStyle | str = BoxStyle.QWEN2_VL) -> str:
        """Render with integer coordinates, e.g. ``<|box_start|>(1,2),(3,4)<|box_end|>``."""
        style = BoxStyle(style)
        if style is BoxStyle.QWEN3_VL:
            return self.to_json()
        coords = f"({round(self.x1)},{round(self.y1)}),({round(self.x2)},{round(self.y2)})"
        open_tag, close_tag = BOX_TAGS[style]
        return f"{open_tag}{coords}{close_tag}"

    def to_json(self, label: str | None = None) -> str:
        """Qwen3-VL's JSON object: ``{"bbox_2d": [1, 2, 3, 4]}``, with ``"label"`` when given."""
        fields = {"bbox_2d": [round(self.x1), round(self.y1), round(self.x2), round(self.y2)]}
        if label is not None:
            fields["label"] = label
        return json.dumps(fields, ensure_ascii=False)

    @classmethod
    def from_text(cls, text: str) -> "Box":
        """Parse exactly one box in any style; raises :class:`BoxError` otherwise."""
        boxes = parse_boxes(text)
        if len(boxes) != 1:
            raise BoxError(f"expected exactly one box, found {len(boxes)} in {text!r}")
        return boxes[0]

    # ---- pixels (Qwen2.5-VL) ------------------------------------------------------------------
    def to_pixels(self, width: float, height: float) -> tuple[float, float, float, float]:
        """Absolute pixel corners for an image of ``width`` × ``height``."""
        return (
            self.x1 * width / SCALE,
            self.y1 * height / SCALE,
            self.x2 * width / SCALE,
            self.y2 * height / SCALE,
        )

    @classmethod
    def from_pixels(cls, x1: float, y1: float, x2: float, y2: float, width: float, height: float) -> "Box":
        """Inverse of :meth:`to_pixels`."""
        if width <= 0 or height <= 0:
            raise BoxError(f"image size must be positive, got {width}×{height}")
        return cls(x1 * SCALE / width, y1 * SCALE / height, x2 * SCALE / width, y2 * SCALE / height)

    def rounded(self) -> "Box":
        """The integer box that the text forms write."""
        return Box(round(self.x1), round(self.y1), round(self.x2), round(self.y2))

    # ---- geometry ---------------------------------------------------------------------------
    @property
    def area(self) -> float:
        return (self.x2 - self.x1) * (self.y2 - self.y1)

    def iou(self, other: "Box") -> float:
        """Intersection over union, no +1 and no clipping (BiRD's rule)."""
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


def parse_boxes(text: str, style: BoxStyle | str | None = None) -> list[Box]:
    """Every box in ``text``, in order.

    With ``style=None`` tagged boxes of either style are read; without one, Qwen3-VL's JSON boxes
    and points (:func:`json_boxes`); without those, bare ``(x1,y1),(x2,y2)`` pairs. Raises
    :class:`BoxError` for a tagged box whose content does not parse or breaks the 0–1000 corner convention.
    """
    if style is not None:
        style = BoxStyle(style)
        return (
            json_boxes(text)
            if style is BoxStyle.QWEN3_VL
            else [_box_from_match(m) for m in BOX_PATTERNS[style].finditer(text)]
        )
    tagged = list(ANY_TAGGED_BOX.finditer(text))
    if not tagged:
        return json_boxes(text) or [_box_from_match(m) for m in BOX_PATTERNS[BoxStyle.PLAIN].finditer(text)]
    boxes = []
    for match in tagged:
        inner = either_group(match)
        plain = BOX_PATTERNS[BoxStyle.PLAIN].fullmatch(inner.strip())
        if plain is None:
            raise BoxError(f"unparseable box {match.group(0)!r}")
        boxes.append(_box_from_match(plain))
    return boxes


def _box_from_match(match: re.Match) -> Box:
    return Box(*(float(v) for v in match.groups()))


def json_boxes(text: str) -> list[Box]:
    """Every ``"bbox_2d": [x1, y1, x2, y2]`` and ``"point_2d": [x, y]`` in ``text`` (Qwen3-VL's answers), in order;
    a point is the zero-size box at it. The numbers are read where they stand, so a truncated or fenced JSON
    answer still gives its complete boxes."""
    found = [(m.start(), _box_from_match(m)) for m in BOX_PATTERNS[BoxStyle.QWEN3_VL].finditer(text)]
    found += [(m.start(), Box(*(float(v) for v in m.groups() * 2))) for m in JSON_POINT.finditer(text)]
    return [box for _, box in sorted(found, key=lambda item: item[0])]


def json_to_markup(text: str, style: BoxStyle | str = BoxStyle.QWEN_VL) -> str:
    """Qwen3-VL's JSON boxes rewritten as ``<ref>label</ref><box>…</box>`` (in ``style``'s tags): each object with a
    ``bbox_2d`` or ``point_2d`` becomes its markup; an answer that is nothing but such objects (in a list or a
    ```json block) becomes their markup alone. Other text is kept; an object with a broken box is left as it is."""
    style = BoxStyle(style)
    objects = list(JSON_OBJECT.finditer(text))

    def markup(match: re.Match) -> str:
        found = match.group(0)
        label = JSON_LABEL.search(found)
        try:
            boxes, phrase = json_boxes(found), json.loads(f'"{label.group(1)}"') if label else None
        except ValueError:  # a box off the 0–1000 grid, or a label that is no JSON string
            return found
        if len(boxes) != 1:
            return found
        return (format_ref(phrase, style) if phrase is not None else "") + boxes[0].to_text(style)

    rest = JSON_OBJECT.sub("", text)
    if objects and not re.sub(r"```(?:json)?|[\[\],\s]", "", rest):
        return "".join(markup(match) for match in objects)
    return JSON_OBJECT.sub(markup, text)


def convert_markup(text: str, style: BoxStyle | str) -> str:
    """Rewrite every ``<ref>``/box markup in ``text`` to ``style``; coordinates are unchanged.

    Boxes are validated on the way (a bad box raises :class:`BoxError`), so a converted file never
    carries a box that the loaders would refuse. In the ``qwen3-vl`` style a phrase followed by its box becomes
    one JSON object, ``{"bbox_2d": […], "label": phrase}``.
    """
    style = BoxStyle(style)
    if style is BoxStyle.QWEN3_VL:
        text = REF_THEN_BOX.sub(lambda m: Box.from_text(m.group(3)).to_json(either_group(m).strip()), text)

    def box(match: re.Match) -> str:
        return Box.from_text(match.group(0)).to_text(style)

    def ref(match: re.Match) -> str:
        inner = either_group(match)
        open_tag, close_tag = REF_TAGS[style]
        return f"{open_tag}{inner}{close_tag}"

    return ANY_REF.sub(ref, ANY_TAGGED_BOX.sub(box, text))


def convert_markup_leniently(text: str, style: BoxStyle | str) -> str:
    """:func:`convert_markup`, or ``text`` as it is when a box in it is broken (text to show or send, never to
    parse)."""
    try:
        return convert_markup(text, style)
    except BoxError:
        return text


def referred_phrase(text: str) -> str | None:
    """The content of the first ``<ref>`` (either tag style), stripped; ``None`` without one."""
    match = ANY_REF.search(text)
    if match is None:
        return None
    phrase = either_group(match).strip()
    return phrase or None


# Box spans (either tag style) go entirely; ref tags and any other special token go but leave their text.
_MARKUP = re.compile(rf"{ANY_TAGGED_BOX.pattern}|</?ref>|<\|[a-z_]+\|>", re.DOTALL)


def answer_text(text: str) -> str:
    """The words of an answer: box spans removed, ref tags and other special tokens dropped, spaces squeezed."""
    return " ".join(_MARKUP.sub(" ", text).split())


def format_ref(phrase: str, style: BoxStyle | str = BoxStyle.QWEN_VL) -> str:
    style = BoxStyle(style)
    open_tag, close_tag = REF_TAGS[style]
    return f"{open_tag}{phrase}{close_tag}"
