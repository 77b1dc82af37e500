"""Recipe: reflective correction training (the paper's "Reflective Correction Training"; docs/reflect.md).

Each of ``reflect.rounds`` rounds: generate on a fixed seeded subset of the training turns, score every
output against its ground truth, send the weak ones (similarity < ``threshold`` or a wrong grounding),
worst first and at most ``budget``, to the corrector, keep the replies that pass
:func:`clinkd.reflect.correctors.check_correction`, and train ``epochs`` over the training set plus every
correction accepted so far. Everything lands in ``stage_dir`` (``<run>/reflect``)::

    round-<r>/outputs/<TASK>.jsonl   the round's generations (write_predictions: batched, resumable)
    round-<r>/scores.jsonl           similarity, grounding and weak flag of every output
    round-<r>/corrections.jsonl      one row per weak output sent to the corrector, with its provenance
    round-<r>/checkpoints/, model/   the round's training (run_sft: resumes from its checkpoints)
    round-<r>/summary.json           written last: a round with it is complete and skipped on a rerun
    after/outputs/, after/scores.jsonl   the final model on the same turns (reflect.score_after)
    summary.json, report.md

A killed run resumes where it stopped: finished generations, correction rows and checkpoints are kept,
and a request already answered is never sent again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clinkd.batching import ChatExample, training_examples
from clinkd.config import RecipeConfig
from clinkd.data.records import TASKS, Sample, Turn
from clinkd.engine.generate import write_predictions
from clinkd.engine.sft import run_sft
from clinkd.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from clinkd.model.loading import is_checkpoint, load_checkpoint
from clinkd.progress import console, make_progress
from clinkd.reflect.correctors import CorrectionRequest, Corrector, build_corrector, check_correction
from clinkd.reflect.similarity import Similarity, build_similarity, judge
from clinkd.reflect.tasks import infer_task

STATUSES = ("accepted", "rejected", "failed")


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
            one_turn = Sample(sample.id, sample.image, sample.modality, [turn], sample.task or infer_task(turn), f"{sample.source}#turn{index}")
            items.append(ReflectItem(key, one_turn))
    return items


def seeded_subset(values: Sequence, n: int | None, seed: int) -> list:
    """``n`` of ``values`` drawn without replacement by ``seed``, in their original order (all when n is None or ≥ len)."""
    if n is None or n >= len(values):
        return list(values)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(values))[:n])
    return [values[i] for i in chosen]


def by_task(items: Sequence[ReflectItem]) -> dict[str, list[ReflectItem]]:
    groups: dict[str, list[ReflectItem]] = {}
    for item in items:
        groups.setdefault(item.sample.task, []).append(item)
    return {task: groups[task] for task in TASKS if task in groups}


# ---- generate and score ---------------------------------------------------------------------------


def generate_outputs(model, processor, items: Sequence[ReflectItem], out_dir: Path, cfg: RecipeConfig) -> list[tuple[ReflectItem, str]]:
    """``(item, output)`` for every item, generated batch by batch through :func:`write_predictions` (resumable)."""
    groups = by_task(items)
    paths = write_predictions(
        model, processor, {task: [item.sample for item in group] for task, group in groups.items()},
        out_dir, cfg.predict, cfg.data.box_style, cfg.model.square_size,
    )
    pairs = []
    for task, group in groups.items():
        rows = {row["index"]: row for row in read_jsonl(paths[task])}
        for index, item in enumerate(group):
            row = rows[index]
            if row["id"] != item.sample.id or row["question"] != item.turn.question:
                raise ValueError(
                    f"{paths[task]}: row {index} is {row['id']!r}, expected {item.key!r}: the training data changed "
                    f"since it was written; delete {out_dir} to generate again"
                )
            pairs.append((item, row["response"]))
    return pairs


def score_outputs(pairs: Sequence[tuple[ReflectItem, str]], similarity: Similarity, cfg: RecipeConfig) -> list[dict]:
    """One row per output: its item, similarity, grounding, quality and weak flag."""
    reflect = cfg.reflect
    judgements = judge([output for _, output in pairs], [item.turn.answer for item, _ in pairs], similarity, reflect.iou_threshold)
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
            "weak": verdict.weak(reflect.threshold),
        }
        for (item, output), verdict in zip(pairs, judgements)
    ]


def scored_round(model, processor, items, out_dir: Path, similarity: Similarity, cfg: RecipeConfig) -> list[dict]:
    """Generate (resumable) and score once; ``<out_dir>/scores.jsonl`` is reused when present."""
    path = out_dir / "scores.jsonl"
    if path.is_file():
        return list(read_jsonl(path))
    rows = score_outputs(generate_outputs(model, processor, items, out_dir / "outputs", cfg), similarity, cfg)
    atomic_write_text(path, "".join(_json_line(row) for row in rows))
    return rows


def select_weak(scores: Sequence[dict], budget: int | None, round_index: int) -> list[dict]:
    """The weak rows, lowest quality first, at most ``budget``; ties (typically many outputs at 0) are broken by a
    hash of key and round, so each round's budget reaches different items in a reproducible order."""

    def rank(row: dict) -> tuple[float, str]:
        return row["quality"], hashlib.sha256(f"{row['key']}|{round_index}".encode()).hexdigest()

    weak = sorted((row for row in scores if row["weak"]), key=rank)
    return weak if budget is None else weak[:budget]


