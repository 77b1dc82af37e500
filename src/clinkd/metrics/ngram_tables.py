"""Vectorised n-gram statistics for BLEU and CIDEr-D, bit-identical to pycocoevalcap's Python loops.

A corpus (candidates and their references) becomes numpy arrays once: every distinct text, its tokens
as integer ids, and per order ``k`` its *groups* (distinct k-grams with their counts) listed per text in
order of first occurrence, which is the insertion order of pycocoevalcap's ``precook`` dicts. Integer
statistics (BLEU's clipped counts, CIDEr's document frequencies) are then exact whatever the order;
every floating-point sum is taken left to right in pycocoevalcap's order (:func:`sequential_sums`),
every scalar function (``log``, ``pow``, ``exp``) is evaluated by the same scalar routine on each
distinct argument, and elementwise products and quotients are single IEEE operations, so the results
equal pycocoevalcap's bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np

INT = np.int64


def expand(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ``arange(start, start + length)`` ranges, and the range number of each element."""
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    owner = np.repeat(np.arange(len(lengths)), lengths)
    return np.repeat(starts - offsets, lengths) + np.arange(total), owner


def sequential_sums(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The sum of each consecutive segment of ``values`` (``lengths`` long), added left to right from
    0.0, as a Python ``+=`` loop does (``np.sum`` adds pairwise, which rounds differently)."""
    sums = np.zeros(len(lengths))
    starts = np.cumsum(lengths) - lengths
    for length in np.unique(lengths[lengths > 0]):
        rows = np.flatnonzero(lengths == length)
        block = values[starts[rows][:, None] + np.arange(length)]
        sums[rows] = np.cumsum(block, axis=1)[:, -1]  # accumulate is strictly left to right
    return sums


def scalar_map(function, values: np.ndarray) -> np.ndarray:
    """``function`` (a Python scalar routine, e.g. libm ``pow``) on each distinct value, broadcast back."""
    distinct, inverse = np.unique(values, return_inverse=True)
    return np.array([function(float(v)) for v in distinct], dtype=float)[inverse.reshape(values.shape)]


@dataclass(frozen=True)
class Groups:
    """The distinct k-grams of every text for one order: sorted by (text, first occurrence)."""

    rank: np.ndarray  # dense id of the k-gram (equal k-grams, equal ids)
    count: np.ndarray  # occurrences in its text
    start: np.ndarray  # per text: index of its first group
    length: np.ndarray  # per text: number of groups
    ranks: int  # number of distinct k-grams in the corpus


@dataclass(frozen=True)
class NgramTable:
    """Every distinct text of a corpus, its word count and its groups for orders 1..n."""

    index: dict[str, int]
    words: np.ndarray
    orders: tuple[Groups, ...]


def build_table(texts: Sequence[str], n: int) -> NgramTable:
    """Tokens are ``text.split()``; k-gram ids are built order by order (id of the (k−1)-gram at a
    position, times the vocabulary size, plus the next token), re-densified with ``np.unique``."""
    index = {text: i for i, text in enumerate(dict.fromkeys(texts))}
    split = [text.split() for text in index]
    words = np.fromiter(map(len, split), dtype=INT, count=len(split))
    flat = list(chain.from_iterable(split))
    vocabulary = {word: i for i, word in enumerate(dict.fromkeys(flat))}
    tokens = np.fromiter(map(vocabulary.__getitem__, flat), dtype=INT, count=len(flat))
    owner = np.repeat(np.arange(len(words)), words)
    position = np.arange(len(tokens)) - np.repeat(np.cumsum(words) - words, words)
    remaining = np.repeat(words, words) - position  # tokens from here to the end of the text
    orders = []
    previous = tokens
    for k in range(1, n + 1):
        valid = np.flatnonzero(remaining >= k)  # positions where a k-gram starts
        code = previous[valid] if k == 1 else previous[valid] * max(1, len(vocabulary)) + tokens[valid + k - 1]
        ranks, dense = np.unique(code, return_inverse=True)
        previous = np.full(len(tokens), -1, dtype=INT)
        previous[valid] = dense.reshape(-1)
        orders.append(_groups(owner[valid], dense.reshape(-1), valid, len(words), len(ranks)))
    return NgramTable(index, words, tuple(orders))


def _groups(text: np.ndarray, rank: np.ndarray, position: np.ndarray, texts: int, ranks: int) -> Groups:
    """Distinct (text, k-gram) pairs with counts, ordered by first occurrence (positions grow with text)."""
    order = np.lexsort((rank, text))  # stable: within a run, positions stay increasing
    text, rank, position = text[order], rank[order], position[order]
    boundary = np.flatnonzero(np.r_[True, (text[1:] != text[:-1]) | (rank[1:] != rank[:-1])]) if len(text) else text
    count = np.diff(np.r_[boundary, len(text)])
    first = position[boundary]
    by_first = np.argsort(first, kind="stable")
    group_text = text[boundary][by_first]
    length = np.bincount(group_text, minlength=texts).astype(INT)
    return Groups(rank[boundary][by_first], count[by_first].astype(INT), np.cumsum(length) - length, length, ranks)


# ---- per-caption joins --------------------------------------------------------------------------
def _pair_groups(groups: Groups, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The groups of ``texts[p]`` for every pair ``p``: (group indices, pair of each)."""
    return expand(groups.start[texts], groups.length[texts])


def _lookup(keys: np.ndarray, table_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each key, whether it is in the sorted unique ``table_keys`` and its index there."""
    where = np.searchsorted(table_keys, keys)
    where = np.minimum(where, max(0, len(table_keys) - 1))
    found = table_keys[where] == keys if len(table_keys) else np.zeros(len(keys), dtype=bool)
    return found, where


def bleu_statistics(
    table: NgramTable, candidates: Sequence[str], references: Sequence[Sequence[str]], n: int
) -> tuple[list[int], list[int], int, int]:
    """pycocoevalcap's corpus totals: clipped matches and guesses per order, test and ``closest`` reference length."""
    candidate = np.array([table.index[c] for c in candidates], dtype=INT)
    ref_texts = np.array([table.index[r] for refs in references for r in refs], dtype=INT)
    ref_caption = np.repeat(np.arange(len(references)), [len(refs) for refs in references])
    lengths = table.words[candidate]
    test_length = int(lengths.sum())
    ref_lengths = table.words[ref_texts]
    # closest reference length, ties to the shorter: minimise (|l − c|, l) per caption
    order = np.lexsort((ref_lengths, np.abs(ref_lengths - lengths[ref_caption]), ref_caption))
    first = np.flatnonzero(np.r_[True, ref_caption[order][1:] != ref_caption[order][:-1]])
    reference_length = int(ref_lengths[order][first].sum())
    correct, guess = [], []
    for k, groups in enumerate(table.orders):
        guess.append(int(np.maximum(0, lengths - k).sum()))
        # the largest count of each k-gram over a caption's references
        index, pair = _pair_groups(groups, ref_texts)
        keys = ref_caption[pair] * groups.ranks + groups.rank[index]
        sort = np.argsort(keys, kind="stable")
        keys, counts = keys[sort], groups.count[index][sort]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, dtype=INT)
        ref_keys = keys[starts]
        ref_max = np.maximum.reduceat(counts, starts) if len(keys) else counts
        index, caption = _pair_groups(groups, candidate)
        found, where = _lookup(caption * groups.ranks + groups.rank[index], ref_keys)
        correct.append(int(np.minimum(groups.count[index][found], ref_max[where[found]]).sum()))
    return correct, guess, test_length, reference_length


def cider_scores(
    table: NgramTable, candidates: Sequence[str], references: Sequence[Sequence[str]], n: int, sigma: float
) -> np.ndarray | None:
    """pycocoevalcap's per-caption CIDEr-D; None when the references have no n-gram at all (it raises)."""
    count = len(candidates)
    candidate = np.array([table.index[c] for c in candidates], dtype=INT)
    ref_counts = np.array([len(refs) for refs in references], dtype=INT)
    ref_texts = np.array([table.index[r] for refs in references for r in refs], dtype=INT)
    ref_caption = np.repeat(np.arange(count), ref_counts)
    log_corpus_size = np.log(float(count))
    texts = len(table.words)
    norms = np.zeros((texts, n))
    values = []
    any_reference_ngram = False
    for k, groups in enumerate(table.orders):
        # document frequency: captions whose references contain the k-gram
        index, pair = _pair_groups(groups, ref_texts)
        pairs = np.unique(ref_caption[pair] * groups.ranks + groups.rank[index])
        frequency = np.bincount(pairs % groups.ranks if groups.ranks else pairs, minlength=groups.ranks)
        any_reference_ngram |= len(pairs) > 0
        # idf = log N − log max(1, df), by the scalar np.log on each distinct df, as pycocoevalcap
        idf = scalar_map(lambda df: float(log_corpus_size - np.log(max(1.0, df))), frequency.astype(float))
        value = groups.count.astype(float) * idf[groups.rank]  # float(tf) · idf
        squares = scalar_map(lambda v: pow(v, 2), value)  # libm pow, as pycocoevalcap (≠ v·v in the last bit at times)
        norms[:, k] = np.sqrt(sequential_sums(squares, groups.length))
        values.append(value)
    if not any_reference_ngram:
        return None
    bigrams = np.maximum(table.words - 1, 0) if n > 1 else np.zeros(texts, dtype=INT)  # pycocoevalcap's "length"
    delta = bigrams[candidate[ref_caption]] - bigrams[ref_texts]
    penalty = scalar_map(lambda d: np.e ** (-(float(d) ** 2) / (2 * sigma**2)), delta.astype(float))
    similarity = np.zeros((len(ref_texts), n))
    pair_candidate = candidate[ref_caption]
    for k, groups in enumerate(table.orders):
        ref_index, ref_pair = _pair_groups(groups, ref_texts)
        ref_keys = ref_pair * groups.ranks + groups.rank[ref_index]  # sorted by pair; unique per pair
        sort = np.argsort(ref_keys, kind="stable")
        index, pair = _pair_groups(groups, pair_candidate)  # candidate groups per (caption, reference), in order
        found, where = _lookup(pair * groups.ranks + groups.rank[index], ref_keys[sort])
        h = values[k][index[found]]
        r = values[k][ref_index[sort][where[found]]]
        sums = sequential_sums(np.minimum(h, r) * r, np.bincount(pair[found], minlength=len(ref_texts)))
        norm_h, norm_r = norms[pair_candidate, k], norms[ref_texts, k]
        both = (norm_h != 0) & (norm_r != 0)
        sums[both] = sums[both] / (norm_h[both] * norm_r[both])
        similarity[:, k] = sums * penalty
    # Σ over each caption's references, in order, from 0.0 (pycocoevalcap's ``score += sim``)
    totals = np.zeros((count, n))
    first = np.cumsum(ref_counts) - ref_counts
    for j in range(int(ref_counts.max())):
        has = np.flatnonzero(ref_counts > j)
        totals[has] = totals[has] + similarity[first[has] + j]
    return np.mean(totals, axis=1) / ref_counts.astype(float) * 10.0
