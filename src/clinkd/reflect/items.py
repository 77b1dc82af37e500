"""The training turns reflective correction works on, each a one-turn sample named across rounds and runs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clinkd.data.records import TASKS, Sample, Turn, infer_task


@dataclass(frozen=True)
class ReflectItem:
    """One training turn as a one-turn sample; ``key`` (``<record id>#<turn>``) names it across rounds and runs."""

    key: str
    sample: Sample

    @property
    def turn(self) -> Turn:
        return self.sample.turns[0]


def reflect_items(train: Sequence[Sample]) -> list[ReflectItem]:
    """Every QA turn of ``train``, its task set (given, else :func:`infer_task`); repeated record ids get ``@n``."""
    items, seen = [], Counter()
    for sample in train:
        for index, turn in enumerate(sample.turns):
            key = f"{sample.id}#{index}"
            seen[key] += 1
            if seen[key] > 1:
                key = f"{key}@{seen[key]}"
            one_turn = Sample(
                sample.id,
                sample.image,
                sample.modality,
                [turn],
                sample.task or infer_task(turn),
                f"{sample.source}#turn{index}",
            )
            items.append(ReflectItem(key, one_turn))
    return items


def seeded_sample(values: Sequence, n: int | None, seed: int) -> list:
    """``n`` of ``values`` drawn without replacement by ``seed``, in their original order (all when n is None or ≥
    len)."""
    if n is None or n >= len(values):
        return list(values)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(values))[:n])
    return [values[i] for i in chosen]


def by_task(items: Sequence[ReflectItem]) -> dict[str, list[ReflectItem]]:
    groups: dict[str, list[ReflectItem]] = {}
    for item in items:
        groups.setdefault(item.sample.task, []).append(item)
    return {task: groups[task] for task in TASKS if task in groups}