# ---- correct --------------------------------------------------------------------------------------


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
    done = {row["key"] for row in _records(path)}
    todo = [row for row in weak if row["key"] not in done]
    requests = [
        CorrectionRequest(row["key"], round_index, row["task"], row["question"], row["ground_truth"], row["output"]) for row in todo
    ]
    scored = {row["key"]: row for row in todo}
    if requests:
        with make_progress() as progress:
            bar = progress.add_task(f"correct round {round_index}", total=len(weak), completed=len(weak) - len(todo), info=corrector.name)
            # closing(): on an interrupt the corrector stops at once and its in-flight replies reach the cache.
            with closing(corrector.correct(requests)) as replies:
                for request, reply in replies:
                    verdict = None if reply.text is None else check_correction(reply.text, request.ground_truth, similarity, accept_threshold)
                    append_jsonl(path, [correction_record(round_index, scored[request.key], items[request.key], corrector.name, reply, verdict)])
                    progress.advance(bar)
    return _records(path)


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
            raise ValueError(f"correction {row['key']!r} (round {row['round']}) names no training turn: the training data changed")
        item = items[row["key"]]
        examples.append(ChatExample(item.sample.image, (Turn(item.turn.question, row["correction"]),)))
    return examples


# ---- summaries ------------------------------------------------------------------------------------


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

    tasks = [task for task in TASKS if any(row["task"] == task for row in scores)]
    return {**{task: summarise([row for row in scores if row["task"] == task]) for task in tasks}, "all": summarise(list(scores))}


def correction_summary(records: Sequence[dict]) -> dict[str, dict]:
    """Per task and ``all``: counts by status and by reason (the reason's first clause)."""

    def summarise(rows: list[dict]) -> dict:
        counts = Counter(row["status"] for row in rows)
        reasons = Counter(_reason_kind(row["reason"]) for row in rows if row["status"] != "accepted")
        return {"sent": len(rows), **{status: counts[status] for status in STATUSES}, "reasons": dict(sorted(reasons.items()))}

    tasks = [task for task in TASKS if any(row["task"] == task for row in records)]
    return {**{task: summarise([row for row in records if row["task"] == task]) for task in tasks}, "all": summarise(list(records))}


def _reason_kind(reason: str | None) -> str:
    return (reason or "unknown").split(":")[0].split(" (")[0]


def _json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


# ---- the stage ------------------------------------------------------------------------------------


@dataclass
class ReflectResult:
    """What :func:`run_reflect` did; ``model``/``processor`` are the final model (the input one when no round ran)."""

    model_dir: Path | None  # None when no round ran
    model: Any = field(default=None, repr=False)
    processor: Any = field(default=None, repr=False)
    rounds: list[dict] = field(default_factory=list)
    after: dict | None = None
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        model_dir = None if self.model_dir is None else str(self.model_dir)
        return {"model_dir": model_dir, "settings": self.settings, "rounds": self.rounds, "after": self.after}

    def markdown(self) -> str:
        return render_report(self.to_json())


