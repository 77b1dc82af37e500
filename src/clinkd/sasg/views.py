"""What a CLIP scorer looks at for one text: the whole image, or a crop of a box, and the words to score.

One rule serves training (``clinkd clip-train``) and selection (SASG), so the scorer is always asked
the kind of question it was trained on:

=========  ==========================================  =====================================
kind       image view                                  text
=========  ==========================================  =====================================
image      the whole image (MIA)                       the answer, markup removed
region     crop of the box in the *question* (ROC, RC) the answer, markup removed
grounding  crop of each box in the *answer* (VG)       the phrase the question refers to (else the answer's)
=========  ==========================================  =====================================

A grounding answer without a parseable box has no view: SASG marks such a candidate invalid. Grounding
scores the *question's* phrase, so a box is rewarded for containing the object asked about, not the one
the answer happens to name (in training pairs the two are the same).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image

from clinkd.boxes import ANY_REF, ANY_TAGGED_BOX, Box, BoxError, either_group, parse_boxes, referred_phrase
from clinkd.data.records import Turn

TASK_KINDS: dict[str, str] = {"MIA": "image", "ROC": "region", "RC": "region", "VG": "grounding"}

_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class ClipView:
    """One (image region, text) pair to score; ``box=None`` is the whole image."""

    box: Box | None
    text: str


def clip_text(text: str) -> str:
    """``text`` with boxes removed, ``<ref>`` tags unwrapped and whitespace collapsed."""
    unwrapped = ANY_REF.sub(either_group, ANY_TAGGED_BOX.sub(" ", text))
    return _SPACES.sub(" ", unwrapped).strip()


def question_box(question: str) -> Box | None:
    """The one box a region question refers to; ``None`` when it has none, several, or a malformed one."""
    try:
        boxes = parse_boxes(question)
    except BoxError:
        return None
    return boxes[0] if len(boxes) == 1 else None


def answer_views(kind: str, question: str, answer: str) -> list[ClipView] | None:
    """The views that score ``answer`` to ``question``; ``None`` for a grounding answer without a valid box.

    A region question whose box cannot be read falls back to the whole image (the region is unknown).
    """
    if kind == "grounding":
        try:
            boxes = parse_boxes(answer)
        except BoxError:
            return None
        if not boxes:
            return None
        phrase = referred_phrase(question) or referred_phrase(answer) or clip_text(answer)
        return [ClipView(box, phrase) for box in boxes]
    if kind == "region":
        return [ClipView(question_box(question), clip_text(answer))]
    if kind == "image":
        return [ClipView(None, clip_text(answer))]
    raise ValueError(f"unknown view kind {kind!r}; expected one of {', '.join(sorted(set(TASK_KINDS.values())))}")


def turn_kind(turn: Turn) -> str:
    """The kind of an untagged training turn, read off its form (Med-GRIT train files carry no task tag):
    a box in the answer is grounding, a single box in the question is region, anything else is image."""
    try:
        if parse_boxes(turn.answer):
            return "grounding"
    except BoxError:
        return "grounding"  # a malformed answer box: answer_views drops the turn
    return "region" if question_box(turn.question) is not None else "image"


def crop(image: Image.Image, box: Box | None, margin: float) -> Image.Image:
    """The pixels of ``box`` grown by ``margin`` × its side on every side (clipped to the image); the
    whole image for ``box=None``. Never empty: a degenerate box still gives at least one pixel."""
    if box is None:
        return image
    width, height = image.size
    x1, y1, x2, y2 = box.to_pixels(width, height)
    grow_x, grow_y = margin * (x2 - x1), margin * (y2 - y1)
    left = min(max(0, int(x1 - grow_x)), width - 1)
    top = min(max(0, int(y1 - grow_y)), height - 1)
    right = max(min(width, round(x2 + grow_x)), left + 1)
    bottom = max(min(height, round(y2 + grow_y)), top + 1)
    return image.crop((left, top, right, bottom))
