"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 models whose M-RoPE positions follow a :class:`RopeStrategy`
recorded in the config.

The strategy lives in ``config.clinkd_rope`` (a plain dict, written by :func:`set_rope_strategy`), so
``save_pretrained`` → ``from_pretrained`` restores the same positions with no flags. A config without
it is the stock strategy, and then the clinkd classes compute exactly what transformers computes.

Only two things change relative to transformers:

* ``get_rope_index`` (used by ``forward`` through ``compute_3d_position_ids`` and by ``generate``
  through ``_prepare_position_ids_for_generation``) builds the ids with
  :func:`clinkd.model.positions.build_position_ids`;
* with ``frequency="paper"`` the LLM's rotary embedding restarts the frequency ladder inside each
  t/h/w section (:class:`PaperFrequencyRotaryEmbedding` and its Qwen3 siblings, which keep the interleaved
  layout of the rotation pairs).

Qwen3.5 checkpoints also hold a multi-token-prediction layer (``mtp.*``) that transformers drops on load;
the clinkd class keeps it as frozen weights (:class:`MultiTokenPredictionWeights`) so that a save writes it back.

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
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5Model,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLModel,
)
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_utils import PreTrainedModel
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5DecoderLayer, Qwen3_5RMSNorm, Qwen3_5TextRotaryEmbedding
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

# Relative on purpose: ``clinkd export`` ships this file (as modeling_clinkd.py) and positions.py as remote code.
from .positions import STOCK, RopeStrategy, build_position_ids

ROPE_CONFIG_KEY = "clinkd_rope"
GUARDED_ROPE_TYPE = "clinkd_positions__load_with_trust_remote_code"


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


def frequency_axes(sections, interleaved: bool) -> torch.Tensor:
    """The axis (0 = t, 1 = h, 2 = w) each rotation pair of the rotated head dimensions turns with.

    Qwen2-VL and Qwen2.5-VL cut the pairs into consecutive t, h, w blocks of ``sections`` pairs; Qwen3-VL and
    Qwen3.5 interleave them (pair ``i`` is h when ``i ≡ 1 (mod 3)`` and ``i < 3·s_h``, w when ``i ≡ 2`` and
    ``i < 3·s_w``, t otherwise), as their rotary embedding's ``recomposition_frequencies`` does.
    """
    t, h, w = sections
    if not interleaved:
        return torch.tensor([0] * t + [1] * h + [2] * w)
    return torch.tensor(
        [1 if i % 3 == 1 and i < 3 * h else 2 if i % 3 == 2 and i < 3 * w else 0 for i in range(t + h + w)]
    )


