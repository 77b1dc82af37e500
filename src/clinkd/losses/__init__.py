"""Knowledge-distillation losses (maths only; the trainer wires them in). See docs/kd-loss.md."""

from clinkd.losses.config import KD_LOSS_PRESETS, KDLossConfig
from clinkd.losses.divergence import divergence_rows, kl_rows
from clinkd.losses.kd import combine_losses, dense_divergence_rows, distillation_loss, kd_divergence
from clinkd.losses.rows import align_teacher_vocab, answer_mask, select_answer_rows, sum_over_row_chunks
from clinkd.losses.sparse import sparse_kd_divergence, topk_logprobs

__all__ = [
    "KD_LOSS_PRESETS",
    "KDLossConfig",
    "align_teacher_vocab",
    "answer_mask",
    "combine_losses",
    "dense_divergence_rows",
    "distillation_loss",
    "divergence_rows",
    "kd_divergence",
    "kl_rows",
    "select_answer_rows",
    "sparse_kd_divergence",
    "sum_over_row_chunks",
    "topk_logprobs",
]
