"""How close a generated answer is to its ground truth: text similarity plus, for grounding answers, box IoU.

Two pluggable text similarities, both in [0, 1] for the lexical one and [-1, 1] for the embedding one,
and both computed on the *answer text*: box markup removed, ``<ref>`` tags dropped but their phrase kept
(boxes are judged by IoU, not as text).

* ``lexical`` (default, no weights): bag-of-words F1 over content words. With ``O`` and ``G`` the multisets
  of lower-cased alphanumeric tokens of output and ground truth after removing :data:`NEUTRAL_WORDS`,
  ``c = |O ∩ G|`` (multiset intersection), ``P = c/|O|``, ``R = c/|G|`` and ``F1 = 2PR/(P+R)`` (0 when
  ``c = 0``; 1 when both are empty, 0 when only one is).
* ``embedding``: cosine of the L2-normalised sentence embeddings of a local sentence-transformers checkpoint.

A ground truth with boxes is a grounding answer. Its output is *grounded* when it has as many boxes and the
i-th output box overlaps the i-th ground-truth box with IoU > ``iou_threshold`` (0.5): the figure's
"wrong groundings" path sends every other grounding output to the corrector whatever its text score.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from clinkd.boxes import BoxError, answer_text, parse_boxes
from clinkd.config import ConfigError

_TOKEN = re.compile(r"[a-z0-9]+")

# Function words and the framing vocabulary answers wrap their facts in ("It is …", "This region shows …").
# Negations (no, not, without) and every location, size, shape or class word stay content words.
NEUTRAL_WORDS = frozenset(
    """
    a an the is are was were be been being am it its this that these those there here
    of in on at to into from by for with as and or
    what which who can could may might appears appear seen shown shows showing show visible located
    object region area image picture answer
    """.split()
)


class SimilarityError(ConfigError):
    """A similarity that cannot be built (missing optional package or checkpoint)."""


class Similarity(Protocol):
    """Pairwise text similarity: ``scores(outputs, references)[i]`` compares ``outputs[i]`` with ``references[i]``."""

    name: str

    def scores(self, outputs: Sequence[str], references: Sequence[str]) -> list[float]: ...


def content_words(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens of :func:`answer_text` that are not in :data:`NEUTRAL_WORDS`."""
    return [token for token in _TOKEN.findall(answer_text(text).lower()) if token not in NEUTRAL_WORDS]


def content_f1(output: str, reference: str) -> float:
    """Bag-of-content-words F1 (the module docstring has the formula)."""
    out, ref = Counter(content_words(output)), Counter(content_words(reference))
    if not out or not ref:
        return float(not out and not ref)
    common = sum((out & ref).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(out.values()), common / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


class LexicalSimilarity:
    """:func:`content_f1`: weight-free, deterministic, order-insensitive, so a reworded answer keeps its score."""

    name = "lexical"

    def scores(self, outputs: Sequence[str], references: Sequence[str]) -> list[float]:
        _check_pairs(outputs, references)
        return [content_f1(output, reference) for output, reference in zip(outputs, references)]


class SentenceEncoder(Protocol):
    """The part of ``sentence_transformers.SentenceTransformer`` used here."""

    def encode(self, sentences: list[str], **kwargs) -> np.ndarray: ...


class EmbeddingSimilarity:
    """Cosine of sentence embeddings: ``cos(u, v) = u·v / (‖u‖‖v‖)`` of the two answer texts."""

    name = "embedding"

    def __init__(self, encoder: SentenceEncoder, batch_size: int = 64):
        self.encoder = encoder
        self.batch_size = batch_size

    @classmethod
    def from_path(cls, path: str | Path, batch_size: int = 64) -> "EmbeddingSimilarity":
        """Load a local sentence-transformers checkpoint directory on the CPU (never the hub)."""
        path = Path(path)
        if not path.is_dir():
            raise SimilarityError(
                f"reflect.similarity.path: {path} is not a sentence-transformers checkpoint directory"
            )
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise SimilarityError(
                "reflect.similarity.kind=embedding needs the optional package sentence-transformers: "
                "pip install 'clinkd[embedding]'"
            ) from error
        return cls(SentenceTransformer(str(path), device="cpu", local_files_only=True), batch_size)

    def scores(self, outputs: Sequence[str], references: Sequence[str]) -> list[float]:
        _check_pairs(outputs, references)
        if not outputs:
            return []
        texts = [answer_text(text) for text in (*outputs, *references)]
        vectors = np.asarray(
            self.encoder.encode(texts, batch_size=self.batch_size, convert_to_numpy=True), dtype=np.float64
        )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = vectors / np.where(norms > 0, norms, 1.0)  # an all-zero embedding scores 0 against anything
        n = len(outputs)
        return np.clip((unit[:n] * unit[n:]).sum(axis=1), -1.0, 1.0).tolist()


def build_similarity(kind: str, path: str | Path | None = None) -> Similarity:
    """The similarity named by ``reflect.similarity.kind``."""
    if kind == "lexical":
        return LexicalSimilarity()
    if kind == "embedding":
        if path is None:
            raise SimilarityError(
                "reflect.similarity.path: kind=embedding needs a local sentence-transformers checkpoint dir"
            )
        return EmbeddingSimilarity.from_path(path)
    raise SimilarityError(f"reflect.similarity.kind: unknown kind {kind!r}; expected lexical or embedding")


@dataclass(frozen=True)
class Judgement:
    """One output against its ground truth. ``grounded``/``min_iou`` are None when the ground truth has no box."""

    similarity: float
    grounded: bool | None
    min_iou: float | None

    def weak(self, threshold: float) -> bool:
        """Sent to the corrector: similarity below ``threshold``, or a wrong grounding."""
        return self.similarity < threshold or self.grounded is False

    @property
    def quality(self) -> float:
        """``min(similarity, min IoU)`` for grounding answers, else the similarity: the corrector budget goes to the
        lowest."""
        return self.similarity if self.min_iou is None else min(self.similarity, self.min_iou)


def grounding(output: str, reference: str, iou_threshold: float = 0.5) -> tuple[bool | None, float | None]:
    """``(grounded, min IoU)`` of the output's boxes against the reference's, paired in order.

    A count mismatch or an unparseable output box is a wrong grounding with IoU 0.
    """
    expected = parse_boxes(reference)
    if not expected:
        return None, None
    try:
        found = parse_boxes(output)
    except BoxError:
        return False, 0.0
    if len(found) != len(expected):
        return False, 0.0
    min_iou = min(truth.iou(box) for truth, box in zip(expected, found))
    return min_iou > iou_threshold, min_iou


def judge(
    outputs: Sequence[str], references: Sequence[str], similarity: Similarity, iou_threshold: float = 0.5
) -> list[Judgement]:
    """Text similarity (one batched call) and box grounding of every output."""
    scores = similarity.scores(outputs, references)
    return [
        Judgement(score, *grounding(output, reference, iou_threshold))
        for score, output, reference in zip(scores, outputs, references)
    ]


def _check_pairs(outputs: Sequence[str], references: Sequence[str]) -> None:
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs but {len(references)} references")
