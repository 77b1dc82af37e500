"""Recipe: Pseudo-Augmented Medical Distillation. Teacher on a seeded subset → pseudo labels → KD student.

Everything lands in ``<run_dir>/distill/``::

    teacher/subset.json        the teacher's records (seeded draw of distill.teacher_fraction)
    teacher/checkpoints/       its Trainer checkpoints; teacher/model/ the fine-tuned teacher
    pseudo/train.jsonl         the teacher's answer to every training turn (targets: pseudo | both)
    cache/                     top-k teacher log-probs, sharded safetensors + manifest.json (mode: cached)
    student/checkpoints/       the student's Trainer checkpoints; student/model/ the distilled student
    info.json                  what each sub-stage did (sizes, counts, seconds, the KD loss configuration)

Each sub-stage is skipped when its output is complete (a model directory, every pseudo-label row, a
complete cache manifest), and the unfinished ones resume: the Trainer from its newest checkpoint, the
pseudo labels from the rows already written, the cache from its first missing shard.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from clinkd.batching import ChatExample, InputFormat, TrainCollator, collator_for, training_examples
from clinkd.config import RecipeConfig
from clinkd.data.records import Sample, infer_task
from clinkd.distill.pseudo import (
    PseudoChecks,
    PseudoLabel,
    aligned_pseudo_labels,
    distillation_examples,
    generate_pseudo_labels,
    pseudo_labels_complete,
    read_pseudo_labels,
    turn_samples,
)
from clinkd.distill.subset import PSEUDO_SEED_OFFSET, curriculum_order, seeded_subset
from clinkd.distill.teacher_cache import (
    CacheSpec,
    TeacherCache,
    dataset_fingerprint,
    read_manifest,
    teacher_fingerprint,
    tokenizer_fingerprint,
    write_teacher_cache,
)
from clinkd.distill.trainer import check_teacher_vocab, output_vocab_size, train_student
from clinkd.engine.sft import SftSettings, run_sft
from clinkd.engine.vision_cache import cached_vision
from clinkd.io import atomic_write_json
from clinkd.losses import KDLossConfig
from clinkd.metrics.fidelity import answer_fidelity, modality_classes
from clinkd.model.box_convention import box_coordinates
from clinkd.model.loading import CheckpointError, is_checkpoint, load_checkpoint
from clinkd.model.processor import load_processor
from clinkd.model.rope import rope_strategy_of
from clinkd.progress import console
from clinkd.recipes.inputs import initial_checkpoint

# (recipe) -> (model, processor): a freshly initialised model, e.g. clinkd.recipes.inputs.initial_model with the
# training records bound. The student is built with the recipe, the teacher with teacher_recipe(recipe).
BuildModel = Callable[[RecipeConfig], tuple[Any, Any]]


def teacher_recipe(cfg: RecipeConfig) -> RecipeConfig:
    """The recipe the teacher is built and tuned with: ``train.epochs = distill.teacher_epochs`` (when set), and
    ``model.path = distill.teacher_init`` (a larger checkpoint, as 7B → 2B in the paper) or, for a tiny model,
    ``model.size = distill.teacher_size``; everything else is the student's."""
    distill = cfg.distill
    init = distill.teacher_init or initial_checkpoint(cfg.model)
    if init is not None:
        if distill.teacher_size not in (None, cfg.model.size):
            console.print(
                f"[yellow]distill: the teacher is fine-tuned from {init}; distill.teacher_size applies to tiny models "
                "only"
            )
        model = cfg.model.model_copy(update={"path": init})
    else:
        model = cfg.model.model_copy(update={"size": distill.teacher_size or cfg.model.size})
    train = cfg.train.model_copy(update={"epochs": distill.teacher_epochs or cfg.train.epochs})
    return cfg.model_copy(update={"model": model, "train": train})


def load_teacher(cfg: RecipeConfig, teacher_dir: Path):
    """The teacher and its processor, at the student's image budget, on the GPU when there is one."""
    teacher, processor = load_checkpoint(teacher_dir, cfg.model.dtype, cfg.model.min_pixels, cfg.model.max_pixels)
    return teacher.to("cuda" if torch.cuda.is_available() else "cpu").eval(), processor


def ensure_teacher(
    cfg: RecipeConfig, train: Sequence[Sample], stage_dir: Path, build_model: BuildModel
) -> tuple[Path, dict]:
    """The teacher's model directory: ``distill.teacher``, or a model fine-tuned on the seeded subset."""
    distill = cfg.distill
    if distill.teacher is not None:
        if not is_checkpoint(distill.teacher):
            raise CheckpointError(f"distill.teacher: {distill.teacher} is not a checkpoint directory (no config.json)")
        return Path(distill.teacher), {"source": str(distill.teacher)}
    subset = seeded_subset(len(train), distill.teacher_fraction, cfg.seed)
    model_dir = stage_dir / "model"
    tuned = teacher_recipe(cfg)
    info = {
        "source": "fine-tuned",
        "init": str(tuned.model.path or f"tiny {tuned.model.size}"),
        "fraction": distill.teacher_fraction,
        "records": len(subset),
        "of_records": len(train),
    }
    if is_checkpoint(model_dir):
        return model_dir, info | {"reused": True}
    atomic_write_json(
        stage_dir / "subset.json", {"fraction": distill.teacher_fraction, "seed": cfg.seed, "indices": subset}
    )
    teacher, processor = build_model(tuned)
    examples = training_examples([train[index] for index in subset], cfg.data.train_turns)
    result = run_sft(SftSettings.of(tuned), teacher, processor, examples, stage_dir)
    return model_dir, info | {
        "size": tuned.model.size,
        "epochs": tuned.train.epochs,
        "examples": len(examples),
        "steps": result.steps,
        "final_loss": result.final_loss,
    }


