"""Trivial baselines on the test samples, scored with the same protocol as a model.

* ``centre box`` (VG): always ``<box>(250,250),(750,750)</box>``, the fixed centred box of half the
  image side (a quarter of its area). It is fixed, not fitted.
* ``name prior box`` (VG): per modality and referred phrase (the question's ``<ref>``), the
  per-coordinate median of the first GT box of those **test** records. Like the majority class it is
  an oracle prior that reads the test labels: it knows where each named structure usually lies and
  never looks at the image, so a model below it has not grounded anything beyond the name. Medians
  keep ``x1 ≤ x2`` and ``y1 ≤ y2`` (order statistics of ordered pairs); a group without a GT box
  answers the centre box.
* ``majority class`` (ROC): per modality, the most frequent **test** annotation. This is an oracle
  prior (it reads the test labels), the usual "majority" reference point: a model below it has not
  learnt more than the class frequencies.
* ``most frequent answer`` (RC and MIA): per task and modality, the most frequent test annotation
  (the same oracle prior for free text).

Ties go to the answer seen first in test order. Each baseline answers only its own tasks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from statistics import median

from clinkd.boxes import Box, BoxError, BoxStyle, parse_boxes, referred_phrase
from clinkd.data.records import Prediction, Sample, canonical_task

CENTRE_BOX = Box(250, 250, 750, 750)


def baseline_predictions(samples: Iterable[Sample]) -> dict[str, list[Prediction]]:
    """Baseline name → its predictions for the test samples of its tasks (samples need ``task``)."""
    by_task: dict[str, list[Sample]] = {}
    for sample in samples:
        if sample.task is None:
            raise ValueError(f"sample {sample.id!r} ({sample.source or 'no source'}) has no task: not a test sample")
        by_task.setdefault(canonical_task(sample.task), []).append(sample)
    baselines: dict[str, list[Prediction]] = {}
    for name, (tasks, answers_for) in BASELINES.items():
        rows = []
        for task in tasks:
            task_samples = by_task.get(task, [])
            answers = answers_for(task_samples)
            rows.extend(_prediction(task, sample, answer) for sample, answer in zip(task_samples, answers))
        if rows:
            baselines[name] = rows
    return baselines


def most_frequent_per_modality(samples: Sequence[Sample]) -> list[str]:
    """For each sample, the most frequent first-turn answer among the samples of its modality."""
    counters: dict[str, Counter[str]] = {}
    for sample in samples:
        counters.setdefault(sample.modality, Counter())[sample.turns[0].answer] += 1
    # Counter.most_common keeps first-insertion order among equal counts.
    winners = {modality: counter.most_common(1)[0][0] for modality, counter in counters.items()}
    return [winners[sample.modality] for sample in samples]


def centre_box(samples: Sequence[Sample]) -> list[str]:
    return [CENTRE_BOX.to_text(BoxStyle.QWEN_VL)] * len(samples)


def name_prior_boxes(samples: Sequence[Sample]) -> list[str]:
    """For each sample, the per-coordinate median GT box of the samples sharing its modality and referred phrase."""
    keys = [(sample.modality, referred_phrase(sample.turns[0].question)) for sample in samples]
    groups: dict[tuple[str, str | None], list[Box]] = {key: [] for key in keys}
    for key, sample in zip(keys, samples):
        box = _first_box(sample)
        if box is not None:
            groups[key].append(box)
    priors = {key: _median_box(boxes).to_text(BoxStyle.QWEN_VL) for key, boxes in groups.items()}
    return [priors[key] for key in keys]


def _first_box(sample: Sample) -> Box | None:
    try:
        boxes = parse_boxes(sample.turns[0].answer)
    except BoxError:
        return None  # the scorer reports malformed GT boxes; a prior simply does without them
    return boxes[0] if boxes else None


def _median_box(boxes: Sequence[Box]) -> Box:
    if not boxes:
        return CENTRE_BOX
    return Box(*(median(getattr(box, corner) for box in boxes) for corner in ("x1", "y1", "x2", "y2"))).rounded()


# name → (the tasks it answers, its answers for one task's samples in order)
BASELINES: dict[str, tuple[tuple[str, ...], Callable[[Sequence[Sample]], list[str]]]] = {
    "centre box": (("VG",), centre_box),
    "name prior box": (("VG",), name_prior_boxes),
    "majority class": (("ROC",), most_frequent_per_modality),
    "most frequent answer": (("RC", "MIA"), most_frequent_per_modality),
}


def _prediction(task: str, sample: Sample, response: str) -> Prediction:
    return Prediction.for_sample(task, sample, response, {"baseline": True})
