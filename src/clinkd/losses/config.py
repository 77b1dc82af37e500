"""The KD loss configuration: one frozen dataclass plus its presets (paper, official snippet).

It is also the recipe's KD loss: every field is a key of ``distill:`` (``distill.alpha``, ``distill.temperature``, …,
``clinkd.config.DistillConfig``), validated by pydantic from the annotations below, so a new setting is one field here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

Divergence = Literal["forward", "reverse", "jsd"]
Reduction = Literal["mean", "sum"]
SparseTail = Literal["renormalize", "residual"]


@dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))
class KDLossConfig:
    """How the distillation loss is computed (see ``docs/kd-loss.md`` for the formulas).

    With ``D`` the per-token divergence chosen by ``divergence``, ``S`` the answer tokens selected
    from ``labels`` and ``s = T**2 if t_squared else 1``:

        L_KD = s * Σ_{n ∈ S} D(p_t,n, p_s,n) / (|S| if reduction == "mean" else 1)
        L    = (L_CE + alpha * L_KD) / (1 + alpha)    if use_ce else    L_KD

    where ``p = softmax(z / temperature)`` for both models, computed in fp32.

    Fields:
        alpha: weight of L_KD against L_CE (paper and official snippet: 0.5).
        temperature: T, applied to student and teacher logits alike. The paper does not state T;
            the official snippet uses 0.5 (which sharpens rather than softens). Default 2.0.
        t_squared: multiply L_KD by T² (the paper's formula; the official snippet does not).
        divergence: "forward" = KL(p_t ‖ p_s); "reverse" = KL(p_s ‖ p_t); "jsd" = the generalised
            Jensen-Shannon divergence of GKD / TRL with ``jsd_beta`` (see ``divergence_rows``).
        jsd_beta: β ∈ [0, 1] for "jsd": β = 0 is exactly forward KL, β = 1 exactly reverse KL.
        reduction: "mean" divides the summed divergence by the number of answer tokens (like the
            model's CE); "sum" does not (the official snippet).
        shift_labels: True scores the logit at position t against answer label t+1 (correct for
            causal LMs); False selects positions where ``labels[t]`` itself is an answer token
            (the official snippet's off-by-one).
        chunk_size: answer tokens per chunk for the fp32 maths; None = all at once. Never changes
            the value or gradients, only peak memory and speed.
        use_ce: mix in the caller's CE loss; False = pure KD (the official ``if_use_entropy=False``).
        sparse_tail: how a cached top-k teacher's missing mass is handled ("renormalize" or
            "residual"; see ``clinkd.losses.sparse``).
        ignore_index: the label value of positions that are not answer tokens (negative: no token id).
    """

    alpha: Annotated[float, Field(ge=0)] = 0.5
    temperature: Annotated[float, Field(gt=0)] = 2.0
    t_squared: bool = True
    divergence: Divergence = "forward"
    jsd_beta: Annotated[float, Field(ge=0, le=1)] = 0.5
    reduction: Reduction = "mean"
    shift_labels: bool = True
    chunk_size: Annotated[int | None, Field(ge=1)] = None
    use_ce: bool = True
    sparse_tail: SparseTail = "residual"
    ignore_index: Annotated[int, Field(lt=0)] = -100

    @property
    def kd_scale(self) -> float:
        """The factor on the summed divergence: T² when ``t_squared``, else 1."""
        return self.temperature**2 if self.t_squared else 1.0

    @classmethod
    def paper(cls, **overrides: Any) -> KDLossConfig:
        """The paper's loss: (L_CE + 0.5·T²·KL(p_t‖p_s)) / 1.5, KL averaged over shifted answer tokens.

        T is not given in the paper; the default 2.0 is ours. ``overrides`` replace any field.
        """
        return replace(
            cls(alpha=0.5, t_squared=True, divergence="forward", reduction="mean", shift_labels=True, use_ce=True),
            **overrides,
        )

    @classmethod
    def clinkd_official(cls, use_ce: bool = False, **overrides: Any) -> KDLossConfig:
        """The official README snippet with the assumed ``compute_fkl``, reproduced exactly.

        τ = 0.5 on both models, no τ², forward KL summed (not averaged) over positions whose
        *unshifted* label is an answer token, and ``loss = (0.5·KL + CE)/1.5`` when ``use_ce``
        (``if_use_entropy=True``), else ``loss = KL`` (the snippet's default).
        """
        return replace(
            cls(
                alpha=0.5,
                temperature=0.5,
                t_squared=False,
                divergence="forward",
                reduction="sum",
                shift_labels=False,
                use_ce=use_ce,
            ),
            **overrides,
        )


# The named starting points of ``distill.preset``: the other ``distill:`` loss keys override the preset's values.
KD_LOSS_PRESETS: dict[str, Callable[..., KDLossConfig]] = {
    "paper": KDLossConfig.paper,
    "clinkd-official": KDLossConfig.clinkd_official,
}