def ensure_pseudo_labels(
    cfg: RecipeConfig, train: Sequence[Sample], teacher_dir: Path, out_dir: Path
) -> tuple[list[PseudoLabel | None], dict]:
    """One entry per training turn: the teacher's answer for the turns of the seeded ``distill.pseudo_fraction``
    of the records, None for the others. Missing rows are generated; a complete file is reused."""
    chosen = seeded_subset(
        len(train), cfg.distill.pseudo_fraction, cfg.seed + PSEUDO_SEED_OFFSET, "distill.pseudo_fraction"
    )
    records = [train[index] for index in chosen]
    reused = pseudo_labels_complete(out_dir, sum(len(sample.turns) for sample in records))
    if not reused:
        teacher, processor = load_teacher(cfg, teacher_dir)
        generate_pseudo_labels(
            teacher, processor, records, out_dir, cfg.predict, InputFormat.of(cfg), cfg.distill.pseudo_max_new_tokens
        )
    labels = read_pseudo_labels(out_dir, records)
    info = {
        "file": str(out_dir / "train.jsonl"),
        "records": len(records),
        "turns": len(labels),
        "reused": reused,
        "fidelity": pseudo_fidelity(records, labels, modality_classes(train)),
    }
    return aligned_pseudo_labels(train, chosen, labels), info


def pseudo_fidelity(records: Sequence[Sample], labels: Sequence[PseudoLabel], classes: dict[str, set[str]]) -> dict:
    """The question fidelity of the teacher's answers (:mod:`clinkd.metrics.fidelity`), each turn's task read off its
    ground truth."""
    turns = turn_samples(records)
    return answer_fidelity(
        (
            (infer_task(sample.turns[0]), sample.modality, sample.turns[0].question, label.answer)
            for sample, label in zip(turns, labels)
        ),
        classes,
    )


def cache_spec(
    cfg: RecipeConfig, examples: Sequence[ChatExample], student, processor, teacher_dir: Path, kd: KDLossConfig
) -> CacheSpec:
    """The spec a cache must have to serve this student on these examples."""
    return CacheSpec(
        dataset_sha256=dataset_fingerprint(
            examples, InputFormat.of(cfg), processor.image_processor.size, box_coordinates(student.config, processor)
        ),
        n_examples=len(examples),
        tokenizer_sha256=tokenizer_fingerprint(processor.tokenizer),
        teacher_sha256=teacher_fingerprint(teacher_dir),
        vocab_size=output_vocab_size(student),
        top_k=cfg.distill.top_k,
        temperature=kd.temperature,
        shift_labels=kd.shift_labels,
        ignore_index=kd.ignore_index,
        positions=rope_strategy_of(student.config).to_dict(),
    )


