"""Pseudo labels: the teacher's answers to training questions, and the student's CE targets built from them.

Generation reuses ``clinkd.engine.generate.write_predictions`` (batched, greedy or beam, resumable JSONL): every
QA turn of the pseudo-labelled records (a seeded share, ``distill.pseudo_fraction``) becomes a one-turn
prompt (the image and that question), in record then turn order, and row ``index`` of
``<out>/train.jsonl`` holds the teacher's answer to turn ``index`` of that list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from clinkd.batching import ChatExample, training_examples
from clinkd.boxes import BoxError, convert_markup
from clinkd.config import PredictConfig
from clinkd.data.records import Sample, Turn
from clinkd.engine.generate import predictions_complete, write_predictions
from clinkd.io import read_jsonl

PSEUDO_TASK = "train"  # the JSONL name and the rows' "task": these are answers on the train split


def turn_samples(train: Sequence[Sample]) -> list[Sample]:
    """One single-turn sample per (record, turn), in record then turn order: the generation prompts."""
    return [replace(sample, turns=[turn]) for sample in train for turn in sample.turns]


def pseudo_path(out_dir: Path) -> Path:
    return out_dir / f"{PSEUDO_TASK}.jsonl"


def pseudo_labels_complete(out_dir: Path, n_turns: int) -> bool:
    return predictions_complete(pseudo_path(out_dir), n_turns)


def generate_pseudo_labels(
    teacher,
    processor,
    records: Sequence[Sample],
    out_dir: Path,
    predict_cfg: PredictConfig,
    box_style: str = "qwen2-vl",
    square_size: int | None = None,
    max_new_tokens: int | None = None,
) -> Path:
    """Write the teacher's answer to every turn of ``records`` to ``out_dir/train.jsonl`` (rows already there are kept).

    Budget: ``max_new_tokens`` (``distill.pseudo_max_new_tokens``), or the largest of ``predict_cfg.max_new_tokens``
    (the training turns carry no task), with ``predict_cfg.batch_size`` and ``num_beams``.
    """
    budget = max_new_tokens or max(predict_cfg.max_new_tokens.values())
    # model_copy(update=) skips validation: "train" is not one of the four test tasks.
    pseudo_cfg = predict_cfg.model_copy(update={"max_new_tokens": {PSEUDO_TASK: budget}})
    paths = write_predictions(teacher, processor, {PSEUDO_TASK: turn_samples(records)}, out_dir, pseudo_cfg, box_style, square_size)
    return paths[PSEUDO_TASK]


def read_pseudo_labels(out_dir: Path, records: Sequence[Sample]) -> list[str]:
    """The teacher's answers, one per turn of ``records``, after checking each row against its turn.

    A row whose record id or ground truth does not match the turn at its index means the file was
    generated for other data: ValueError naming the file and the row.
    """
    path = pseudo_path(out_dir)
    samples = turn_samples(records)
    rows = {row["index"]: row for row in read_jsonl(path)}
    missing = [index for index in range(len(samples)) if index not in rows]
    if missing:
        raise ValueError(f"{path}: no pseudo label for {len(missing)} turns (first: index {missing[0]})")
    for index, sample in enumerate(samples):
        row = rows[index]
        if row["id"] != sample.id or row["annotation"] != sample.turns[0].answer:
            raise ValueError(
                f"{path}: row {index} is for record {row['id']!r}, but turn {index} is record {sample.id!r} "
                "(or its answer changed); delete the file to regenerate the pseudo labels"
            )
    return [rows[index]["response"] for index in range(len(samples))]


def usable_pseudo_answer(answer: str, box_style: str) -> bool:
    """A pseudo answer can be a training target: non-empty, and every box in it parses (the collator converts it)."""
    if not answer.strip():
        return False
    try:
        convert_markup(answer, box_style)
    except BoxError:
        return False
    return True


def aligned_pseudo_labels(train: Sequence[Sample], chosen: Sequence[int], answers: Sequence[str]) -> list[str | None]:
    """One entry per turn of ``train`` (record then turn order): the teacher's answer for the turns of the
    ``chosen`` records (``answers`` in their turn order, as :func:`read_pseudo_labels` returns them), else None."""
    answer_of = iter(answers)
    by_record = {index: [next(answer_of) for _ in train[index].turns] for index in chosen}
    return [answer for index, sample in enumerate(train) for answer in by_record.get(index, [None] * len(sample.turns))]


def distillation_examples(
    train: Sequence[Sample], pseudo: Sequence[str | None] | None, targets: str, turns_mode: str, box_style: str
) -> tuple[list[ChatExample], dict[str, int]]:
    """The student's training examples for ``targets``, and counts describing the pseudo labels in them.

    ``pseudo`` has one entry per turn of ``train`` (record then turn order): the teacher's answer, or None
    for a turn that was not pseudo-labelled.

    - ``ground_truth``: ``training_examples(train)``, as plain SFT (``pseudo`` unused);
    - ``pseudo``: the same examples with each pseudo-labelled answer replaced by the teacher's. An unusable
      pseudo answer (empty, or with a box that does not parse) keeps the ground truth, and so does one
      equal to it up to box/ref markup;
    - ``both``: the ground-truth examples, then those relabelled examples that differ from their twin.

    Counts: ``examples``; ``pseudo_labelled`` turns; of those, ``pseudo_fallback`` (unusable),
    ``pseudo_equal_gt`` and ``pseudo_used`` (a teacher answer that differs from the ground truth).
    """
    gt_examples = training_examples(train, turns_mode)
    if targets == "ground_truth":
        return gt_examples, {"examples": len(gt_examples), "pseudo_labelled": 0, "pseudo_fallback": 0, "pseudo_equal_gt": 0, "pseudo_used": 0}
    if targets not in ("pseudo", "both"):
        raise ValueError(f"distill.targets: unknown {targets!r}; expected ground_truth, pseudo or both")
    n_turns = sum(len(sample.turns) for sample in train)
    if pseudo is None or len(pseudo) != n_turns:
        raise ValueError(f"distill.targets={targets} needs one pseudo-label entry per training turn ({n_turns})")
    answers = iter(pseudo)
    relabelled, counts = [], {"pseudo_labelled": 0, "pseudo_fallback": 0, "pseudo_equal_gt": 0, "pseudo_used": 0}
    for sample in train:
        turns = []
        for turn in sample.turns:
            answer = next(answers)
            if answer is None:
                turns.append(turn)
                continue
            usable = usable_pseudo_answer(answer, box_style)
            same = usable and convert_markup(answer, box_style) == convert_markup(turn.answer, box_style)
            counts["pseudo_labelled"] += 1
            counts["pseudo_fallback"] += not usable
            counts["pseudo_equal_gt"] += same
            counts["pseudo_used"] += usable and not same
            # An answer equal to the ground truth up to markup keeps the GT text, so "both" can drop its twin.
            turns.append(Turn(turn.question, answer) if usable and not same else turn)
        relabelled.append(replace(sample, turns=turns))
    pseudo_examples = training_examples(relabelled, turns_mode)
    if targets == "both":
        pseudo_examples = gt_examples + [ex for ex, twin in zip(pseudo_examples, gt_examples) if ex != twin]
    return pseudo_examples, {"examples": len(pseudo_examples), **counts}
