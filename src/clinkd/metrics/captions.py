"""Corpus-level caption metrics with pycocoevalcap 1.2's exact semantics, in pure Python.

Every scorer takes ``candidates[i]`` (one tokenised string) and ``references[i]`` (a non-empty list of
tokenised strings), tokens joined by single spaces as :func:`clinkd.metrics.tokenize.ptb_tokenize`
writes them, and returns one corpus score per metric key (pycocoevalcap's keys).

* **BLEU-1..4** (``Bleu(4)``, ``option='closest'``): cumulative corpus BLEU. With clipped n-gram
  matches ``c_k`` and candidate n-gram counts ``g_k`` summed over the corpus,
  ``BLEU_n = (Π_{k≤n} (c_k + 1e-15)/(g_k + 1e-9))^(1/n) · BP``, ``BP = exp(1 − 1/r)`` if
  ``r = (len_c + 1e-15)/(len_r + 1e-9) < 1`` else 1, where ``len_r`` sums, per candidate, the
  reference length closest to it (ties → the shorter).
* **ROUGE-L** (``Rouge``): per caption ``F = (1+β²)PR/(R+β²P)``, β = 1.2, with ``P``/``R`` the best
  LCS precision/recall over the references (0 when either is 0); the corpus score is the mean.
  Tokens come from ``str.split(" ")``, so an empty string is one empty token (an empty candidate
  against an empty reference scores 1, as in pycocoevalcap).
* **CIDEr-D** (``Cider``, n = 4, σ = 6): TF-IDF n-gram vectors with ``idf = log(N) − log(max(1, df))``,
  ``df`` counted over the references of the ``N`` captions scored together; per n the clipped cosine
  ``Σ min(v_c, v_r)·v_r / (|v_c||v_r|)`` times ``exp(−δ²/2σ²)``, δ = difference of the *bigram*
  counts (pycocoevalcap's ``length``; the length difference whenever it matters, i.e. both captions
  non-empty), averaged over n and references, ×10; the corpus score is the mean. A corpus whose
  references are all empty scores 0 (pycocoevalcap raises on an empty max()).

Speed (``benchmarks/metrics.py``): BLEU and CIDEr-D run on numpy n-gram tables
(:mod:`clinkd.metrics.ngram_tables`, built once per corpus and shared), ROUGE-L uses a bit-parallel LCS;
every floating-point operation keeps pycocoevalcap's order, so the scores are bit-identical to it.

Backends: a :class:`CaptionScorer` produces some metric keys and names its implementation; the
protocol runs every registered scorer (:func:`register_caption_scorer`), so METEOR or SPICE
backends plug in without touching it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from clinkd.metrics.ngram_tables import NgramTable, bleu_statistics, build_table, cider_scores

Ngram = tuple[str, ...]
BLEU_TINY = 1e-15  # pycocoevalcap's ``tiny``: added to matches so a zero count still gives 0
BLEU_SMALL = 1e-9  # pycocoevalcap's ``small``: added to denominators against zero division
ROUGE_BETA = 1.2
CIDER_N = 4
CIDER_SIGMA = 6.0


def ngram_counts(tokens: Sequence[str], n: int) -> Counter[Ngram]:
    """Counts of every 1..n-gram, in pycocoevalcap's insertion order (by k, then by position)."""
    counts: Counter[Ngram] = Counter()
    for k in range(1, n + 1):
        counts.update(zip(*(tokens[i:] for i in range(k))))  # C-level counting; keeps first-seen order
    return counts


@lru_cache(maxsize=2)
def cached_corpus_table(candidates: tuple[str, ...], references: tuple[tuple[str, ...], ...], n: int) -> NgramTable:
    """The n-gram table of one corpus; cached so BLEU and CIDEr-D of the same corpus build it once."""
    return build_table([*candidates, *chain.from_iterable(references)], n)


def corpus_table(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int) -> NgramTable:
    return cached_corpus_table(tuple(candidates), tuple(map(tuple, references)), n)


def check_corpus(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Raise ``ValueError`` unless there is one non-empty reference list per candidate."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every candidate needs at least one reference")


class _PerString(dict):
    """``cache[text]``: ``analyse(text)`` computed once per distinct string of one corpus call."""

    def __init__(self, analyse: Callable[[str], object]):
        super().__init__()
        self.analyse = analyse

    def __missing__(self, text: str) -> object:
        value = self[text] = self.analyse(text)
        return value


# ---- BLEU ---------------------------------------------------------------------------------------
def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n (module docstring); ``[0.0]*n`` for an empty corpus."""
    check_corpus(candidates, references)
    if not candidates:
        return [0.0] * n
    correct, guess, test_length, reference_length = bleu_statistics(
        corpus_table(candidates, references, n), candidates, references, n
    )
    scores, product = [], 1.0
    for k in range(n):
        product *= float(correct[k] + BLEU_TINY) / (guess[k] + BLEU_SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_length + BLEU_TINY) / (reference_length + BLEU_SMALL)
    if ratio < 1:
        scores = [score * math.exp(1 - 1 / ratio) for score in scores]
    return scores


# ---- ROUGE-L ------------------------------------------------------------------------------------
def _position_masks(tokens: Sequence[str]) -> dict[str, int]:
    """token → bit set of its positions in ``tokens`` (bit i for position i)."""
    masks: dict[str, int] = {}
    for position, token in enumerate(tokens):
        masks[token] = masks.get(token, 0) | (1 << position)
    return masks


def _lcs_from_masks(masks: dict[str, int], size: int, other: Sequence[str]) -> int:
    """Bit-parallel LCS (Hyyrö 2004) of a sequence given by its position ``masks`` and ``other``.

    ``V`` starts with ``size`` one bits; per token ``t`` of ``other``: ``U = V & M[t]``,
    ``V = (V + U) | (V − U)``. The LCS length is the number of zero bits among the low ``size`` bits.
    """
    full = (1 << size) - 1
    row = full
    for token in other:
        matches = row & masks.get(token, 0)
        row = ((row + matches) | (row - matches)) & full
    return size - row.bit_count()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (bit-parallel, exact)."""
    return _lcs_from_masks(_position_masks(a), len(a), b)