def round_config(cfg: RecipeConfig) -> RecipeConfig:
    """``cfg`` with the training section of one reflective round: ``reflect.epochs`` at ``reflect.lr``."""
    reflect = cfg.reflect
    train = cfg.train.model_copy(update={"epochs": reflect.epochs, "max_steps": -1, "lr": reflect.lr or cfg.train.lr})
    return cfg.model_copy(update={"train": train})


def run_reflect(
    cfg: RecipeConfig,
    model,
    processor,
    train: Sequence[Sample],
    stage_dir: Path,
    *,
    corrector: Corrector | None = None,
    similarity: Similarity | None = None,
) -> ReflectResult:
    """Run ``cfg.reflect.rounds`` rounds from ``model`` and return the final one in ``result.model``/``processor``
    (the object passed in is changed by the first round's training: use the result). Corrector and similarity
    default to the config's.

    ``reflect.corrector: none`` (or ``corrector=None`` with that config) runs the same rounds without corrections,
    the equal-compute control.
    """
    reflect = cfg.reflect
    stage_dir.mkdir(parents=True, exist_ok=True)
    similarity = similarity or build_similarity(reflect.similarity.kind, reflect.similarity.path)
    if corrector is None:
        corrector = build_corrector(reflect, cfg.output_dir / "cache" / "corrector")
    items = reflect_items(train)
    item_map = {item.key: item for item in items}
    probe = seeded_subset(items, reflect.generate_samples, cfg.seed)
    base_examples = training_examples(train, cfg.data.train_turns)
    result = ReflectResult(None, model, processor, settings={
        "rounds": reflect.rounds, "threshold": reflect.threshold, "iou_threshold": reflect.iou_threshold,
        "accept_threshold": reflect.accept_threshold, "budget": reflect.budget, "generated_per_round": len(probe),
        "similarity": similarity.name, "corrector": "none" if corrector is None else corrector.name,
    })
    accepted: list[dict] = []
    on_disk_only = False  # the last finished round's model has not been loaded yet
    for round_index in range(1, reflect.rounds + 1):
        round_dir = stage_dir / f"round-{round_index}"
        if (round_dir / "summary.json").is_file():
            result.rounds.append(_read_json(round_dir / "summary.json"))
            accepted += [row for row in _records(round_dir / "corrections.jsonl") if row["status"] == "accepted"]
            result.model_dir, on_disk_only = round_dir / "model", True
            continue
        if on_disk_only:
            result.model, result.processor = load_checkpoint(result.model_dir, cfg.model.dtype)
            on_disk_only = False
        started = time.perf_counter()
        scores = scored_round(result.model, result.processor, probe, round_dir, similarity, cfg)
        records = [] if corrector is None else correct_weak(
            round_index, select_weak(scores, reflect.budget, round_index), item_map, corrector, similarity,
            reflect.accept_threshold, round_dir / "corrections.jsonl",
        )
        accepted += [row for row in records if row["status"] == "accepted"]
        corrections = correction_examples(accepted, item_map)
        mix = seeded_subset(base_examples, reflect.train_samples, cfg.seed + round_index) + corrections
        result.model, result.processor, steps, loss = _train_round(cfg, result.model, result.processor, mix, round_dir)
        summary = {
            "round": round_index,
            "scores": score_summary(scores),
            "weak": sum(row["weak"] for row in scores),
            "corrections": correction_summary(records),
            "train_examples": len(mix),
            "corrections_in_mix": len(corrections),
            "steps": steps,
            "final_loss": loss,
            "seconds": time.perf_counter() - started,
        }
        atomic_write_json(round_dir / "summary.json", summary)
        result.rounds.append(summary)
        result.model_dir = round_dir / "model"
        _print_round(summary)
    if on_disk_only:
        result.model, result.processor = load_checkpoint(result.model_dir, cfg.model.dtype)
    if reflect.score_after and result.model_dir is not None:
        result.after = score_summary(scored_round(result.model, result.processor, probe, stage_dir / "after", similarity, cfg))
    atomic_write_json(stage_dir / "summary.json", result.to_json())
    atomic_write_text(stage_dir / "report.md", result.markdown() + "\n")
    return result


