"""From the recipe's ``distill:`` block to the loss configuration."""

from __future__ import annotations

from dataclasses import fields

from clinkd.config import DistillConfig
from clinkd.losses import KDLossConfig

PRESETS = {"paper": KDLossConfig.paper, "clinkd-official": KDLossConfig.clinkd_official}


def kd_loss_config(distill: DistillConfig) -> KDLossConfig:
    """``distill.preset``'s :class:`KDLossConfig` with every non-null loss field of ``distill`` applied on top.

    The loss fields of ``DistillConfig`` carry ``KDLossConfig``'s names; ``null`` keeps the preset's value.
    """
    overrides = {
        field.name: getattr(distill, field.name)
        for field in fields(KDLossConfig)
        if field.name in DistillConfig.model_fields and getattr(distill, field.name) is not None
    }
    return PRESETS[distill.preset](**overrides)
