"""KD from a cached, sparse teacher: its top-k log-probabilities on the answer tokens.

Storage rule: ``topk_logprobs`` stores log softmax(z_t / T) at the *KD temperature* T =
``cfg.temperature`` (the top-k ids do not depend on T). Re-tempering top-k values stored at T = 1
is exact only for the "renormalize" tail (the unknown normaliser cancels), never for "residual"
(the tail mass at another T is unknown), so one rule is used for both: capture with the same
``KDLossConfig`` (temperature, shift_labels, ignore_index) as training, and keep that config with
the cache. Rows come in (b, t) row-major order of the selected answer tokens, so per-sample
caches (B = 1) concatenated in batch order match a padded batch of the same samples.

Tail rules (``cfg.sparse_tail``), with K the teacher's top-k ids of a row:
- "renormalize": both distributions are restricted to K and renormalised,
  q_t(k) = p_t(k) / Σ_K p_t,  q_s(k) = softmax(z_s[K] / T)(k);  D is taken over the k ids.
- "residual": the k ids keep their true probabilities and everything else becomes one "other"
  bucket: teacher r_t = 1 − Σ_K p_t (floored at fp32 eps so reverse/JSD stay finite when the
  top-k holds all mass up to rounding), student r_s = Σ_{v ∉ K} p_s(v) (computed directly, not
  as 1 − Σ). D is taken over k + 1 buckets; with k = V the bucket is empty on both sides and
  dropped, so the loss equals the dense one.
"""

from __future__ import annotations

from functools import partial

import torch

from clinkd.losses.config import KDLossConfig
from clinkd.losses.divergence import divergence_rows
from clinkd.losses.rows import align_teacher_vocab, check_logits_and_labels, select_answer_rows, sum_over_row_chunks

_TAIL_FLOOR = torch.finfo(torch.float32).eps


@torch.no_grad()
def topk_logprobs(
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    cfg: KDLossConfig,
    *,
    student_vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k most likely ids and their log-probabilities at T = ``cfg.temperature``.

    Computed only on the answer rows selected by ``labels`` and ``cfg`` (N of them), ``cfg.chunk_size``
    rows at a time. ``student_vocab_size`` slices a wider teacher head first (as the dense loss does).
    Returns ``(indices [N, k] int64, logprobs [N, k] fp32)``, sorted by decreasing probability.
    """
    check_logits_and_labels(teacher_logits, labels, "teacher_logits")
    if student_vocab_size is not None:
        teacher_logits, _ = align_teacher_vocab(teacher_logits, student_vocab_size)
    vocab_size = teacher_logits.shape[-1]
    if not 1 <= k <= vocab_size:
        raise ValueError(f"top-k size must be in [1, {vocab_size}] (the vocabulary), got {k}")
    rows = select_answer_rows(teacher_logits, labels, cfg)
    # split() of an empty [0, V] tensor yields one empty chunk, so N = 0 needs no special case.
    chunks = [
        torch.log_softmax(chunk.float() / cfg.temperature, dim=-1).topk(k, dim=-1)
        for chunk in rows.split(cfg.chunk_size or max(rows.shape[0], 1))
    ]
    return torch.cat([c.indices for c in chunks]), torch.cat([c.values for c in chunks])


def renormalized_divergence_rows(
    student_rows: torch.Tensor, topk_indices: torch.Tensor, topk_logprobs: torch.Tensor, cfg: KDLossConfig
) -> torch.Tensor:
    """D over the teacher's k ids, both distributions renormalised on them: [n, V], [n, k], [n, k] → [n]."""
    student_logprobs = torch.log_softmax(student_rows.gather(-1, topk_indices).float() / cfg.temperature, dim=-1)
    teacher_logprobs = topk_logprobs - topk_logprobs.logsumexp(-1, keepdim=True)
    return divergence_rows(student_logprobs, teacher_logprobs, cfg.divergence, cfg.jsd_beta)


def residual_divergence_rows(
    student_rows: torch.Tensor, topk_indices: torch.Tensor, topk_logprobs: torch.Tensor, cfg: KDLossConfig
) -> torch.Tensor:
    """D over the teacher's k ids plus one "other" bucket holding each side's remaining mass → [n]."""
    scaled = student_rows.float() / cfg.temperature
    log_normaliser = scaled.logsumexp(-1, keepdim=True)
    student_logprobs = scaled.gather(-1, topk_indices) - log_normaliser
    if topk_indices.shape[-1] == scaled.shape[-1]:  # k = V: no id is left for the bucket
        return divergence_rows(student_logprobs, topk_logprobs, cfg.divergence, cfg.jsd_beta)
    # Student tail summed over the ids outside K, exact even when the top-k holds almost all mass.
    student_tail = scaled.scatter(-1, topk_indices, float("-inf")).logsumexp(-1, keepdim=True) - log_normaliser
    teacher_tail = torch.log((-torch.expm1(topk_logprobs.logsumexp(-1, keepdim=True))).clamp(min=_TAIL_FLOOR))
    return divergence_rows(
        torch.cat([student_logprobs, student_tail], dim=-1),
        torch.cat([topk_logprobs, teacher_tail], dim=-1),
        cfg.divergence,
        cfg.jsd_beta,
    )


def sparse_kd_divergence(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    topk_indices: torch.Tensor,
    topk_logprobs: torch.Tensor,
    cfg: KDLossConfig,
) -> tuple[torch.Tensor, int]:
    """(scale · Σ_n D(q_t,n, q_s,n), N) for a cached top-k teacher, with the tail rule ``cfg.sparse_tail``.

    ``topk_indices`` / ``topk_logprobs`` are [N, k] from ``topk_logprobs`` (ids < V, log-probs at
    T = ``cfg.temperature``) for the same answer rows the student's ``labels`` select. ``scale`` and
    the unreduced total are as in ``kd_divergence``.
    """
    check_logits_and_labels(student_logits, labels)
    student_rows = select_answer_rows(student_logits, labels, cfg)
    n_rows, vocab_size = student_rows.shape
    if topk_indices.shape != topk_logprobs.shape or topk_indices.ndim != 2 or topk_indices.shape[0] != n_rows:
        raise ValueError(
            f"top-k teacher must be two [N, k] tensors with N = {n_rows} answer tokens; "
            f"got indices {tuple(topk_indices.shape)} and logprobs {tuple(topk_logprobs.shape)}"
        )
    if topk_indices.shape[1] > vocab_size or (n_rows and int(topk_indices.max()) >= vocab_size):
        raise ValueError(f"top-k teacher ids must lie in the student's vocabulary [0, {vocab_size})")
    row_fn = renormalized_divergence_rows if cfg.sparse_tail == "renormalize" else residual_divergence_rows
    indices = topk_indices.to(student_rows.device, torch.long)
    logprobs = topk_logprobs.to(student_rows.device, torch.float32)
    total = sum_over_row_chunks(partial(row_fn, cfg=cfg), (student_rows, indices, logprobs), cfg.chunk_size)
    return cfg.kd_scale * total, n_rows