def _train_round(cfg: RecipeConfig, model, processor, mix: list[ChatExample], round_dir: Path):
    """Train one round (unless its model is saved), then load the saved model back, so the next round generates
    with exactly what was saved (LoRA merged, no adapter wrappers): ``(model, processor, steps, final loss)``."""
    model_dir = round_dir / "model"
    if not is_checkpoint(model_dir):
        run_sft(round_config(cfg), model, processor, mix, round_dir)
        if not is_checkpoint(model_dir):
            raise ValueError(f"{model_dir}: the round saved no full model (a QLoRA adapter?); reflect needs merged models between rounds")
    log = round_dir / "train_log.json"
    history = _read_json(log)["log_history"] if log.is_file() else []
    losses = [entry["loss"] for entry in history if "loss" in entry]
    steps = max((entry.get("step", 0) for entry in history), default=None)
    model, processor = load_checkpoint(model_dir, cfg.model.dtype)
    return model, processor, steps, losses[-1] if losses else None


def _records(path: Path) -> list[dict]:
    return list(read_jsonl(path)) if path.is_file() else []


def _print_round(summary: dict) -> None:
    counts = summary["corrections"]["all"]
    reasons = ", ".join(f"{reason} {n}" for reason, n in counts["reasons"].items())
    console.print(
        f"reflect round {summary['round']}: mean similarity {summary['scores']['all']['similarity']:.3f}, "
        f"{summary['weak']} weak, {counts['accepted']} corrections accepted, {counts['rejected']} rejected, "
        f"{counts['failed']} failed" + (f" ({reasons})" if reasons else "")
    )


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ---- report ---------------------------------------------------------------------------------------


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}" if percent else f"{value:.3f}"


def render_report(doc: dict) -> str:
    """The report section: per-round counts, corrections per round and task, and scores before and after."""
    settings, rounds, after = doc["settings"], doc["rounds"], doc["after"]
    lines = [
        "## Reflective correction",
        "",
        f"{len(rounds)} round(s); corrector `{settings.get('corrector')}`, similarity `{settings.get('similarity')}`; "
        f"weak = similarity < {settings.get('threshold')} or a box with IoU ≤ {settings.get('iou_threshold')}; "
        f"{settings.get('generated_per_round')} training turns generated per round; at most {settings.get('budget') or 'all weak'} "
        f"corrections per round; replies accepted at similarity ≥ {settings.get('accept_threshold')} with every box kept.",
        "",
        "| round | mean similarity | grounded % | weak | sent | accepted | rejected | failed | train examples | steps | s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        s, c = r["scores"]["all"], r["corrections"]["all"]
        lines.append(
            f"| {r['round']} | {_fmt(s['similarity'])} | {_fmt(s['grounded'], True)} | {r['weak']} | {c['sent']} | {c['accepted']} | "
            f"{c['rejected']} | {c['failed']} | {r['train_examples']} | {r['steps'] if r['steps'] is not None else '–'} | {r['seconds']:.0f} |"
        )
    lines += ["", "### Corrections per round and task", "", "| round | task | weak | sent | accepted | rejected | failed | reasons |", "|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rounds:
        for task in [t for t in TASKS if t in r["scores"]]:
            c = r["corrections"].get(task, {"sent": 0, "accepted": 0, "rejected": 0, "failed": 0, "reasons": {}})
            reasons = ", ".join(f"{k} {v}" for k, v in c["reasons"].items()) or "–"
            lines.append(
                f"| {r['round']} | {task} | {r['scores'][task]['weak']} | {c['sent']} | {c['accepted']} | {c['rejected']} | {c['failed']} | {reasons} |"
            )
    columns = [(f"round {r['round']}" + (" (before)" if r["round"] == 1 else ""), r["scores"]) for r in rounds]
    if after is not None:
        columns.append(("after", after))
    if columns:
        lines += [
            "",
            "### Scores before and after",
            "",
            "Mean similarity (grounded % for VG) of the model's outputs on the same training turns: each round's "
            "column is the model entering that round, `after` the final model.",
            "",
            "| task | " + " | ".join(name for name, _ in columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        for task in [t for t in (*TASKS, "all") if t in columns[0][1]]:
            cells = []
            for _, scores in columns:
                s = scores.get(task)
                cells.append("–" if s is None else _fmt(s["similarity"]) + (f" ({_fmt(s['grounded'], True)}%)" if s["grounded"] is not None else ""))
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
