"""Weak outputs sent to a corrector: one provenance row per reply, the accepted ones as training examples."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import closing
from pathlib import Path

from clinkd.batching import ChatExample
from clinkd.data.records import Turn
from clinkd.io import append_jsonl, read_jsonl
from clinkd.progress import make_progress
from clinkd.reflect.correctors import CorrectionRequest, Corrector, check_correction
from clinkd.reflect.items import ReflectItem
from clinkd.reflect.scoring import per_task
from clinkd.reflect.similarity import Similarity

STATUSES = ("accepted", "rejected", "failed")


def read_records(path: Path) -> list[dict]:
    """The rows of a ``corrections.jsonl`` (none before the first reply)."""
    return list(read_jsonl(path)) if path.is_file() else []


def correct_weak(
    round_index: int,
    weak: Sequence[dict],
    items: dict[str, ReflectItem],
    corrector: Corrector,
    similarity: Similarity,
    accept_threshold: float,
    path: Path,
) -> list[dict]:
    """Send the weak rows not yet in ``path`` to the corrector; append one provenance row per reply as it
    arrives (so a kill loses at most the replies in flight, which the cache keeps); return every row."""
    done = {row["key"] for row in read_records(path)}
    todo = [row for row in weak if row["key"] not in done]
    requests = [
        CorrectionRequest(row["key"], round_index, row["task"], row["question"], row["ground_truth"], row["output"])
        for row in todo
    ]
    scored = {row["key"]: row for row in todo}
    if requests:
        with make_progress() as progress:
            bar = progress.add_task(
                f"correct round {round_index}", total=len(weak), completed=len(weak) - len(todo), info=corrector.name
            )
            # closing(): on an interrupt the corrector stops at once and its in-flight replies reach the cache.
            with closing(corrector.correct(requests)) as replies:
                for request, reply in replies:
                    verdict = (
                        None
                        if reply.text is None
                        else check_correction(reply.text, request.ground_truth, similarity, accept_threshold)
                    )
                    append_jsonl(
                        path,
                        [
                            correction_record(
                                round_index, scored[request.key], items[request.key], corrector.name, reply, verdict
                            )
                        ],
                    )
                    progress.advance(bar)
    return read_records(path)


def correction_record(round_index: int, scored: dict, item: ReflectItem, corrector: str, reply, verdict) -> dict:
    """The provenance row of one corrector reply; ``correction`` is set only when accepted."""
    status = "failed" if verdict is None else "accepted" if verdict.accepted else "rejected"
    return {
        "round": round_index,
        "key": scored["key"],
        "id": scored["id"],
        "image": str(item.sample.image),
        "task": scored["task"],
        "modality": scored["modality"],
        "question": scored["question"],
        "ground_truth": scored["ground_truth"],
        "output": scored["output"],
        "similarity": scored["similarity"],
        "grounded": scored["grounded"],
        "min_iou": scored["min_iou"],
        "corrector": corrector,
        "status": status,
        "reason": reply.error if verdict is None else verdict.reason,
        "correction": reply.text if status == "accepted" else None,
        "reply_text": reply.text,
        "reply_raw": reply.raw,
        "reply_similarity": None if verdict is None else verdict.score,
        "attempts": reply.attempts,
        "cached": reply.cached,
    }


def correction_examples(records: Iterable[dict], items: dict[str, ReflectItem]) -> list[ChatExample]:
    """One-turn training examples from the accepted correction rows (nothing else ever enters training)."""
    examples = []
    for row in records:
        if row["status"] != "accepted":
            continue
        if row["key"] not in items:
            raise ValueError(
                f"correction {row['key']!r} (round {row['round']}) names no training turn: the training data changed"
            )
        item = items[row["key"]]
        examples.append(ChatExample(item.sample.image, (Turn(item.turn.question, row["correction"]),)))
    return examples


def correction_summary(records: Sequence[dict]) -> dict[str, dict]:
    """Per task and ``all``: counts by status and by reason (the reason's first clause)."""

    def summarise(rows: list[dict]) -> dict:
        counts = Counter(row["status"] for row in rows)
        reasons = Counter(reason_kind(row["reason"]) for row in rows if row["status"] != "accepted")
        return {
            "sent": len(rows),
            **{status: counts[status] for status in STATUSES},
            "reasons": dict(sorted(reasons.items())),
        }

    return per_task(records, summarise)


def reason_kind(reason: str | None) -> str:
    """The first clause of a rejection or failure reason, which the report counts by."""
    return (reason or "unknown").split(":")[0].split(" (")[0]
