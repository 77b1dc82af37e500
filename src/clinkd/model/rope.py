"""Qwen2-VL / Qwen2.5-VL models whose M-RoPE positions follow a :class:`RopeStrategy` recorded in the config.

The strategy lives in ``config.clinkd_rope`` (a plain dict, written by :func:`set_rope_strategy`), so
``save_pretrained`` → ``from_pretrained`` restores the same positions with no flags. A config without
it is the stock strategy, and then the clinkd classes compute exactly what transformers computes.

Only two things change relative to transformers:

* ``get_rope_index`` (used by ``forward`` through ``compute_3d_position_ids`` and by ``generate``
  through ``_prepare_position_ids_for_generation``) builds the ids with
  :func:`clinkd.model.positions.build_position_ids`;
* with ``frequency="paper"`` the LLM's rotary embedding restarts the frequency ladder inside each
  t/h/w section (:class:`PaperFrequencyRotaryEmbedding`).

For a config without ``clinkd_rope`` the classes behave exactly like the stock ones. This module imports
nothing from clinkd but :mod:`clinkd.model.positions`, so an exported model carries both files as its
remote code (``clinkd export``); :mod:`clinkd.model.loading` registers the classes with transformers' auto classes.

An exported model whose positions are not stock records :data:`GUARDED_ROPE_TYPE` as its text
``rope_type``: stock transformers then fails to build it (a ``KeyError`` naming that type) instead of
silently running stock positions; the classes here build their rotary embedding as ``default``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLModel,
)
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_utils import PreTrainedModel
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding

# Relative on purpose: ``clinkd export`` ships this file (as modeling_clinkd.py) and positions.py as remote code.
from .positions import STOCK, RopeStrategy, build_position_ids

ROPE_CONFIG_KEY = "clinkd_rope"
GUARDED_ROPE_TYPE = "clinkd_positions__load_with_trust_remote_code"
# transformers' Qwen2VLRotaryEmbedding falls back to this split when the config has no mrope_section.
DEFAULT_MROPE_SECTION = (16, 24, 24)


def rope_strategy_of(config) -> RopeStrategy:
    """The strategy recorded in a (top-level) Qwen2-VL config; the stock one when none is recorded."""
    recorded = getattr(config, ROPE_CONFIG_KEY, None)
    if recorded is None:
        return STOCK
    try:
        return RopeStrategy.from_dict(recorded)
    except (TypeError, ValueError) as error:
        raise ValueError(f"config.{ROPE_CONFIG_KEY}: {error}") from error


def set_rope_strategy(config, strategy: RopeStrategy) -> None:
    """Record ``strategy`` in ``config`` (saved with it). Do it before building or loading the model:
    a model reads its strategy once, when it is constructed."""
    setattr(config, ROPE_CONFIG_KEY, strategy.to_dict())


class PaperFrequencyRotaryEmbedding(Qwen2VLRotaryEmbedding):
    """M-RoPE with the paper's per-axis frequencies: section ``a`` of ``s_a`` rotation pairs uses
    ``ω_i = θ^(−2i/d_a)``, ``d_a = 2·s_a``, ``i = 0 … s_a−1`` (stock M-RoPE slices one ladder
    ``θ^(−2i/d)`` over the whole head instead). The t/h/w split is the config's ``mrope_section``;
    ``θ`` is its ``rope_theta``. Qwen2.5-VL's text rotary embedding is the same computation.
    """

    def __init__(self, config):
        if config.rope_parameters["rope_type"] != "default":
            raise ValueError(
                f"rope_parameters.rope_type: frequency='paper' replaces the default ladder, "
                f"got rope_type={config.rope_parameters['rope_type']!r}"
            )
        super().__init__(config)

    @staticmethod
    def compute_default_rope_parameters(config, **kwargs) -> tuple[torch.Tensor, float]:
        """``(inv_freq[d/2], attention_scaling=1)`` with the ladder restarted in every section."""
        base = config.rope_parameters["rope_theta"]
        sections = config.rope_parameters.get("mrope_section", DEFAULT_MROPE_SECTION)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        if 2 * sum(sections) != head_dim:
            raise ValueError(f"rope_parameters.mrope_section {list(sections)} must sum to head_dim/2 = {head_dim // 2}")
        ladders = [1.0 / base ** (torch.arange(0, 2 * s, 2, dtype=torch.float) / (2 * s)) for s in sections if s]
        return torch.cat(ladders), 1.0


class _RopeStrategyModel:
    """Mixin for ``Qwen2VLModel``/``Qwen2_5_VLModel``: the strategy's rotary and ``get_rope_index``."""

    def _use_rope_strategy(self, config) -> None:
        self.rope_strategy = rope_strategy_of(config)
        if self.rope_strategy.frequency == "paper":
            self.language_model.rotary_emb = PaperFrequencyRotaryEmbedding(config.text_config)

    def get_rope_index(
        self,
        input_ids: torch.LongTensor,
        mm_token_type_ids: torch.IntTensor,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(position_ids[3, B, L], rope_deltas[B, 1])`` under ``self.rope_strategy``.

        Keyword-only ``attention_mask``: Qwen2.5-VL's parent takes ``second_per_grid_ts`` in that slot.
        """
        if video_grid_thw is not None and self.rope_strategy.name == "qwen2vl":
            return super().get_rope_index(
                input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw, attention_mask=attention_mask, **kwargs
            )
        return build_position_ids(
            mm_token_type_ids.to(input_ids.device),
            image_grid_thw,
            attention_mask,
            spatial_merge_size=self.config.vision_config.spatial_merge_size,
            strategy=self.rope_strategy,
        )


class ClinKDQwen2VLModel(_RopeStrategyModel, Qwen2VLModel):
    def __init__(self, config: Qwen2VLConfig):
        super().__init__(config)
        self._use_rope_strategy(config)


class ClinKDQwen2_5_VLModel(_RopeStrategyModel, Qwen2_5_VLModel):
    def __init__(self, config: Qwen2_5_VLConfig):
        super().__init__(config)
        self._use_rope_strategy(config)


def guard_rope_type(config) -> None:
    """Make stock transformers refuse ``config`` (used by ``clinkd export`` for non-stock positions)."""
    config.text_config.rope_parameters["rope_type"] = GUARDED_ROPE_TYPE


def _build_generation_model(self: PreTrainedModel, config, model_class: type) -> None:
    """The body of the stock ``__init__`` with ``model_class`` as the inner model, so no stock inner
    model is built and thrown away and, under a fixed seed, the weights equal the stock class's.
    A guarded rope type is built as ``default`` and recorded again afterwards."""
    rope_parameters = config.text_config.rope_parameters
    guarded = rope_parameters.get("rope_type") == GUARDED_ROPE_TYPE
    if guarded:
        rope_parameters["rope_type"] = "default"
    try:
        PreTrainedModel.__init__(self, config)
        self.model = model_class(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
    finally:
        if guarded:
            rope_parameters["rope_type"] = GUARDED_ROPE_TYPE


class ClinKDQwen2VLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    def __init__(self, config: Qwen2VLConfig):
        _build_generation_model(self, config, ClinKDQwen2VLModel)


class ClinKDQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    def __init__(self, config: Qwen2_5_VLConfig):
        _build_generation_model(self, config, ClinKDQwen2_5_VLModel)


MODEL_CLASSES: dict[str, type] = {
    "qwen2_vl": ClinKDQwen2VLForConditionalGeneration,
    "qwen2_5_vl": ClinKDQwen2_5_VLForConditionalGeneration,
}


def load_model_class(config) -> type:
    """The clinkd generation class for a Qwen2-VL or Qwen2.5-VL config."""
    if config.model_type not in MODEL_CLASSES:
        raise ValueError(f"config.model_type {config.model_type!r} is neither qwen2_vl nor qwen2_5_vl")
    return MODEL_CLASSES[config.model_type]


def _share_stock_weight_names(ours: type, stock: type) -> None:
    """Load published checkpoints (``visual.*``, ``model.*``) into ``ours`` as transformers loads them into
    ``stock``: its key renaming is registered per class name and skips classes defined outside transformers."""
    if get_checkpoint_conversion_mapping(ours.__name__) is None:
        register_checkpoint_conversion_mapping(ours.__name__, get_checkpoint_conversion_mapping(stock.__name__))


for _ours, _stock in (
    (ClinKDQwen2VLForConditionalGeneration, Qwen2VLForConditionalGeneration),
    (ClinKDQwen2_5_VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration),
    (ClinKDQwen2VLModel, Qwen2VLModel),
    (ClinKDQwen2_5_VLModel, Qwen2_5_VLModel),
):
    _share_stock_weight_names(_ours, _stock)
