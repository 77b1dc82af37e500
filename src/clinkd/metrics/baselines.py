"""Trivial baselines on the test samples, scored with the same protocol as a model.

* ``centre box`` (VG): always ``<box>(250,250),(750,750)</box>``, the fixed centred box of half the
  image side (a quarter of its area). It is fixed, not fitted: the mean test GT box would leak the
  answers.
* ``majority class`` (ROC): per modality, the most frequent **test** annotation. This is an oracle
  prior (it reads the test labels), the usual "majority" reference point: a model below it has not
  learnt more than the class frequencies.
* ``most frequent answer`` (RC and MIA): per task and modality, the most frequent test annotation
  (the same oracle prior for free text).

Ties go to the answer seen first in test order. Each baseline answers only its own tasks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from clinkd.boxes import Box, BoxStyle
from clinkd.data.records import Prediction, Sample, canonical_task

CENTRE_BOX = Box(250, 250, 750, 750)
BASELINE_TASKS: dict[str, tuple[str, ...]] = {
    "centre box": ("VG",),
    "majority class": ("ROC",),
    "most frequent answer": ("RC", "MIA"),
}


def baseline_predictions(samples: Iterable[Sample]) -> dict[str, list[Prediction]]:
    """Baseline name → its predictions for the test samples of its tasks (samples need ``task``)."""
    by_task: dict[str, list[Sample]] = {}
    for sample in samples:
        if sample.task is None:
            raise ValueError(f"sample {sample.id!r} ({sample.source or 'no source'}) has no task: not a test sample")
        by_task.setdefault(canonical_task(sample.task), []).append(sample)
    baselines: dict[str, list[Prediction]] = {}
    for name, tasks in BASELINE_TASKS.items():
        rows = []
        for task in tasks:
            task_samples = by_task.get(task, [])
            if task == "VG":
                answers = [CENTRE_BOX.to_text(BoxStyle.QWEN_VL)] * len(task_samples)
            else:
                answers = most_frequent_per_modality(task_samples)
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


def _prediction(task: str, sample: Sample, response: str) -> Prediction:
    return Prediction.for_sample(task, sample, response, {"baseline": True})
