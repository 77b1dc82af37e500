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

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinkd.batching import ChatExample, InputFormat, training_examples
from clinkd.config import RecipeConfig
from clinkd.data.records import Sample
from clinkd.engine.generate import write_predictions
from clinkd.engine.sft import SftSettings, run_sft
from clinkd.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from clinkd.model.loading import is_checkpoint, load_checkpoint
from clinkd.progress import console
from clinkd.reflect.corrections import correct_weak, correction_examples, correction_summary, read_records
from clinkd.reflect.correctors import Corrector, build_corrector
from clinkd.reflect.items import ReflectItem, by_task, reflect_items, seeded_sample
from clinkd.reflect.report import render_report
from clinkd.reflect.scoring import score_outputs, score_summary, select_weak
from clinkd.reflect.similarity import Similarity, build_similarity


def generate_outputs(
    model, processor, items: Sequence[ReflectItem], out_dir: Path, cfg: RecipeConfig
) -> list[tuple[ReflectItem, str]]:
    """``(item, output)`` for every item, generated batch by batch through :func:`write_predictions` (resumable)."""
    groups = by_task(items)
    paths = write_predictions(
        model,
        processor,
        {task: [item.sample for item in group] for task, group in groups.items()},
        out_dir,
        cfg.predict,
        InputFormat.of(cfg),
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


def scored_round(model, processor, items, out_dir: Path, similarity: Similarity, cfg: RecipeConfig) -> list[dict]:
    """Generate (resumable) and score once; ``<out_dir>/scores.jsonl`` is reused when present."""
    path = out_dir / "scores.jsonl"
    if path.is_file():
        return list(read_jsonl(path))
    pairs = generate_outputs(model, processor, items, out_dir / "outputs", cfg)
    rows = score_outputs(pairs, similarity, cfg.reflect.threshold, cfg.reflect.iou_threshold)
    atomic_write_jsonl(path, rows)
    return rows


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
    probe = seeded_sample(items, reflect.generate_samples, cfg.seed)
    base_examples = training_examples(train, cfg.data.train_turns)
    result = ReflectResult(
        None,
        model,
        processor,
        settings={
            "rounds": reflect.rounds,
            "threshold": reflect.threshold,
            "iou_threshold": reflect.iou_threshold,
            "accept_threshold": reflect.accept_threshold,
            "budget": reflect.budget,
            "generated_per_round": len(probe),
            "similarity": similarity.name,
            "corrector": "none" if corrector is None else corrector.name,
        },
    )
    accepted: list[dict] = []
    on_disk_only = False  # the last finished round's model has not been loaded yet
    for round_index in range(1, reflect.rounds + 1):
        round_dir = stage_dir / f"round-{round_index}"
        if (round_dir / "summary.json").is_file():
            result.rounds.append(_read_json(round_dir / "summary.json"))
            accepted += [row for row in read_records(round_dir / "corrections.jsonl") if row["status"] == "accepted"]
            result.model_dir, on_disk_only = round_dir / "model", True
            continue
        if on_disk_only:
            result.model, result.processor = load_checkpoint(result.model_dir, cfg.model.dtype)
            on_disk_only = False
        started = time.perf_counter()
        scores = scored_round(result.model, result.processor, probe, round_dir, similarity, cfg)
        records = (
            []
            if corrector is None
            else correct_weak(
                round_index,
                select_weak(scores, reflect.budget, round_index),
                item_map,
                corrector,
                similarity,
                reflect.accept_threshold,
                round_dir / "corrections.jsonl",
            )
        )
        accepted += [row for row in records if row["status"] == "accepted"]
        corrections = correction_examples(accepted, item_map)
        mix = seeded_sample(base_examples, reflect.train_samples, cfg.seed + round_index) + corrections
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
        result.after = score_summary(
            scored_round(result.model, result.processor, probe, stage_dir / "after", similarity, cfg)
        )
    atomic_write_json(stage_dir / "summary.json", result.to_json())
    atomic_write_text(stage_dir / "report.md", result.markdown() + "\n")
    return result


def _train_round(cfg: RecipeConfig, model, processor, mix: list[ChatExample], round_dir: Path):
    """Train one round (unless its model is saved), then load the saved model back, so the next round generates
    with exactly what was saved (LoRA merged, no adapter wrappers): ``(model, processor, steps, final loss)``."""
    model_dir = round_dir / "model"
    if not is_checkpoint(model_dir):
        run_sft(SftSettings.of(round_config(cfg)), model, processor, mix, round_dir)
        if not is_checkpoint(model_dir):
            raise ValueError(
                f"{model_dir}: the round saved no full model (a QLoRA adapter?); reflect needs merged models between "
                "rounds"
            )
    log = round_dir / "train_log.json"
    history = _read_json(log)["log_history"] if log.is_file() else []
    losses = [entry["loss"] for entry in history if "loss" in entry]
    steps = max((entry.get("step", 0) for entry in history), default=None)
    model, processor = load_checkpoint(model_dir, cfg.model.dtype)
    return model, processor, steps, losses[-1] if losses else None


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