def ensure_teacher_cache(
    cfg: RecipeConfig,
    examples: list[ChatExample],
    student,
    processor,
    teacher_dir: Path,
    kd: KDLossConfig,
    cache_dir: Path,
) -> tuple[TeacherCache, dict]:
    """A complete cache for ``cache_spec(...)``: reused, finished, or written by one teacher pass."""
    started = time.perf_counter()
    spec = cache_spec(cfg, examples, student, processor, teacher_dir, kd)
    manifest = read_manifest(cache_dir, spec)
    reused = manifest is not None and manifest["complete"]
    if not reused:
        teacher, _ = load_teacher(cfg, teacher_dir)
        check_teacher_vocab(output_vocab_size(teacher), spec.vocab_size, len(processor.tokenizer))
        # Exactly the student's collation (train_student), box convention included.
        collator = collator_for(TrainCollator, student, processor, InputFormat.of(cfg))
        with cached_vision(teacher, cfg.train.vision_cache_mb):  # a forward-only pass: the tower does not change
            manifest = write_teacher_cache(
                teacher,
                collator,
                examples,
                spec,
                cache_dir,
                kd,
                batch_size=cfg.predict.batch_size,
                shard_examples=cfg.distill.cache_shard_examples,
            )
        del teacher  # the student trains with no teacher in memory
    size = sum(path.stat().st_size for path in cache_dir.glob("shard-*.safetensors"))
    info = {
        "dir": str(cache_dir),
        "reused": reused,
        "rows": manifest["n_rows"],
        "shards": len(manifest["shards"]),
        "megabytes": round(size / 2**20, 2),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return TeacherCache(cache_dir, spec), info


def check_same_tokenizer(student_processor, teacher_processor, teacher_dir: Path) -> None:
    """KD compares distributions id by id, so teacher and student must share one tokenizer (CheckpointError if not)."""
    if tokenizer_fingerprint(student_processor.tokenizer) != tokenizer_fingerprint(teacher_processor.tokenizer):
        raise CheckpointError(
            f"the teacher's tokenizer ({teacher_dir}) differs from the student's; KD needs the same token ids"
        )


def ensure_student(
    cfg: RecipeConfig,
    examples: list[ChatExample],
    stage_dir: Path,
    teacher_dir: Path,
    build_model: BuildModel,
    kd: KDLossConfig,
) -> tuple[Any, Any, dict]:
    """The distilled student (trained now, or reloaded from ``stage_dir/model``) and what its training did."""
    model_dir = stage_dir / "model"
    if is_checkpoint(model_dir):
        student, processor = load_checkpoint(model_dir, cfg.model.dtype)
        return student, processor, {"reused": True}
    student, processor = build_model(cfg)
    check_same_tokenizer(processor, load_processor(teacher_dir), teacher_dir)
    info: dict = {"mode": cfg.distill.mode, "examples": len(examples)}
    if cfg.distill.mode == "cached":
        cache_dir = cfg.distill.cache_dir or stage_dir.parent / "cache"
        cache, info["cache"] = ensure_teacher_cache(cfg, examples, student, processor, teacher_dir, kd, cache_dir)
        result = train_student(student_settings(cfg), student, processor, examples, stage_dir, kd, teacher_cache=cache)
    else:
        teacher, _ = load_teacher(cfg, teacher_dir)
        check_teacher_vocab(output_vocab_size(teacher), output_vocab_size(student), len(processor.tokenizer))
        result = train_student(student_settings(cfg), student, processor, examples, stage_dir, kd, teacher=teacher)
    return (
        student,
        processor,
        info | {"steps": result.steps, "final_loss": result.final_loss, "train_seconds": round(result.seconds, 1)},
    )


def student_settings(cfg: RecipeConfig) -> SftSettings:
    """The recipe's training settings; with ``distill.curriculum`` the examples are read in the order given."""
    return replace(SftSettings.of(cfg), in_order=cfg.distill.curriculum)


def merge_info(previous: dict, current: dict) -> dict:
    """Each section of ``current`` laid over the same section of ``previous``.

    A sub-stage skipped on a rerun reports little more than ``reused``; its earlier numbers
    (sizes, steps, seconds) are kept from the previous ``info.json``.
    """
    return {key: previous.get(key, {}) | value if isinstance(value, dict) else value for key, value in current.items()}


def run_distill(
    cfg: RecipeConfig, train: Sequence[Sample], run_dir: Path, build_model: BuildModel
) -> tuple[Any, Any, dict]:
    """Teacher → pseudo labels → student; returns ``(student, processor, info)`` and writes ``distill/info.json``.

    ``train`` holds the training records; ``build_model(recipe)``
    returns a freshly initialised ``(model, processor)``, the same initialisation plain SFT starts from.
    """
    root = Path(run_dir) / "distill"
    kd = cfg.distill.loss

    started = time.perf_counter()
    teacher_dir, teacher = ensure_teacher(cfg, train, root / "teacher", build_model)
    teacher |= {"dir": str(teacher_dir)} | (
        {} if teacher.get("reused") else {"seconds": round(time.perf_counter() - started, 1)}
    )

    started = time.perf_counter()
    pseudo_labels, pseudo = None, {}
    if cfg.distill.targets != "ground_truth":
        pseudo_labels, pseudo = ensure_pseudo_labels(cfg, train, teacher_dir, root / "pseudo")
        pseudo |= {} if pseudo["reused"] else {"seconds": round(time.perf_counter() - started, 1)}
    checks = PseudoChecks(cfg.distill.pseudo_filter, modality_classes(train), cfg.distill.min_margin)
    targets = distillation_examples(
        train, pseudo_labels, cfg.distill.targets, cfg.data.train_turns, cfg.data.box_style, checks
    )
    examples, counts = targets.examples, targets.counts
    if cfg.distill.curriculum:  # the cache and the student read the examples in this order
        examples = [examples[index] for index in curriculum_order(targets.margins, cfg.seed)]

    started = time.perf_counter()
    model, processor, student = ensure_student(cfg, examples, root / "student", teacher_dir, build_model, kd)
    student |= {"dir": str(root / "student" / "model")}
    student |= {} if student.get("reused") else {"seconds": round(time.perf_counter() - started, 1)}

    info_path = root / "info.json"
    previous = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    current = {
        "teacher": teacher,
        "pseudo": pseudo,
        "targets": {"kind": cfg.distill.targets} | counts,
        "student": student,
        "kd_loss": asdict(kd),
    }
    info = merge_info(previous, current)
    atomic_write_json(info_path, info)
    console.print(f"[green]distill: student {student['dir']} (teacher {teacher_dir}, targets {cfg.distill.targets})")
    return model, processor, info
