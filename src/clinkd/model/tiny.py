"""Tiny Qwen2-VL models built from a config: the embedded default, no weights downloaded.

Sizes (measured on 2 CPU cores at 112 px, batch 8, see docs/benchmarks.md):

====  =====================================  ==================  ========
size  text hidden/layers/heads/kv/ffn        vision embed/depth   params
====  =====================================  ==================  ========
xs    128/2/4/2/256                          64/2                ~0.6 M
s     256/4/4/2/512                          128/2               ~3.3 M
m     384/6/6/2/1024                         192/4               ~12 M
====  =====================================  ==================  ========
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Qwen2VLConfig

from clinkd.images import PATCH_SIZE
from clinkd.model.processor import MERGE_SIZE


@dataclass(frozen=True)
class TinySize:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vision_embed: int
    vision_depth: int
    vision_heads: int


TINY_SIZES: dict[str, TinySize] = {
    "xs": TinySize(128, 2, 4, 2, 256, 64, 2, 2),
    "s": TinySize(256, 4, 4, 2, 512, 128, 2, 4),
    "m": TinySize(384, 6, 6, 2, 1024, 192, 4, 4),
}


def mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL's split of the rotary half-dimension over (t, h, w): 1/4, 3/8, 3/8 ([16,24,24] at 128)."""
    half = head_dim // 2
    spatial = (3 * half) // 8
    return [half - 2 * spatial, spatial, spatial]


def tiny_config(tokenizer, size: str = "s") -> Qwen2VLConfig:
    """A ``Qwen2VLConfig`` of the named size whose token ids come from ``tokenizer``."""
    if size not in TINY_SIZES:
        raise ValueError(f"model.size: unknown tiny size {size!r}; expected one of {', '.join(TINY_SIZES)}")
    dims = TINY_SIZES[size]
    token_id = tokenizer.convert_tokens_to_ids
    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=dims.hidden,
            intermediate_size=dims.ffn,
            num_hidden_layers=dims.layers,
            num_attention_heads=dims.heads,
            num_key_value_heads=dims.kv_heads,
            max_position_embeddings=4096,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": mrope_section(dims.hidden // dims.heads),
            },
            bos_token_id=token_id("<|endoftext|>"),
            eos_token_id=token_id("<|im_end|>"),
            pad_token_id=token_id("<|endoftext|>"),
            use_sliding_window=False,
        ),
        vision_config=dict(
            depth=dims.vision_depth,
            embed_dim=dims.vision_embed,
            hidden_size=dims.hidden,
            num_heads=dims.vision_heads,
            mlp_ratio=2,
            in_channels=3,
            patch_size=PATCH_SIZE,
            spatial_merge_size=MERGE_SIZE,
            temporal_patch_size=2,
        ),
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=True,
    )
