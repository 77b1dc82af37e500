"""Which of the four tasks a training turn belongs to.

Training records mix the four tasks in one conversation and do not name them, so the task is read off
the turn itself (Med-GRIT's conventions, ``docs/data.md``):

* the answer has a box                                   → VG (grounding)
* the question has a box, the answer ≤ ``LABEL_MAX_WORDS``  → ROC (a class name)
* the question has a box, a longer answer                → RC (a caption)
* no box anywhere                                        → MIA (whole-image analysis)

The task only labels reports and picks the template corrector's phrasings; nothing is scored by it.
"""

from __future__ import annotations

from clinkd.boxes import parse_boxes
from clinkd.data.records import Turn
from clinkd.reflect.similarity import answer_text

LABEL_MAX_WORDS = 4


def infer_task(turn: Turn) -> str:
    """``VG | ROC | RC | MIA`` of one QA turn (rules in the module docstring)."""
    if parse_boxes(turn.answer):
        return "VG"
    if parse_boxes(turn.question):
        return "ROC" if len(answer_text(turn.answer).split()) <= LABEL_MAX_WORDS else "RC"
    return "MIA"
