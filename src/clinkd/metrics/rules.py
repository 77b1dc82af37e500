"""Per-sample scoring rules of BiRD's VG and ROC scripts (``eval_VG/RO_score_modality.py``).

VG boxes are read the way BiRD reads them, not with :func:`clinkd.boxes.parse_boxes`: BiRD scores
any four numbers inside a box tag (out-of-range or inverted corners included, a malformed one as
IoU 0) and its bare fallback takes integers only, while :class:`clinkd.boxes.Box` validates the
0–1000 corner convention and reads decimals.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

Corners = tuple[float, float, float, float]
IOU_THRESHOLD = 0.5
_BIRD_TAGGED = re.compile(r"<box>(.*?)</box>")
# clinkd also reads Qwen2-VL's box tokens as tags.
_ANY_TAGGED = re.compile(r"<box>(.*?)</box>|<\|box_start\|>(.*?)<\|box_end\|>")
_BARE_INTEGER_PAIR = re.compile(r"\(\d+,\d+\),\(\d+,\d+\)")


def box_strings(text: str, bird_exact: bool = False, fallback: bool = True) -> list[str]:
    """The box contents in ``text``, in order.

    Tagged boxes (``<box>…</box>``; also ``<|box_start|>…<|box_end|>`` unless ``bird_exact``); when
    there is none and ``fallback``, every bare integer pair ``(x1,y1),(x2,y2)`` (no spaces), as BiRD
    reads predictions. Ground truth is read without the fallback.
    """
    if bird_exact:
        found = _BIRD_TAGGED.findall(text)
    else:
        found = [tag or token for tag, token in _ANY_TAGGED.findall(text)]
    if not found and fallback:
        found = _BARE_INTEGER_PAIR.findall(text)
    return found


def corners(content: str) -> Corners | None:
    """BiRD's parse: drop ``(`` and ``)``, split on ``,``, ``float()`` each. ``None`` unless exactly four
    finite numbers come out (BiRD then scores IoU 0: a failed parse, a wrong shape or a NaN IoU)."""
    try:
        values = [float(part) for part in content.replace("(", "").replace(")", "").split(",")]
    except ValueError:
        return None
    if len(values) != 4 or not all(math.isfinite(value) for value in values):
        return None
    return (values[0], values[1], values[2], values[3])


def bird_iou(a: Corners, b: Corners) -> float:
    """``I/(A_a + A_b − I)`` with ``I = max(0, min x2 − max x1)·max(0, min y2 − max y1)`` and
    ``A = (x2−x1)(y2−y1)``: no +1, no clipping, no corner validation; 0 when the union is not positive
    (BiRD's NaN, which never counts as a hit)."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class GroundingOutcome:
    """One VG sample: ``hits`` of its ``gt_boxes`` found; ``predicted`` box strings read from the
    response, of which ``malformed`` did not parse."""

    gt_boxes: int
    hits: int
    predicted: int
    malformed: int


def ground_truth_corners(annotation: str, bird_exact: bool = False) -> list[Corners]:
    """The boxes of a VG annotation; ``ValueError`` for one that does not parse into four finite numbers (a NaN
    included), which BiRD crashes on too."""
    gt = []
    for content in box_strings(annotation, bird_exact, fallback=False):
        box = corners(content)
        if box is None:
            raise ValueError(f"unparseable ground-truth box {content!r} in annotation {annotation!r}")
        gt.append(box)
    return gt


def score_grounding(annotation: str, response: str, bird_exact: bool = False) -> GroundingOutcome:
    """A GT box is found iff some predicted box has IoU **strictly above** 0.5 with it; predictions may
    serve several GT boxes and extra predictions cost nothing. Raises ``ValueError`` for a GT box that
    does not parse (:func:`ground_truth_corners`)."""
    gt = ground_truth_corners(annotation, bird_exact)
    predicted = [corners(content) for content in box_strings(response, bird_exact)]
    boxes = [box for box in predicted if box is not None]
    hits = sum(any(bird_iou(p, g) > IOU_THRESHOLD for p in boxes) for g in gt)
    return GroundingOutcome(len(gt), hits, len(predicted), len(predicted) - len(boxes))


def classification_correct(annotation: str, response: str) -> bool:
    """BiRD's ROC rule: every token of ``annotation.lower().split(" ")`` is a substring of
    ``response.lower()`` (order ignored, extra words allowed, ``lung`` matches ``lungs``)."""
    response = response.lower()
    return all(token in response for token in annotation.lower().split(" "))
