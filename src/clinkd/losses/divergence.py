"""Per-token divergences between two distributions given as fp32 log-probabilities [n, K]."""

from __future__ import annotations

import math

import torch


def kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_k p_k (log p_k − log q_k) per row; inputs [n, K] log-probabilities, output [n]."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def divergence_rows(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, divergence: str, jsd_beta: float
) -> torch.Tensor:
    """Per-row divergence D(p_t, p_s) between teacher and student log-probabilities [n, K] → [n].

    - "forward": KL(p_t ‖ p_s) = Σ p_t (log p_t − log p_s)  (the paper and the official snippet)
    - "reverse": KL(p_s ‖ p_t) = Σ p_s (log p_s − log p_t)
    - "jsd": the generalised JSD of GKD (Agarwal et al. 2024, eq. 1) as TRL's ``generalized_jsd_loss``:
      with m = β p_t + (1 − β) p_s,  JSD_β = β KL(p_t ‖ m) + (1 − β) KL(p_s ‖ m)  for 0 < β < 1;
      β = 0 is defined as forward KL and β = 1 as reverse KL (JSD_β itself tends to 0 at both ends,
      so these endpoints are a convention, the one TRL uses).
    """
    if divergence == "forward" or (divergence == "jsd" and jsd_beta == 0):
        return kl_rows(teacher_logprobs, student_logprobs)
    if divergence == "reverse" or (divergence == "jsd" and jsd_beta == 1):
        return kl_rows(student_logprobs, teacher_logprobs)
    if divergence == "jsd":
        # log m computed stably in log space: log(β p_t + (1−β) p_s).
        mixture = torch.logaddexp(teacher_logprobs + math.log(jsd_beta), student_logprobs + math.log1p(-jsd_beta))
        return jsd_beta * kl_rows(teacher_logprobs, mixture) + (1 - jsd_beta) * kl_rows(student_logprobs, mixture)
    raise ValueError(f"unknown divergence {divergence!r}; expected forward, reverse or jsd")