def rouge_l_caption(candidate: str, refs: Sequence[str], beta: float = ROUGE_BETA) -> float:
    """ROUGE-L F of one caption against its references (module docstring)."""
    return _rouge_l_from(candidate.split(" "), [_rouge_reference(ref) for ref in refs], beta)


def _rouge_reference(ref: str) -> tuple[dict[str, int], int]:
    tokens = ref.split(" ")
    return _position_masks(tokens), len(tokens)


def _rouge_l_from(tokens: list[str], refs: Sequence[tuple[dict[str, int], int]], beta: float) -> float:
    precisions, recalls = [], []
    for masks, size in refs:
        lcs = _lcs_from_masks(masks, size, tokens)
        precisions.append(lcs / float(len(tokens)))
        recalls.append(lcs / float(size))
    p, r = max(precisions), max(recalls)
    if p == 0 or r == 0:
        return 0.0
    return ((1 + beta**2) * p * r) / float(r + beta**2 * p)


def rouge_l(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F over the corpus; 0.0 for an empty corpus."""
    check_corpus(candidates, references)
    if not candidates:
        return 0.0
    analysed = _PerString(_rouge_reference)
    scores = [
        _rouge_l_from(candidate.split(" "), [analysed[ref] for ref in refs], ROUGE_BETA)
        for candidate, refs in zip(candidates, references)
    ]
    return float(np.mean(np.array(scores)))


# ---- CIDEr-D ------------------------------------------------------------------------------------
def cider_d(
    candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = CIDER_N, sigma: float = CIDER_SIGMA
) -> float:
    """Corpus CIDEr-D (module docstring); IDF over the references of exactly these captions.

    Vectorised (:mod:`clinkd.metrics.ngram_tables`) with every float operation of pycocoevalcap in its
    order, so the result is bit-identical.
    """
    check_corpus(candidates, references)
    if not candidates:
        return 0.0
    scores = cider_scores(corpus_table(candidates, references, n), candidates, references, n, sigma)
    return 0.0 if scores is None else float(np.mean(scores))


# ---- backends -----------------------------------------------------------------------------------
@runtime_checkable
class CaptionScorer(Protocol):
    """One caption-metric backend: corpus scores for ``metrics`` (pycocoevalcap's key names)."""

    metrics: tuple[str, ...]
    backend: str  # shown in the report next to each of its metrics

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]: ...


@dataclass(frozen=True)
class FunctionScorer:
    """A :class:`CaptionScorer` from a pure function returning one value or a list (one per metric)."""

    metrics: tuple[str, ...]
    backend: str
    function: Callable[[Sequence[str], Sequence[Sequence[str]]], float | list[float]]

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        values = self.function(candidates, references)
        values = values if isinstance(values, list) else [values]
        return {metric: float(value) for metric, value in zip(self.metrics, values, strict=True)}


_SEMANTICS = "clinkd pure Python, pycocoevalcap 1.2 {} semantics"
BUILTIN_SCORERS: tuple[CaptionScorer, ...] = (
    FunctionScorer(("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"), _SEMANTICS.format("Bleu(4) closest"), bleu),
    FunctionScorer(("ROUGE_L",), _SEMANTICS.format("Rouge"), rouge_l),
    FunctionScorer(("CIDEr",), _SEMANTICS.format("Cider (CIDEr-D)"), cider_d),
)
_REGISTRY: list[CaptionScorer] = []


def register_caption_scorer(scorer: CaptionScorer, *, replace: bool = False) -> None:
    """Add a backend. Its metric keys must be new unless ``replace``: then it owns them from now on."""
    if not isinstance(scorer, CaptionScorer):
        raise TypeError(f"{scorer!r} is not a CaptionScorer (needs metrics, backend and score())")
    owners = metric_backends(_REGISTRY)
    taken = [metric for metric in scorer.metrics if metric in owners]
    if taken and not replace:
        raise ValueError(f"metric {taken[0]!r} already has the backend {owners[taken[0]]!r}")
    _REGISTRY.append(scorer)


def unregister_caption_scorer(scorer: CaptionScorer) -> None:
    _REGISTRY.remove(scorer)


def registered_caption_scorers() -> list[CaptionScorer]:
    """The registered backends in registration order (a later one owns the metrics it shares)."""
    return list(_REGISTRY)


def metric_backends(scorers: Sequence[CaptionScorer]) -> dict[str, str]:
    """Metric key → backend name; a later scorer owns a metric that an earlier one also produces."""
    return {metric: scorer.backend for scorer in scorers for metric in scorer.metrics}


def score_captions(
    candidates: Sequence[str], references: Sequence[Sequence[str]], scorers: Sequence[CaptionScorer]
) -> dict[str, float]:
    """Every metric of ``scorers`` on one corpus, each taken from the scorer that owns it."""
    owners = {metric: scorer for scorer in scorers for metric in scorer.metrics}
    values: dict[str, float] = {}
    for scorer in dict.fromkeys(owners.values()):  # each backend runs once
        produced = scorer.score(candidates, references)
        values.update({metric: produced[metric] for metric in scorer.metrics if owners[metric] is scorer})
    return values


for _scorer in BUILTIN_SCORERS:
    register_caption_scorer(_scorer)
