"""Answer-token row selection, teacher vocabulary alignment and chunked summation over rows.

Every KD function first gathers the rows of the logits that are scored ("answer rows", [N, V] in
the input dtype) and only then runs fp32 maths on them, ``chunk_size`` rows at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from clinkd.losses.config import KDLossConfig


def check_logits_and_labels(logits: torch.Tensor, labels: torch.Tensor, name: str = "student_logits") -> None:
    """Raise ValueError unless ``logits`` is [B, L, V] and ``labels`` is [B, L]."""
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"{name} must be [B, L, V] and labels [B, L]; got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )


def answer_mask(labels: torch.Tensor, cfg: KDLossConfig) -> torch.Tensor:
    """Boolean mask over logit positions that are scored.

    shift_labels=True: [B, L-1], ``mask[b, t] = labels[b, t+1] != ignore_index`` (the logit at t
    predicts token t+1, as in the model's own CE). shift_labels=False: [B, L],
    ``mask[b, t] = labels[b, t] != ignore_index`` (the official snippet).
    """
    scored = labels[:, 1:] if cfg.shift_labels else labels
    return scored != cfg.ignore_index


def select_answer_rows(logits: torch.Tensor, labels: torch.Tensor, cfg: KDLossConfig) -> torch.Tensor:
    """The scored rows of ``logits`` [B, L, V] as [N, V] in the input dtype, in (b, t) row-major order."""
    check_logits_and_labels(logits, labels, "logits")
    positions = logits[:, :-1] if cfg.shift_labels else logits
    return positions[answer_mask(labels, cfg)]


def align_teacher_vocab(teacher_logits: torch.Tensor, student_vocab_size: int) -> tuple[torch.Tensor, bool]:
    """Slice a wider teacher head to the student's vocabulary; return (logits, whether it was sliced).

    Qwen2-VL-2B has 151,936 rows and 7B/72B 152,064: the extra rows are padding ids the tokenizer
    never emits, so the teacher's softmax is taken over the student's ids only (the official rule).
    A teacher narrower than the student cannot be aligned and raises ValueError naming both sizes.
    """
    teacher_vocab_size = teacher_logits.shape[-1]
    if teacher_vocab_size < student_vocab_size:
        raise ValueError(
            f"teacher vocabulary ({teacher_vocab_size}) is narrower than the student's ({student_vocab_size}); "
            "KD needs the teacher to score every student token id"
        )
    if teacher_vocab_size == student_vocab_size:
        return teacher_logits, False
    return teacher_logits[..., :student_vocab_size], True


def sum_over_row_chunks(
    row_fn: Callable[..., torch.Tensor], rows: Sequence[torch.Tensor], chunk_size: int | None
) -> torch.Tensor:
    """Σ_n row_fn(*rows)[n] as an fp32 scalar, computed ``chunk_size`` rows at a time.

    ``rows`` are tensors sharing their first dimension N; ``row_fn`` maps aligned blocks of them to
    per-row values [n] and must be a pure function of its inputs. When autograd is recording, each
    chunk runs under non-reentrant activation checkpointing: its fp32 intermediates are freed after
    the forward pass and recomputed chunk by chunk in the backward pass, so at most one chunk's
    [chunk, V] fp32 working set is alive at a time (otherwise autograd would keep every chunk's
    intermediates until backward and chunking would save nothing). The value and gradients are
    those of ``row_fn(*rows).sum()`` up to fp32 summation order; the price is one extra forward.
    """
    n_rows = rows[0].shape[0]
    if chunk_size is None or n_rows <= chunk_size:
        return row_fn(*rows).sum()
    recording = torch.is_grad_enabled() and any(r.requires_grad for r in rows)
    total = torch.zeros((), dtype=torch.float32, device=rows[0].device)
    for chunk in zip(*(r.split(chunk_size) for r in rows)):
        values = checkpoint(row_fn, *chunk, use_reentrant=False) if recording else row_fn(*chunk)
        total = total + values.sum()
    return total
