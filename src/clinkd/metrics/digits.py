"""Teacher-forced cross-entropy of box coordinates, per coordinate and per digit place (the grounding diagnostic).

A VG answer spells each box digit by digit: Qwen2's pre-tokenizer makes every digit a token of its own, in the
real vocabulary and in clinkd's locally trained one alike. Averaging the answer loss over all tokens hides
grounding; reading it per **coordinate** (``x1, y1, x2, y2``) and per **digit place** shows it: the first digit
of a 0–1000 coordinate is the coarse position (a tenth of the image), the second a ~1 px step at 112 px, the
third nearly fixed by the first two (docs/benchmarks.md, "Per-digit CE"). A model that guesses a digit
uniformly scores ``ln 10 = 2.303`` nats (:data:`UNIFORM_DIGIT_CE`).

Definitions (what :func:`coordinate_digits` locates and :class:`DigitCE` averages):

* **Sequence**: the decoded tokens of one collated example (``tokenizer.convert_ids_to_tokens``), a mask that is
  true on the answer tokens (``labels != -100``), and ``ce[i] = -log p(token i | tokens before i)``, the
  teacher-forced loss *of* token ``i`` (the logits at ``i - 1``). Log-probs work too, negated.
* **Box**: every tagged box in the concatenated token strings, in text order, in either markup:
  ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` (Qwen2-VL) or ``<box>(x1,y1),(x2,y2)</box>`` (Qwen-VL), read
  with the very patterns of :func:`clinkd.boxes.parse_boxes`; bare ``(x1,y1),(x2,y2)`` pairs are not read.
* **Place**: the position of a digit within its coordinate counted **from the left**, 1, 2 or 3: the order in
  which the model emits them, so place 1 is always the first decision about a coordinate whatever its length.
  Short numbers fill only their first places (``45`` → places 1–2, ``7`` → place 1), so the counts per place
  differ. ``1000``, the only 4-digit coordinate, counts its ``1``, ``0``, ``0`` in places 1–3; its last ``0``
  is in no place.
* A digit counts only where the mask is true: boxes in a question, and padding, are located but not averaged.

Each digit must be a token of its own and each coordinate a non-negative integer (what clinkd's collator writes);
anything else raises ``ValueError`` rather than silently reading a merged token as one place.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from clinkd.boxes import BOX_PATTERNS, BoxStyle

COORDINATES = ("x1", "y1", "x2", "y2")
PLACES = (1, 2, 3)
UNIFORM_DIGIT_CE = math.log(10)
_KEYS = [(coordinate, place) for coordinate in COORDINATES for place in PLACES]
# parse_boxes' own patterns (boxes.py has no public name for them): one definition of a box's text.
_TAGGED_BOXES = (BOX_PATTERNS[BoxStyle.QWEN2_VL], BOX_PATTERNS[BoxStyle.QWEN_VL])


@dataclass(frozen=True)
class CoordinateDigit:
    """One digit of a box: ``box`` (0-based, in text order), ``coordinate`` (x1…y2), ``place`` (1–3), ``token``
    index."""

    box: int
    coordinate: str
    place: int
    token: int


def coordinate_digits(tokens: Sequence[str]) -> list[CoordinateDigit]:
    """The digits of every tagged box in ``tokens`` with their places (see the module docstring), in text order."""
    text = "".join(tokens)
    owner = [index for index, token in enumerate(tokens) for _ in token]  # character → its token
    boxes = sorted((match for pattern in _TAGGED_BOXES for match in pattern.finditer(text)), key=lambda m: m.start())
    digits = []
    for box, match in enumerate(boxes):
        for group, coordinate in enumerate(COORDINATES, start=1):
            start = _checked_start(match, group, tokens, owner)
            places = PLACES[: len(match.group(group))]  # 1000's fourth digit falls off here
            digits += [CoordinateDigit(box, coordinate, place, owner[start + place - 1]) for place in places]
    return digits


def _checked_start(match: re.Match, group: int, tokens: Sequence[str], owner: list[int]) -> int:
    """Where coordinate ``group`` of ``match`` starts, after checking it is an integer spelled one digit per token."""
    number = match.group(group)
    if not number.isdigit():
        raise ValueError(f"box coordinate {number!r} in {match.group(0)!r} is not a non-negative integer")
    start = match.start(group)
    for offset, digit in enumerate(number):
        token = tokens[owner[start + offset]]
        if token != digit:
            raise ValueError(
                f"digit {digit!r} of {match.group(0)!r} is inside token {token!r}: per-digit CE needs one digit per "
                "token"
            )
    return start


@dataclass
class DigitCE:
    """Mean cross-entropy per (coordinate, place) over many sequences, with the number of digits behind each mean."""

    total: dict[tuple[str, int], float] = field(default_factory=lambda: dict.fromkeys(_KEYS, 0.0))
    count: dict[tuple[str, int], int] = field(default_factory=lambda: dict.fromkeys(_KEYS, 0))

    def add(self, tokens: Sequence[str], mask: Sequence[bool], ce: Sequence[float]) -> None:
        """Add one sequence: its decoded ``tokens``, the answer ``mask`` and the per-token ``ce`` (all aligned)."""
        if not len(tokens) == len(mask) == len(ce):
            raise ValueError(f"tokens, mask and ce differ in length: {len(tokens)}, {len(mask)}, {len(ce)}")
        for digit in coordinate_digits(tokens):
            if mask[digit.token]:
                key = (digit.coordinate, digit.place)
                self.total[key] += float(ce[digit.token])
                self.count[key] += 1

    def mean(self, coordinate: str, place: int) -> float:
        """Mean CE of that digit place of that coordinate; NaN when no such digit was seen."""
        count = self.count[coordinate, place]
        return self.total[coordinate, place] / count if count else math.nan

    def first_digit(self) -> float:
        """Mean CE over every first digit, all coordinates pooled; NaN when there is none."""
        count = sum(self.count[c, 1] for c in COORDINATES)
        return sum(self.total[c, 1] for c in COORDINATES) / count if count else math.nan

    def as_dict(self) -> dict:
        """``{"ce": {coordinate: [place 1, 2, 3]}, "count": {…}, "first_digit": mean}`` (JSON-ready; NaN → None)."""
        return {
            "ce": {c: [_finite_or_none(self.mean(c, p)) for p in PLACES] for c in COORDINATES},
            "count": {c: [self.count[c, p] for p in PLACES] for c in COORDINATES},
            "first_digit": _finite_or_none(self.first_digit()),
        }


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value