class _PaperFrequencies:
    """M-RoPE with the paper's per-axis frequencies: section ``a`` of ``s_a`` rotation pairs uses
    ``ω_i = θ^(−2i/d_a)``, ``d_a = 2·s_a``, ``i = 0 … s_a−1`` (stock M-RoPE slices one ladder
    ``θ^(−2i/d)`` over the rotated dimensions instead). The t/h/w split is the config's ``mrope_section``;
    ``θ`` is its ``rope_theta``; each axis's ladder fills that axis's pairs in order (:func:`frequency_axes`).
    """

    interleaved = False  # the family's pair layout (see frequency_axes)
    default_sections: tuple[int, int, int]  # what the family's rotary embedding uses without mrope_section

    def __init__(self, config):
        if config.rope_parameters["rope_type"] != "default":
            raise ValueError(
                f"rope_parameters.rope_type: frequency='paper' replaces the default ladder, "
                f"got rope_type={config.rope_parameters['rope_type']!r}"
            )
        super().__init__(config)

    @classmethod
    def compute_default_rope_parameters(cls, config, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        """``(inv_freq[d/2], attention_scaling=1)`` with the ladder restarted in every section."""
        parameters = config.rope_parameters
        base = parameters["rope_theta"]
        sections = parameters.get("mrope_section", cls.default_sections)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        rotated = int(head_dim * parameters.get("partial_rotary_factor", 1.0))
        if 2 * sum(sections) != rotated:
            raise ValueError(
                f"rope_parameters.mrope_section {list(sections)} must sum to the rotated pairs, {rotated // 2}"
            )
        axes = frequency_axes(sections, cls.interleaved)
        inv_freq = torch.empty(rotated // 2)
        for axis, size in enumerate(sections):
            inv_freq[axes == axis] = 1.0 / base ** (torch.arange(0, 2 * size, 2, dtype=torch.float) / (2 * size))
        return inv_freq.to(device), 1.0


class PaperFrequencyRotaryEmbedding(_PaperFrequencies, Qwen2VLRotaryEmbedding):
    """Qwen2-VL's (and Qwen2.5-VL's, the same computation) rotary embedding with the paper's frequencies."""

    default_sections = (16, 24, 24)


class Qwen3VLPaperFrequencyRotaryEmbedding(_PaperFrequencies, Qwen3VLTextRotaryEmbedding):
    """Qwen3-VL's interleaved rotary embedding with the paper's frequencies."""

    interleaved = True
    default_sections = (24, 20, 20)


class Qwen3_5PaperFrequencyRotaryEmbedding(_PaperFrequencies, Qwen3_5TextRotaryEmbedding):
    """Qwen3.5's interleaved, partial (``partial_rotary_factor``) rotary embedding with the paper's frequencies."""

    interleaved = True
    default_sections = (11, 11, 10)


class _RopeStrategyModel:
    """Mixin for the families' inner models (``Qwen2VLModel`` …): the strategy's rotary and ``get_rope_index``."""

    paper_rotary: type  # the family's rotary embedding with the paper's frequencies

    def __init__(self, config):
        super().__init__(config)
        self.rope_strategy = rope_strategy_of(config)
        if self.rope_strategy.frequency == "paper":
            self.language_model.rotary_emb = self.paper_rotary(config.text_config)

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
        Qwen3-VL and Qwen3.5 place images exactly as Qwen2-VL does (their videos, split into frames between
        timestamp texts, go to the parent under the stock strategy).
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
    paper_rotary = PaperFrequencyRotaryEmbedding


class ClinKDQwen2_5_VLModel(_RopeStrategyModel, Qwen2_5_VLModel):
    paper_rotary = PaperFrequencyRotaryEmbedding


class ClinKDQwen3VLModel(_RopeStrategyModel, Qwen3VLModel):
    paper_rotary = Qwen3VLPaperFrequencyRotaryEmbedding


class ClinKDQwen3_5Model(_RopeStrategyModel, Qwen3_5Model):
    paper_rotary = Qwen3_5PaperFrequencyRotaryEmbedding


class MultiTokenPredictionWeights(nn.Module):
    """Qwen3.5's multi-token-prediction layer as published (``mtp.fc``, ``mtp.layers.N`` full-attention decoder
    layers, ``mtp.norm``, ``mtp.pre_fc_norm_hidden``, ``mtp.pre_fc_norm_embedding``; embeddings and head shared
    with the model). transformers has no such module and drops ``mtp.*`` on load; clinkd keeps the weights,
    frozen and never run, so that a saved model still serves with speculative decoding."""

    def __init__(self, config):
        super().__init__()
        text_config = config.text_config
        if getattr(text_config, "mtp_use_dedicated_embeddings", False):
            raise ValueError(
                "text_config.mtp_use_dedicated_embeddings: an MTP layer with its own embeddings is not supported"
            )
        hidden, eps = text_config.hidden_size, text_config.rms_norm_eps
        full_attention = text_config.layer_types.index("full_attention")  # the layer index only picks the layer type
        self.fc = nn.Linear(2 * hidden, hidden, bias=False)
        self.layers = nn.ModuleList(
            Qwen3_5DecoderLayer(text_config, full_attention) for _ in range(text_config.mtp_num_hidden_layers)
        )
        self.norm = Qwen3_5RMSNorm(hidden, eps=eps)
        self.pre_fc_norm_hidden = Qwen3_5RMSNorm(hidden, eps=eps)
        self.pre_fc_norm_embedding = Qwen3_5RMSNorm(hidden, eps=eps)
        self.requires_grad_(False)


def _build_generation_model(self: PreTrainedModel, config, model_class: type, **extra_modules) -> None:
    """The body of the stock ``__init__`` with ``model_class`` as the inner model, so no stock inner
    model is built and thrown away and, under a fixed seed, the weights equal the stock class's.
    ``extra_modules`` (classes built from ``config`` after the stock modules) join before the weights are initialised.
    A guarded rope type is built as ``default`` and recorded again afterwards."""
    rope_parameters = config.text_config.rope_parameters
    guarded = rope_parameters.get("rope_type") == GUARDED_ROPE_TYPE
    if guarded:
        rope_parameters["rope_type"] = "default"
    try:
        PreTrainedModel.__init__(self, config)
        self.model = model_class(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        for name, build in extra_modules.items():
            setattr(self, name, build(config))
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


class ClinKDQwen3VLForConditionalGeneration(Qwen3VLForConditionalGeneration):
    def __init__(self, config: Qwen3VLConfig):
        _build_generation_model(self, config, ClinKDQwen3VLModel)


class ClinKDQwen3_5ForConditionalGeneration(Qwen3_5ForConditionalGeneration):
    _keys_to_ignore_on_load_unexpected = None  # the stock class ignores mtp.*: here it loads, and nothing is ignored

    def __init__(self, config: Qwen3_5Config):
        mtp = {"mtp": MultiTokenPredictionWeights} if getattr(config.text_config, "mtp_num_hidden_layers", 0) else {}
        _build_generation_model(self, config, ClinKDQwen3_5Model, **mtp)


MODEL_CLASSES: dict[str, type] = {
    "qwen2_vl": ClinKDQwen2VLForConditionalGeneration,
    "qwen2_5_vl": ClinKDQwen2_5_VLForConditionalGeneration,
    "qwen3_vl": ClinKDQwen3VLForConditionalGeneration,
    "qwen3_5": ClinKDQwen3_5ForConditionalGeneration,
}


def load_model_class(config) -> type:
    """The clinkd generation class for a Qwen2-VL, Qwen2.5-VL, Qwen3-VL or Qwen3.5 config."""
    if config.model_type not in MODEL_CLASSES:
        raise ValueError(f"config.model_type {config.model_type!r} is not one of {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[config.model_type]


def _share_stock_weight_names(ours: type, stock: type) -> None:
    """Load published checkpoints (``visual.*``, ``model.*``) into ``ours`` as transformers loads them into
    ``stock``: its key renaming is registered per class name and skips classes defined outside transformers.
    (Qwen3-VL and Qwen3.5 publish their weights under the names transformers uses: nothing to rename.)"""
    if get_checkpoint_conversion_mapping(ours.__name__) is None:
        register_checkpoint_conversion_mapping(ours.__name__, get_checkpoint_conversion_mapping(stock.__name__))


for _ours, _stock in (
    (ClinKDQwen2VLForConditionalGeneration, Qwen2VLForConditionalGeneration),
    (ClinKDQwen2_5_VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration),
    (ClinKDQwen2VLModel, Qwen2VLModel),
    (ClinKDQwen2_5_VLModel, Qwen2_5_VLModel),
):
    _share_stock_weight_names(_ours, _stock)
