"""Pseudo labels: the teacher's answers to training questions, checked, and the student's CE targets built from them.

Generation reuses ``clinkd.engine.generate.write_predictions`` (batched, greedy or beam, resumable JSONL): every
QA turn of the pseudo-labelled records (a seeded share, ``distill.pseudo_fraction``) becomes a one-turn
prompt (the image and that question), in record then turn order, and row ``index`` of
``<out>/train.jsonl`` holds the teacher's answer to turn ``index`` of that list. Greedy generation also records
the answer's confidence ``margin`` (:func:`clinkd.engine.generate.generate_with_margins`).

A pseudo label teaches only when it passes its checks (:func:`pseudo_problem`, ``docs/distill.md``): it is usable
(non-empty, every box parses) and, with ``distill.pseudo_filter``, it names what its training turn is about (a VG
answer the asked structure, with a parseable box; any other answer no class of the modality that the ground truth
does not name), and its margin reaches ``distill.min_margin``. A dropped label leaves its turn to the ground truth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from clinkd.batching import ChatExample, InputFormat, training_examples
from clinkd.boxes import BoxError, convert_markup
from clinkd.config import PredictConfig
from clinkd.data.records import Sample, Turn, infer_task
from clinkd.engine.generate import Choice, generate_with_margins, predictions_complete, write_predictions
from clinkd.io import read_jsonl
from clinkd.metrics.fidelity import has_parseable_box, named_classes, names_asked

PSEUDO_TASK = "train"  # the JSONL name and the rows' "task": these are answers on the train split
# Why a pseudo label was dropped (its count key in distill/info.json is "pseudo_dropped_<reason>").
DROP_REASONS: tuple[str, ...] = ("unusable", "wrong_structure", "no_box", "low_confidence")


@dataclass(frozen=True)
class PseudoLabel:
    """The teacher's answer to one training turn, and its confidence margin (None: not recorded, e.g. beam search)."""

    answer: str
    margin: float | None = None


@dataclass(frozen=True)
class PseudoChecks:
    """What a pseudo label must pass beyond being usable: ``filter`` the ground-truth checks, with ``classes`` the
    modality → class names of the training split; ``min_margin`` the least confidence margin (0: any)."""

    filter: bool = True
    classes: Mapping[str, set[str]] = field(default_factory=dict)
    min_margin: float = 0.0


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
    input_format: InputFormat = InputFormat(),
    max_new_tokens: int | None = None,
) -> Path:
    """Write the teacher's answer to every turn of ``records`` to ``out_dir/train.jsonl`` (rows already there are kept).

    Budget: ``max_new_tokens`` (``distill.pseudo_max_new_tokens``), or the largest of ``predict_cfg.max_new_tokens``
    (the training turns carry no task), with ``predict_cfg.batch_size`` and ``num_beams``.
    """
    budget = max_new_tokens or max(predict_cfg.max_new_tokens.values())
    # model_copy(update=) skips validation: "train" is not one of the four test tasks.
    pseudo_cfg = predict_cfg.model_copy(update={"max_new_tokens": {PSEUDO_TASK: budget}})
    selector = MarginSelector() if predict_cfg.num_beams == 1 else None  # a beam's margin is not one next-token choice
    paths = write_predictions(
        teacher, processor, {PSEUDO_TASK: turn_samples(records)}, out_dir, pseudo_cfg, input_format, selector
    )
    return paths[PSEUDO_TASK]


class MarginSelector:
    """Greedy answers, each row with its confidence ``margin`` (a :class:`~clinkd.engine.generate.Selector`)."""

    name = "greedy with margins"

    def __call__(
        self, model, processor, collator, task: str, samples: Sequence[Sample], max_new_tokens: int
    ) -> list[Choice]:
        return [
            Choice(text, row)
            for text, row in generate_with_margins(model, processor, collator, samples, max_new_tokens)
        ]


