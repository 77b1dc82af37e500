"""Trivial baselines on the test samples, fitted on what a model could know (the training split) and scored with
the same protocol as a model.

* ``centre box`` (VG): always ``<box>(250,250),(750,750)</box>``, the fixed centred box of half the
  image side (a quarter of its area). It is fixed, not fitted.
* ``name prior box`` (VG): per modality and referred phrase (the question's ``<ref>``), the
  per-coordinate median of the boxes of the **training** split's VG turns with that phrase. It knows where
  each named structure usually lies and never looks at the image, so a model below it has not grounded
  anything beyond the name. Medians keep ``x1 ≤ x2`` and ``y1 ≤ y2`` (order statistics of ordered pairs);
  a phrase the training split never asks about answers its modality's median VG box, and a modality without
  one the centre box.
* ``majority class`` (ROC): per modality, the most frequent answer of the **training** split's ROC turns: a
  model below it has not learnt more than the class frequencies.
* ``most frequent answer`` (RC and MIA): per task and modality, the most frequent training answer (the
  same prior for free text).

Training turns carry no task: it is read off each turn (:func:`clinkd.data.records.infer_task`). Ties go to
the answer seen first in training order. Each baseline answers only its own tasks, and a fitted one only the
tasks the training split has turns of (without a training split, only the centre box is scored). None of them
reads a test label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from statistics import median

from clinkd.boxes import Box, BoxError, BoxStyle, parse_boxes, referred_phrase
from clinkd.data.records import Prediction, Sample, Turn, canonical_task, infer_task

CENTRE_BOX = Box(250, 250, 750, 750)
FITTED_ON = {
    "centre box": "fixed, not fitted",
    "name prior box": "training split: median VG box per modality and asked name",
    "majority class": "training split: most frequent ROC answer per modality",
    "most frequent answer": "training split: most frequent answer per task and modality",
}


def baseline_predictions(samples: Iterable[Sample], train: Sequence[Sample] = ()) -> dict[str, list[Prediction]]:
    """Baseline name → its predictions for the test samples of its tasks (samples need ``task``), fitted on the
    ``train`` records' turns; without them, the centre box only."""
    by_task: dict[str, list[Sample]] = {}
    for sample in samples:
        if sample.task is None:
            raise ValueError(f"sample {sample.id!r} ({sample.source or 'no source'}) has no task: not a test sample")
        by_task.setdefault(canonical_task(sample.task), []).append(sample)
    turns = training_turns(train)
    baselines: dict[str, list[Prediction]] = {}
    for name, (tasks, answers_for) in BASELINES.items():
        rows = []
        for task in tasks:
            task_samples = by_task.get(task, [])
            answers = answers_for(task_samples, turns.get(task, []))
            rows.extend(_prediction(task, sample, answer) for sample, answer in zip(task_samples, answers))
        if rows:
            baselines[name] = rows
    return baselines


def training_turns(train: Sequence[Sample]) -> dict[str, list[tuple[str, Turn]]]:
    """Task → ``(modality, turn)`` of every training turn, in training order."""
    turns: dict[str, list[tuple[str, Turn]]] = {}
    for sample in train:
        for turn in sample.turns:
            turns.setdefault(infer_task(turn), []).append((sample.modality, turn))
    return turns


def most_frequent_per_modality(samples: Sequence[Sample], fitted: Sequence[tuple[str, Turn]]) -> list[str]:
    """For each sample, the most frequent ``fitted`` answer of its modality (of any modality when its own has none);
    nothing without fitted turns."""
    if not fitted:
        return []
    counters: dict[str, Counter[str]] = {}
    overall: Counter[str] = Counter()
    for modality, turn in fitted:
        counters.setdefault(modality, Counter())[turn.answer] += 1
        overall[turn.answer] += 1
    # Counter.most_common keeps first-insertion order among equal counts.
    return [counters.get(sample.modality, overall).most_common(1)[0][0] for sample in samples]


def centre_box(samples: Sequence[Sample], fitted: Sequence[tuple[str, Turn]]) -> list[str]:
    return [CENTRE_BOX.to_text(BoxStyle.QWEN_VL)] * len(samples)


def name_prior_boxes(samples: Sequence[Sample], fitted: Sequence[tuple[str, Turn]]) -> list[str]:
    """For each sample, the per-coordinate median box of the ``fitted`` VG turns of its modality and referred phrase
    (of its modality when that phrase is never asked; the centre box when the modality has none); nothing without
    fitted turns."""
    if not fitted:
        return []
    by_name: dict[tuple[str, str | None], list[Box]] = {}
    by_modality: dict[str, list[Box]] = {}
    for modality, turn in fitted:
        box = _first_box(turn.answer)
        if box is not None:
            by_name.setdefault((modality, referred_phrase(turn.question)), []).append(box)
            by_modality.setdefault(modality, []).append(box)
    answers = []
    for sample in samples:
        key = (sample.modality, referred_phrase(sample.turns[0].question))
        boxes = by_name.get(key) or by_modality.get(sample.modality, [])
        answers.append(_median_box(boxes).to_text(BoxStyle.QWEN_VL))
    return answers


def _first_box(answer: str) -> Box | None:
    try:
        boxes = parse_boxes(answer)
    except BoxError:
        return None  # the scorer reports malformed GT boxes; a prior simply does without them
    return boxes[0] if boxes else None


def _median_box(boxes: Sequence[Box]) -> Box:
    if not boxes:
        return CENTRE_BOX
    return Box(*(median(getattr(box, corner) for box in boxes) for corner in ("x1", "y1", "x2", "y2"))).rounded()


# name → (the tasks it answers, its answers for one task's test samples in order, given that task's training turns)
BASELINES: dict[str, tuple[tuple[str, ...], Callable[[Sequence[Sample], Sequence[tuple[str, Turn]]], list[str]]]] = {
    "centre box": (("VG",), centre_box),
    "name prior box": (("VG",), name_prior_boxes),
    "majority class": (("ROC",), most_frequent_per_modality),
    "most frequent answer": (("RC", "MIA"), most_frequent_per_modality),
}


def _prediction(task: str, sample: Sample, response: str) -> Prediction:
    return Prediction.for_sample(task, sample, response, {"baseline": True})
