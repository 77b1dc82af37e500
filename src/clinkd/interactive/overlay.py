"""Draw labelled boxes on an image: the model's boxes, the region asked about, the ground truth.

Boxes are canonical (:class:`clinkd.boxes.Box`, corners on the 0–1000 scale of the image). On an
output image of ``W × H`` pixels a corner ``(x, y)`` lands on pixel
``(round(x·W/1000), round(y·H/1000))``, clamped to ``[0, W−1] × [0, H−1]`` (:meth:`Box.to_pixels`);
the outline is drawn inward from those pixels, so it never leaves the box.

Small images (the synthetic set is 112 px) are first enlarged by an integer factor
``k = ⌈min_side / min(W, H)⌉`` so that labels stay readable; the box maths is the same on the
enlarged image because boxes are relative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from PIL import Image, ImageDraw, ImageFont

from clinkd.boxes import Box

DEFAULT_MIN_SIDE = 448


class BoxRole(str, Enum):
    """Why a box is drawn; each role has its own colour (see :data:`ROLE_COLOURS`)."""

    PREDICTED = "predicted"
    QUERY = "query"
    GROUND_TRUTH = "ground truth"


# Red, blue and green from a colour-blind-safe palette; label text is white on these.
ROLE_COLOURS: dict[BoxRole, tuple[int, int, int]] = {
    BoxRole.PREDICTED: (230, 25, 75),
    BoxRole.QUERY: (0, 130, 200),
    BoxRole.GROUND_TRUTH: (60, 180, 75),
}
LABEL_TEXT_COLOUR = (255, 255, 255)


@dataclass(frozen=True)
class LabelledBox:
    """A canonical box, what it is (``label``, e.g. the referred phrase) and why it is drawn."""

    box: Box
    label: str
    role: BoxRole = BoxRole.PREDICTED

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "role": self.role.value,
            "box": [self.box.x1, self.box.y1, self.box.x2, self.box.y2],
        }


def upscale_factor(width: int, height: int, min_side: int | None) -> int:
    """``⌈min_side / min(width, height)⌉``, at least 1 (``None`` or 0 keeps the size)."""
    if not min_side:
        return 1
    return max(1, math.ceil(min_side / min(width, height)))


def pixel_rect(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel corners of ``box`` on a ``width × height`` image, clamped inside it."""
    x1, y1, x2, y2 = box.to_pixels(width, height)

    def clamp(value: float, side: int) -> int:
        return min(max(round(value), 0), side - 1)

    return clamp(x1, width), clamp(y1, height), clamp(x2, width), clamp(y2, height)


def line_width(width: int, height: int) -> int:
    """Outline thickness: 1/150 of the short side, at least 2 px."""
    return max(2, round(min(width, height) / 150))


def draw_boxes(
    image: Image.Image, boxes: Sequence[LabelledBox], min_side: int | None = DEFAULT_MIN_SIDE
) -> Image.Image:
    """A new RGB image with every box outlined in its role's colour and labelled at its top-left corner.

    The label sits on a filled tab of the box's colour just above the box, or just inside it when
    there is no room above. Boxes are drawn in order, so later ones stay on top.
    """
    canvas = image.convert("RGB")
    factor = upscale_factor(*canvas.size, min_side)
    if factor > 1:
        canvas = canvas.resize((canvas.width * factor, canvas.height * factor), Image.Resampling.NEAREST)
    width, height = canvas.size
    stroke = line_width(width, height)
    font = ImageFont.load_default(size=max(10, 6 * stroke))
    draw = ImageDraw.Draw(canvas)
    for item in boxes:
        colour = ROLE_COLOURS[item.role]
        x1, y1, x2, y2 = pixel_rect(item.box, width, height)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=stroke)
        if item.label:
            _draw_label(draw, font, item.label, (x1, y1), colour, (width, height))
    return canvas


def _draw_label(
    draw: ImageDraw.ImageDraw, font, text: str, corner: tuple[int, int], colour, size: tuple[int, int]
) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 2
    tab_width, tab_height = right - left + 2 * pad, bottom - top + 2 * pad
    x = max(0, min(corner[0], size[0] - 1 - tab_width))  # slid left rather than cut at the right edge
    y = corner[1]
    tab_top = y - tab_height if y - tab_height >= 0 else min(y, size[1] - 1 - tab_height)
    draw.rectangle((x, tab_top, x + tab_width, tab_top + tab_height), fill=colour)
    draw.text((x + pad - left, tab_top + pad - top), text, fill=LABEL_TEXT_COLOUR, font=font)
