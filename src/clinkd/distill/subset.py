"""Seeded random shares of the training records: the teacher's subset and the pseudo-labelled subset."""

from __future__ import annotations

import numpy as np

# The pseudo-labelled draw uses seed + PSEUDO_SEED_OFFSET, so it is independent of the teacher's draw.
PSEUDO_SEED_OFFSET = 1


def seeded_subset(n_records: int, fraction: float, seed: int, key: str = "distill.teacher_fraction") -> list[int]:
    """Sorted indices of ``max(1, round(fraction · n_records))`` distinct records, drawn without replacement.

    The draw depends only on ``(n_records, fraction, seed)`` (numpy's PCG64 ``default_rng(seed)``), so a
    rerun picks the same records; ``fraction = 1`` gives every record. The paper tunes the teacher on
    11.1% of the data and draws 30K of the 270K samples (11.1%) for pseudo-label generation.
    ``key`` names the config field in error messages.
    """
    if n_records < 1:
        raise ValueError(f"{key}: there are no training records to draw from")
    if not 0 < fraction <= 1:
        raise ValueError(f"{key} must be in (0, 1], got {fraction}")
    size = max(1, round(fraction * n_records))
    chosen = np.random.default_rng(seed).choice(n_records, size=size, replace=False)
    return sorted(int(index) for index in chosen)


def curriculum_order(margins: list[float | None], seed: int) -> list[int]:
    """The student's example positions in confidence-curriculum order (``distill.curriculum``).

    An example without a margin (ground truth) gets the key ``u ~ U(0, 1)``; the ``P`` pseudo-labelled ones, ranked
    from the most confident (rank ``r = 0``, largest margin) to the least, get ``r/P + (1 − r/P)·u``: each lands
    uniformly in the part of the epoch from its release ``r/P`` on. Sorted by key, so the epoch starts with the
    ground truth and the most confident labels, and the least confident ones join at its end. Seeded by ``seed``.
    """
    rng = np.random.default_rng(seed)
    keys = rng.random(len(margins))
    pseudo = sorted(
        (index for index, margin in enumerate(margins) if margin is not None), key=lambda index: -margins[index]
    )
    for rank, index in enumerate(pseudo):
        release = rank / len(pseudo)
        keys[index] = release + (1 - release) * keys[index]
    return [int(index) for index in np.argsort(keys, kind="stable")]
