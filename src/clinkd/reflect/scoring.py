"""Each generated output against its ground truth: the scored rows, the weak ones to correct, and their summary."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from clinkd.data.records import TASKS
from clinkd.reflect.items import ReflectItem
from clinkd.reflect.similarity import Similarity, judge


def score_outputs(
    pairs: Sequence[tuple[ReflectItem, str]], similarity: Similarity, threshold: float, iou_threshold: float
) -> list[dict]:
    """One row per output: its item, similarity, grounding, quality and weak flag (``reflect.threshold``,
    ``iou_threshold``)."""
    judgements = judge(
        [output for _, output in pairs], [item.turn.answer for item, _ in pairs], similarity, iou_threshold
    )
    return [
        {
            "key": item.key,
            "id": item.sample.id,
            "task": item.sample.task,
            "modality": item.sample.modality,
            "question": item.turn.question,
            "ground_truth": item.turn.answer,
            "output": output,
            "similarity": verdict.similarity,
            "grounded": verdict.grounded,
            "min_iou": verdict.min_iou,
            "quality": verdict.quality,
            "weak": verdict.weak(threshold),
        }
        for (item, output), verdict in zip(pairs, judgements)
    ]


def select_weak(scores: Sequence[dict], budget: int | None, round_index: int) -> list[dict]:
    """The weak rows, lowest quality first, at most ``budget``; ties (typically many outputs at 0) are broken by a
    hash of key and round, so each round's budget reaches different items in a reproducible order."""

    def rank(row: dict) -> tuple[float, str]:
        return row["quality"], hashlib.sha256(f"{row['key']}|{round_index}".encode()).hexdigest()

    weak = sorted((row for row in scores if row["weak"]), key=rank)
    return weak if budget is None else weak[:budget]


def per_task(rows: Sequence[dict], summarise: Callable[[list[dict]], dict]) -> dict[str, dict]:
    """``summarise`` of each task's rows (in :data:`TASKS` order, tasks without rows left out) and of ``all``."""
    tasks = [task for task in TASKS if any(row["task"] == task for row in rows)]
    return {
        **{task: summarise([row for row in rows if row["task"] == task]) for task in tasks},
        "all": summarise(list(rows)),
    }


def score_summary(scores: Sequence[dict]) -> dict[str, dict]:
    """Per task and ``all``: n, mean similarity, grounded rate (None without grounding answers), weak count."""

    def summarise(rows: list[dict]) -> dict:
        grounding = [row["grounded"] for row in rows if row["grounded"] is not None]
        return {
            "n": len(rows),
            "similarity": float(np.mean([row["similarity"] for row in rows])) if rows else None,
            "grounded": float(np.mean(grounding)) if grounding else None,
            "weak": sum(row["weak"] for row in rows),
        }

    return per_task(scores, summarise)
