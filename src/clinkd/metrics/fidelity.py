"""Question fidelity: does an answer address what was asked, whatever its score?

A model can score above a prior while answering from the image's modality alone (the same structure for every
CT question). These shares show it, for any rows of answers (a model's test predictions or a teacher's pseudo
labels), each over the answers it applies to:

* ``names_asked`` (VG): the answer names the structure the question asks for: its first ``<ref>`` phrase is the
  question's (case and spacing folded); an answer without a ``<ref>`` names it when the phrase occurs in its
  words.
* ``parseable_box`` (VG): the answer holds a box :func:`clinkd.boxes.parse_boxes` accepts (a valid 0–1000 box).
* ``modality_class`` (ROC): the answer is one of the class names known for the image's modality (the training
  split's ROC answers, :func:`modality_classes`).

Answers are read after the scorer's clean-up (:func:`clinkd.metrics.cleanup.clean_response`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from clinkd.boxes import BoxError, answer_text, parse_boxes, referred_phrase
from clinkd.data.records import Prediction, Sample, canonical_task, infer_task
from clinkd.metrics.cleanup import clean_response

FIDELITY_LABELS = {
    "names_asked": "VG names the asked structure",
    "parseable_box": "VG has a parseable box",
    "modality_class": "ROC answers a class of the modality",
}


def folded(text: str) -> str:
    """Lower case, single spaces."""
    return " ".join(text.lower().split())


def names_asked(question: str, answer: str) -> bool | None:
    """Whether ``answer`` names the question's ``<ref>`` phrase; ``None`` when the question names nothing."""
    asked = referred_phrase(question)
    if asked is None:
        return None
    said = referred_phrase(answer)
    if said is not None:
        return folded(said) == folded(asked)
    return re.search(rf"\b{re.escape(folded(asked))}\b", folded(answer_text(answer))) is not None


def has_parseable_box(answer: str) -> bool:
    try:
        return bool(parse_boxes(answer))
    except BoxError:
        return False


def modality_classes(train: Iterable[Sample]) -> dict[str, set[str]]:
    """Modality → the class names its training ROC turns answer (folded)."""
    classes: dict[str, set[str]] = {}
    for sample in train:
        for turn in sample.turns:
            if infer_task(turn) == "ROC":
                classes.setdefault(sample.modality, set()).add(folded(answer_text(turn.answer)))
    return classes


def named_classes(text: str, classes: set[str]) -> set[str]:
    """The ``classes`` (folded names) whose name occurs as whole words in the answer text of ``text``."""
    words = folded(answer_text(text))
    return {name for name in classes if re.search(rf"\b{re.escape(name)}\b", words)}


def question_fidelity(predictions: Iterable[Prediction], classes: Mapping[str, set[str]]) -> dict[str, dict]:
    """``{share name: {"value": share or None, "n": answers it applies to}}`` for the three shares above."""
    return answer_fidelity(
        ((canonical_task(row.task), row.modality, row.question, row.response) for row in predictions), classes
    )


def answer_fidelity(answers: Iterable[tuple[str, str, str, str]], classes: Mapping[str, set[str]]) -> dict[str, dict]:
    """:func:`question_fidelity` of ``(task, modality, question, response)`` tuples (pseudo labels carry their
    training turn's task, read with :func:`~clinkd.data.records.infer_task`)."""
    counts = {name: [0, 0] for name in FIDELITY_LABELS}

    def note(name: str, passed: bool) -> None:
        counts[name][0] += passed
        counts[name][1] += 1

    for task, modality, question, response in answers:
        answer = clean_response(response)
        if task == "VG":
            named = names_asked(question, answer)
            if named is not None:
                note("names_asked", named)
            note("parseable_box", has_parseable_box(answer))
        elif task == "ROC" and classes:
            note("modality_class", folded(answer_text(answer)) in classes.get(modality, set()))
    return {name: {"value": passed / total if total else None, "n": total} for name, (passed, total) in counts.items()}
