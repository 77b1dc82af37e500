"""The vocabulary every stage shares: modalities, tasks, samples and the prediction schema.

Med-GRIT facts (see ``docs/data.md``): a record id is the image stem (``<id>.png``) and its
modality is the prefix before the first ``_``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from clinkd.boxes import answer_text, parse_boxes

# Med-GRIT id prefixes, in the paper's table order, with their display names.
MODALITY_NAMES: dict[str, str] = {
    "ct": "CT",
    "mr": "MR",
    "x": "X-ray",
    "pet": "PET",
    "endoscopy": "Endoscopy",
    "dermoscopy": "Dermoscopy",
    "fundus": "Fundus",
    "ultrasound": "Ultrasound",
}
MODALITIES: tuple[str, ...] = tuple(MODALITY_NAMES)

# The paper's tasks, and BiRD's file tags for the same tasks.
TASKS: tuple[str, ...] = ("VG", "ROC", "RC", "MIA")
BIRD_TASK_TAGS: dict[str, str] = {"VG": "VG", "RO": "ROC", "GC": "RC", "MII": "MIA"}


class UnknownModalityError(ValueError):
    """A record id whose prefix is not one of the 8 Med-GRIT modalities."""


class UnknownTaskError(ValueError):
    """A task name that is neither a paper task nor a BiRD tag."""


def modality_of(record_id: str) -> str:
    """The Med-GRIT modality key of a record id (``ct_00--…`` → ``ct``)."""
    prefix = record_id.split("_", 1)[0].lower()
    if prefix not in MODALITY_NAMES:
        raise UnknownModalityError(
            f"unknown modality prefix {prefix!r} in id {record_id!r}; expected one of {', '.join(MODALITIES)}"
        )
    return prefix


def canonical_task(name: str) -> str:
    """``VG|ROC|RC|MIA`` from a paper name or a BiRD tag (``RO``, ``GC``, ``MII``), any case."""
    upper = name.upper()
    if upper in TASKS:
        return upper
    if upper in BIRD_TASK_TAGS:
        return BIRD_TASK_TAGS[upper]
    raise UnknownTaskError(f"unknown task {name!r}; expected one of {', '.join(TASKS)} or {', '.join(BIRD_TASK_TAGS)}")


@dataclass(frozen=True)
class Turn:
    """One question/answer pair. ``question`` has had its ``<img>…</img>`` tag removed."""

    question: str
    answer: str


# A referring answer of at most this many words is a class name (ROC); a longer one is a caption (RC).
LABEL_MAX_WORDS = 4


def infer_task(turn: Turn) -> str:
    """``VG | ROC | RC | MIA`` of one training turn, read off the turn itself (training records mix the four
    tasks in one conversation and do not name them; Med-GRIT's conventions, ``docs/data.md``):

    * the answer has a box                                   → VG (grounding)
    * the question has a box, the answer ≤ ``LABEL_MAX_WORDS``  → ROC (a class name)
    * the question has a box, a longer answer                → RC (a caption)
    * no box anywhere                                        → MIA (whole-image analysis)
    """
    if parse_boxes(turn.answer):
        return "VG"
    if parse_boxes(turn.question):
        return "ROC" if len(answer_text(turn.answer).split()) <= LABEL_MAX_WORDS else "RC"
    return "MIA"


@dataclass
class Sample:
    """One image with its QA turns, as read from a Med-GRIT/BiRD or ShareGPT file."""

    id: str
    image: Path
    modality: str
    turns: list[Turn]
    task: str | None = None  # set for per-task test files
    source: str = ""  # "file#index", for error messages and provenance


# Fixed schema of a prediction JSONL line; later stages may add keys after these.
PREDICTION_FIELDS: tuple[str, ...] = ("id", "image", "task", "modality", "question", "annotation", "response")


@dataclass
class Prediction:
    id: str
    image: str
    task: str
    modality: str
    question: str
    annotation: str
    response: str
    extra: dict = field(default_factory=dict)

    @classmethod
    def for_sample(cls, task: str, sample: Sample, response: str, extra: dict | None = None) -> "Prediction":
        """The prediction row of a one-turn test sample: its first QA turn, answered with ``response``."""
        turn = sample.turns[0]
        return cls(
            id=sample.id,
            image=sample.image.name,
            task=task,
            modality=sample.modality,
            question=turn.question,
            annotation=turn.answer,
            response=response,
            extra=dict(extra or {}),
        )

    def to_json(self) -> dict:
        row = asdict(self)
        extra = row.pop("extra")
        row.update(extra)
        return row

    @classmethod
    def from_json(cls, row: dict) -> "Prediction":
        missing = [key for key in PREDICTION_FIELDS if key not in row]
        if missing:
            raise KeyError(f"prediction row lacks {', '.join(missing)}")
        not_text = [key for key in PREDICTION_FIELDS if not isinstance(row[key], str)]
        if not_text:
            raise ValueError(f"prediction row field(s) {', '.join(not_text)} must be strings")
        base = {key: row[key] for key in PREDICTION_FIELDS}
        extra = {key: value for key, value in row.items() if key not in PREDICTION_FIELDS}
        return cls(**base, extra=extra)