def read_pseudo_labels(out_dir: Path, records: Sequence[Sample]) -> list[PseudoLabel]:
    """The teacher's answers and margins, one per turn of ``records``, after checking each row against its turn.

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
    return [PseudoLabel(rows[index]["response"], rows[index].get("margin")) for index in range(len(samples))]


def usable_pseudo_answer(answer: str, box_style: str) -> bool:
    """A pseudo answer can be a training target: non-empty, and every box in it parses (the collator converts it)."""
    if not answer.strip():
        return False
    try:
        convert_markup(answer, box_style)
    except BoxError:
        return False
    return True


def pseudo_problem(turn: Turn, label: PseudoLabel, modality: str, box_style: str, checks: PseudoChecks) -> str | None:
    """Why ``label`` must not teach ``turn`` (one of :data:`DROP_REASONS`), or None when it may."""
    if not usable_pseudo_answer(label.answer, box_style):
        return "unusable"
    if checks.filter:
        if infer_task(turn) == "VG":
            if names_asked(turn.question, label.answer) is False:
                return "wrong_structure"
            if not has_parseable_box(label.answer):
                return "no_box"
        else:
            classes = checks.classes.get(modality, set())
            if not named_classes(label.answer, classes) <= named_classes(turn.answer, classes):
                return "wrong_structure"
    if checks.min_margin > 0 and (label.margin is None or label.margin < checks.min_margin):
        return "low_confidence"
    return None


def aligned_pseudo_labels(
    train: Sequence[Sample], chosen: Sequence[int], answers: Sequence[PseudoLabel]
) -> list[PseudoLabel | None]:
    """One entry per turn of ``train`` (record then turn order): the teacher's answer for the turns of the
    ``chosen`` records (``answers`` in their turn order, as :func:`read_pseudo_labels` returns them), else None."""
    answer_of = iter(answers)
    by_record = {index: [next(answer_of) for _ in train[index].turns] for index in chosen}
    return [answer for index, sample in enumerate(train) for answer in by_record.get(index, [None] * len(sample.turns))]


@dataclass
class StudentTargets:
    """The student's training examples, each one's pseudo-label margin (None: a ground-truth example, or a pseudo
    label without one; the mean of its pseudo turns' margins for a multi-turn example), and what became of the
    pseudo labels."""

    examples: list[ChatExample]
    margins: list[float | None]
    counts: dict[str, int]


def distillation_examples(
    train: Sequence[Sample],
    pseudo: Sequence[PseudoLabel | None] | None,
    targets: str,
    turns_mode: str,
    box_style: str,
    checks: PseudoChecks = PseudoChecks(filter=False),
) -> StudentTargets:
    """The student's training examples for ``targets``.

    ``pseudo`` has one entry per turn of ``train`` (record then turn order): the teacher's label, or None
    for a turn that was not pseudo-labelled.

    - ``ground_truth``: ``training_examples(train)``, as plain SFT (``pseudo`` unused);
    - ``pseudo``: the same examples with each pseudo-labelled answer replaced by the teacher's. A label that fails
      its checks (:func:`pseudo_problem`) keeps the ground truth, and so does one equal to it up to box/ref markup;
    - ``both``: the ground-truth examples, then those relabelled examples that differ from their twin.

    Counts: ``examples``; ``pseudo_labelled`` turns; of those, ``pseudo_dropped_<reason>`` per
    :data:`DROP_REASONS`, ``pseudo_equal_gt`` and ``pseudo_used`` (a teacher answer that differs from the ground truth).
    """
    gt_examples = training_examples(train, turns_mode)
    counts = {
        "pseudo_labelled": 0,
        **{f"pseudo_dropped_{reason}": 0 for reason in DROP_REASONS},
        "pseudo_equal_gt": 0,
        "pseudo_used": 0,
    }
    if targets == "ground_truth":
        return StudentTargets(gt_examples, [None] * len(gt_examples), {"examples": len(gt_examples), **counts})
    if targets not in ("pseudo", "both"):
        raise ValueError(f"distill.targets: unknown {targets!r}; expected ground_truth, pseudo or both")
    n_turns = sum(len(sample.turns) for sample in train)
    if pseudo is None or len(pseudo) != n_turns:
        raise ValueError(f"distill.targets={targets} needs one pseudo-label entry per training turn ({n_turns})")
    labels = iter(pseudo)
    relabelled, turn_margins = [], []
    for sample in train:
        turns, margins = [], []
        for turn in sample.turns:
            label = next(labels)
            answer = (
                None if label is None else _teaching_answer(turn, label, sample.modality, box_style, checks, counts)
            )
            turns.append(turn if answer is None else Turn(turn.question, answer))
            margins.append(None if answer is None else label.margin)
        relabelled.append(replace(sample, turns=turns))
        turn_margins.append(margins)
    pseudo_examples = training_examples(relabelled, turns_mode)
    example_margins = (
        [margin for margins in turn_margins for margin in margins]
        if turns_mode == "split"
        else [_mean_margin(margins) for margins in turn_margins]
    )
    if targets == "both":
        kept = [index for index, (example, twin) in enumerate(zip(pseudo_examples, gt_examples)) if example != twin]
        pseudo_examples = gt_examples + [pseudo_examples[index] for index in kept]
        example_margins = [None] * len(gt_examples) + [example_margins[index] for index in kept]
    return StudentTargets(pseudo_examples, example_margins, {"examples": len(pseudo_examples), **counts})


def _teaching_answer(
    turn: Turn, label: PseudoLabel, modality: str, box_style: str, checks: PseudoChecks, counts: dict
) -> str | None:
    """The teacher's answer when it passes its checks and differs from the ground truth (counted either way), else
    None."""
    counts["pseudo_labelled"] += 1
    problem = pseudo_problem(turn, label, modality, box_style, checks)
    if problem is not None:
        counts[f"pseudo_dropped_{problem}"] += 1
        return None
    # An answer equal to the ground truth up to markup keeps the GT text, so "both" can drop its twin.
    same = convert_markup(label.answer, box_style) == convert_markup(turn.answer, box_style)
    counts["pseudo_equal_gt" if same else "pseudo_used"] += 1
    return None if same else label.answer


def _mean_margin(margins: Sequence[float | None]) -> float | None:
    known = [margin for margin in margins if margin is not None]
    return sum(known) / len(known) if known else None
