"""SASG's selection (the paper's Algorithm 1): score every candidate with a Med-CLIP, keep the best.

Scoring (:func:`score_candidates`): each candidate is turned into views by
:func:`clinkd.sasg.views.answer_views`, so region answers (ROC, RC) are scored against the crop of the
question's box, grounding answers (VG) as their referred phrase against the crop of *their own* box
(the mean over their boxes when they give several), and MIA answers against the whole image. The raw
score is CLIP's ``s = τ · cos``. A VG candidate without a parseable box gets no score: it is invalid.

Calibration (:func:`calibrate`): a softmax over one input's valid candidates,

    p_i = exp(s_i) / Σ_{j valid} exp(s_j),   p_i = 0 for an invalid candidate,

i.e. CLIP's own contrastive matching probability restricted to the N candidates. It keeps the order
of the raw scores within an input, and puts every input on the same [0, 1] scale, so ``tie_margin``
means the same everywhere and scores can be compared across inputs and scorers.

Choice (:func:`choose`): the candidate with the highest ``p``. With ``tie_break="logprob"``, every valid
candidate within ``tie_margin`` of the best ``p`` is a tie and the highest sequence log-prob wins among
them; with ``"none"`` the first in generation order (the best beam first) wins. With no valid candidate,
the highest log-prob (``logprob``) or the first candidate (``none``) is returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from clinkd.boxes import Box
from clinkd.sasg.candidates import Candidate
from clinkd.sasg.scorer import MedClipScorer
from clinkd.sasg.views import TASK_KINDS, answer_views, crop


@dataclass(frozen=True)
class ScoredCandidate:
    """A candidate with its raw CLIP score (``None``: invalid) and calibrated probability."""

    text: str
    logprob: float
    clip_score: float | None
    prob: float

    @property
    def valid(self) -> bool:
        return self.clip_score is not None

    @property
    def score(self) -> float:
        """The raw CLIP score, ``-inf`` when invalid (what ``clinkd infer`` shows)."""
        return self.clip_score if self.clip_score is not None else -math.inf

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "clip_score": self.clip_score,
            "prob": self.prob,
            "logprob": self.logprob,
            "valid": self.valid,
        }


@dataclass(frozen=True)
class Selection:
    response: str
    chosen: int
    candidates: tuple[ScoredCandidate, ...]

    def row_extra(self) -> dict:
        """The keys SASG adds to a prediction row, so every choice can be audited."""
        return {"selected": self.chosen, "candidates": [candidate.to_json() for candidate in self.candidates]}

    def ranked(self) -> list[ScoredCandidate]:
        """The chosen candidate, then the others by validity, probability and log-prob (best first)."""
        others = sorted(
            (c for i, c in enumerate(self.candidates) if i != self.chosen),
            key=lambda c: (c.valid, c.prob, c.logprob),
            reverse=True,
        )
        return [self.candidates[self.chosen], *others]


def calibrate(scores: Sequence[float | None]) -> list[float]:
    """Softmax over the valid (not ``None``) scores; 0 for invalid ones; all 0 when none is valid."""
    valid = [score for score in scores if score is not None]
    if not valid:
        return [0.0] * len(scores)
    top = max(valid)
    weights = [math.exp(score - top) if score is not None else 0.0 for score in scores]
    total = sum(weights)
    return [weight / total for weight in weights]


def choose(
    probs: Sequence[float],
    logprobs: Sequence[float],
    valid: Sequence[bool],
    tie_break: str = "logprob",
    tie_margin: float = 0.0,
) -> int:
    """Index of the chosen candidate (see the module docstring)."""
    if tie_break not in ("logprob", "none"):
        raise ValueError(f"select.tie_break: unknown rule {tie_break!r}; expected logprob or none")
    pool = [i for i in range(len(probs)) if valid[i]]
    if pool:
        best = max(probs[i] for i in pool)
        pool = [i for i in pool if probs[i] >= best - tie_margin]
    else:
        pool = list(range(len(probs)))
    if tie_break == "none":
        return pool[0]
    return max(pool, key=lambda i: (logprobs[i], -i))  # equal log-probs: the earlier candidate


def select(
    candidates: Sequence[Candidate],
    clip_scores: Sequence[float | None],
    tie_break: str = "logprob",
    tie_margin: float = 0.0,
) -> Selection:
    """Calibrate ``clip_scores`` and choose among ``candidates``."""
    probs = calibrate(clip_scores)
    scored = tuple(
        ScoredCandidate(c.text, c.logprob, s, p) for c, s, p in zip(candidates, clip_scores, probs, strict=True)
    )
    chosen = choose(probs, [c.logprob for c in candidates], [c.valid for c in scored], tie_break, tie_margin)
    return Selection(candidates[chosen].text, chosen, scored)


def score_candidates(
    scorer: MedClipScorer,
    images: Sequence[Image.Image],
    tasks: Sequence[str],
    questions: Sequence[str],
    candidate_texts: Sequence[Sequence[str]],
    crop_margin: float,
) -> list[list[float | None]]:
    """Raw CLIP scores of every candidate of every input, from one :meth:`MedClipScorer.score_pairs` call.

    ``None`` marks an invalid candidate; a candidate with several views scores the mean of their scores.
    Crops of the same box of the same input are made once.
    """
    crops: dict[tuple[int, Box | None], Image.Image] = {}
    pair_images, pair_texts = [], []
    views_per_candidate: list[list[int | None]] = []
    for item, (image, task, question, texts) in enumerate(zip(images, tasks, questions, candidate_texts, strict=True)):
        counts = []
        for text in texts:
            views = answer_views(TASK_KINDS[task], question, text)
            counts.append(None if views is None else len(views))
            for view in views or []:
                key = (item, view.box)
                if key not in crops:
                    crops[key] = crop(image, view.box, crop_margin)
                pair_images.append(crops[key])
                pair_texts.append(view.text)
        views_per_candidate.append(counts)
    pair_scores = scorer.score_pairs(pair_images, pair_texts).tolist()
    results, cursor = [], 0
    for counts in views_per_candidate:
        item_scores = []
        for count in counts:
            if count is None:
                item_scores.append(None)
                continue
            item_scores.append(sum(pair_scores[cursor : cursor + count]) / count)
            cursor += count
        results.append(item_scores)
    return results
