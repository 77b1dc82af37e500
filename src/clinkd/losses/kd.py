"""Dense (online teacher) KD divergence and the combined distillation loss.

Conventions: logits are [B, L, V] in any float dtype (all maths in fp32); labels are [B, L] *unshifted*
token ids (HF / LLaMA-Factory: ``ignore_index`` on prompt, image, system and padding positions).
The teacher is a constant target: its logits are detached.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from clinkd.losses.config import KDLossConfig
from clinkd.losses.divergence import divergence_rows
from clinkd.losses.rows import align_teacher_vocab, check_logits_and_labels, select_answer_rows, sum_over_row_chunks
from clinkd.losses.sparse import sparse_kd_divergence


def dense_divergence_rows(student_rows: torch.Tensor, teacher_rows: torch.Tensor, cfg: KDLossConfig) -> torch.Tensor:
    """D(softmax(z_t/T), softmax(z_s/T)) per row: [n, V] logits (any dtype) → [n] fp32."""
    student_logprobs = torch.log_softmax(student_rows.float() / cfg.temperature, dim=-1)
    teacher_logprobs = torch.log_softmax(teacher_rows.float() / cfg.temperature, dim=-1)
    return divergence_rows(student_logprobs, teacher_logprobs, cfg.divergence, cfg.jsd_beta)


def kd_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, cfg: KDLossConfig
) -> tuple[torch.Tensor, int]:
    """(scale · Σ_{n ∈ answer rows} D(p_t,n, p_s,n), N): the *unreduced* KD term and its token count.

    ``scale`` is T² when ``cfg.t_squared``. The total is returned unreduced so a caller that
    accumulates gradients over micro-batches can divide by a global token count instead of
    ``cfg.reduction``. A teacher with a wider vocabulary is sliced to the student's
    (``align_teacher_vocab``; call it yourself to log whether that happened); a narrower one raises.
    Rows are selected before any fp32 work and processed ``cfg.chunk_size`` at a time.
    """
    check_logits_and_labels(student_logits, labels)
    check_logits_and_labels(teacher_logits, labels, "teacher_logits")
    teacher_logits, _ = align_teacher_vocab(teacher_logits.detach(), student_logits.shape[-1])
    student_rows = select_answer_rows(student_logits, labels, cfg)
    teacher_rows = select_answer_rows(teacher_logits, labels, cfg)
    total = sum_over_row_chunks(partial(dense_divergence_rows, cfg=cfg), (student_rows, teacher_rows), cfg.chunk_size)
    return cfg.kd_scale * total, student_rows.shape[0]


def combine_losses(
    kd_total: torch.Tensor, n_tokens: int, ce_loss: torch.Tensor | None, cfg: KDLossConfig
) -> dict[str, Any]:
    """Reduce the KD term and mix in CE: ``{"loss", "kd", "ce", "n_tokens"}``.

    kd = kd_total / max(N, 1) for reduction "mean", kd_total for "sum";
    loss = (ce + α·kd)/(1 + α) if ``cfg.use_ce`` (``ce_loss`` required) else kd.
    ``ce`` is passed through for logging even when it is not used.
    """
    kd = kd_total / max(n_tokens, 1) if cfg.reduction == "mean" else kd_total
    if not cfg.use_ce:
        return {"loss": kd, "kd": kd, "ce": ce_loss, "n_tokens": n_tokens}
    if ce_loss is None:
        raise ValueError("KDLossConfig.use_ce is True but ce_loss is None; pass the model's CE or set use_ce=False")
    loss = (ce_loss + cfg.alpha * kd) / (1 + cfg.alpha)
    return {"loss": loss, "kd": kd, "ce": ce_loss, "n_tokens": n_tokens}


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    ce_loss: torch.Tensor | None,
    cfg: KDLossConfig,
    *,
    teacher_logits: torch.Tensor | None = None,
    topk: tuple[torch.Tensor, torch.Tensor] | None = None,
    step_tokens: int | None = None,
) -> dict[str, Any]:
    """The training loss from an online teacher (``teacher_logits``) or a cached top-k one (``topk``).

    Exactly one of ``teacher_logits`` ([B, L, V_t], V_t ≥ V) and ``topk`` ((indices, logprobs) from
    ``topk_logprobs`` for the same labels and config) must be given. ``step_tokens`` is the answer-token count a
    ``"mean"`` reduction divides by when the batch is one micro-batch of an optimiser step counted as a whole (the
    Trainer's ``num_items_in_batch``); None: this batch's own. Returns ``{"loss", "kd", "ce", "n_tokens",
    "teacher_vocab_sliced"}``: ``n_tokens`` is this batch's answer tokens, ``teacher_vocab_sliced`` a bool for an
    online teacher and None for a cached one (the cache was sliced when it was written).
    """
    if (teacher_logits is None) == (topk is None):
        raise ValueError("distillation_loss needs exactly one of teacher_logits and topk")
    if teacher_logits is not None:
        teacher_logits, sliced = align_teacher_vocab(teacher_logits, student_logits.shape[-1])
        kd_total, n_tokens = kd_divergence(student_logits, teacher_logits, labels, cfg)
    else:
        kd_total, n_tokens = sparse_kd_divergence(student_logits, labels, *topk, cfg)
        sliced = None
    parts = combine_losses(kd_total, n_tokens if step_tokens is None else step_tokens, ce_loss, cfg)
    return parts | {"n_tokens": n_tokens, "teacher_vocab_sliced": sliced}
