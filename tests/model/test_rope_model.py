"""The clinkd Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3.5 classes: stock equality, cached decoding, beams, save/load,
frequencies."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    LlamaConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
    Qwen3_5ForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
)

import clinkd.model.loading  # noqa: F401 (registers the clinkd classes with AutoModelForImageTextToText)
from clinkd.model.positions import OFFICIAL, PAPER, STOCK, RopeStrategy
from clinkd.model.rope import (
    ClinKDQwen2_5_VLForConditionalGeneration,
    ClinKDQwen2VLForConditionalGeneration,
    ClinKDQwen3_5ForConditionalGeneration,
    ClinKDQwen3VLForConditionalGeneration,
    frequency_axes,
    load_model_class,
    rope_strategy_of,
    set_rope_strategy,
)

from conftest import (
    IMAGE,
    MERGE,
    VIDEO,
    VISION_END,
    VISION_START,
    make_batch,
    tiny_qwen2vl_config,
    tiny_qwen3_5_config,
    tiny_qwen3vl_config,
)

PROMPTS = [[3, (4, 4), 2, (2, 4), 3], [2, (4, 2), 4], [5]]  # two images, one image, none
PATCH_VALUES = 3 * 2 * 2 * 2  # channels · temporal patch · patch²


def tiny_qwen2_5_vl_config() -> Qwen2_5_VLConfig:
    text = tiny_qwen2vl_config().text_config.to_dict()
    return Qwen2_5_VLConfig(
        text_config={key: text[key] for key in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "use_sliding_window", "rope_parameters",
            "bos_token_id", "eos_token_id", "pad_token_id")},
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, in_channels=3, patch_size=2,
                           spatial_merge_size=MERGE, temporal_patch_size=2, window_size=8, out_hidden_size=32,
                           fullatt_block_indexes=[0]),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
    )


CONFIGS = {"qwen2_vl": tiny_qwen2vl_config, "qwen2_5_vl": tiny_qwen2_5_vl_config, "qwen3_vl": tiny_qwen3vl_config,
           "qwen3_5": tiny_qwen3_5_config}
STOCK_CLASSES = {"qwen2_vl": Qwen2VLForConditionalGeneration, "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
                 "qwen3_vl": Qwen3VLForConditionalGeneration, "qwen3_5": Qwen3_5ForConditionalGeneration}
QWEN3 = ["qwen3_vl", "qwen3_5"]


def build(config_name: str = "qwen2_vl", strategy: RopeStrategy | None = None, seed: int = 0):
    config = CONFIGS[config_name]()
    if strategy is not None:
        set_rope_strategy(config, strategy)
    torch.manual_seed(seed)
    return load_model_class(config)(config).eval()


def model_inputs(specs=PROMPTS, padding_side: str = "left") -> dict:
    batch = make_batch(specs, padding_side)
    patches = int(batch["image_grid_thw"].prod(dim=1).sum())
    batch["pixel_values"] = torch.randn(patches, PATCH_VALUES, generator=torch.Generator().manual_seed(7))
    return batch


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("config_name", CONFIGS)
def test_stock_strategy_is_plain_transformers(config_name):
    ours = build(config_name)
    assert rope_strategy_of(ours.config) == STOCK
    torch.manual_seed(0)
    stock = STOCK_CLASSES[config_name](CONFIGS[config_name]()).eval()
    ours_state, stock_state = ours.state_dict(), stock.state_dict()
    # Qwen3.5 keeps its MTP layer
    assert {key for key in ours_state if not key.startswith("mtp.")} == stock_state.keys()
    assert all(torch.equal(ours_state[key], stock_state[key]) for key in stock_state)
    inputs = model_inputs()
    assert torch.equal(logits(ours, inputs), logits(stock, inputs))
    generate = dict(max_new_tokens=3, do_sample=False)
    assert torch.equal(ours.generate(**inputs, **generate), stock.generate(**inputs, **generate))


STRATEGIES = {
    "mcg": PAPER,
    "mcg-alpha-floor": RopeStrategy(name="mcg", alpha=(1.5, 3.0), rounding="floor"),
    "mcg-paper-frequency": RopeStrategy(name="mcg", frequency="paper"),
    "official": OFFICIAL,
    "stock": STOCK,
}


@pytest.mark.parametrize(
    "config_name, strategy",
    [("qwen2_vl", name) for name in STRATEGIES]
    + [(family, name) for family in QWEN3 for name in ("mcg", "mcg-paper-frequency", "stock")],
)
def test_generate_cached_decoding_equals_a_full_recompute(config_name, strategy):
    """Every step's logits from generate() (KV cache, positions last+1) equal a teacher-forced forward
    over the final sequence, whose positions get_rope_index recomputes from scratch (Qwen3.5: the Gated
    DeltaNet layers' recurrent state too)."""
    model, inputs, new = build(config_name, STRATEGIES[strategy]), model_inputs(), 4
    out = model.generate(
        **inputs,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    batch, length = inputs["input_ids"].shape
    full = logits(
        model,
        {
            **inputs,
            "input_ids": out.sequences,
            "attention_mask": torch.cat([inputs["attention_mask"], torch.ones(batch, new, dtype=torch.long)], dim=1),
            "mm_token_type_ids": torch.cat(
                [inputs["mm_token_type_ids"], torch.zeros(batch, new, dtype=torch.int)], dim=1
            ),
        },
    )
    for step, step_logits in enumerate(out.logits):
        assert torch.allclose(step_logits, full[:, length - 1 + step], atol=1e-5, rtol=0), step


@pytest.mark.parametrize("config_name, strategy", [("qwen2_vl", "mcg"), ("qwen2_vl", "official"), ("qwen3_vl", "mcg")])
def test_forward_with_cache_continues_from_rope_deltas(config_name, strategy):
    """The forward path generate() does not take: no position ids, transformers adds ``rope_deltas``."""
    model, inputs = build(config_name, STRATEGIES[strategy]), model_inputs([[3, (4, 4), 2, (2, 4), 3]])
    del inputs["attention_mask"]
    tokens = torch.tensor([[11, 12, 13]])
    with torch.no_grad():
        cache = model(**inputs, use_cache=True).past_key_values
        steps = [
            model(input_ids=tokens[:, i : i + 1], past_key_values=cache, use_cache=True).logits[:, -1]
            for i in range(tokens.shape[1])
        ]
    full = logits(
        model,
        {
            **inputs,
            "input_ids": torch.cat([inputs["input_ids"], tokens], dim=1),
            "mm_token_type_ids": torch.nn.functional.pad(inputs["mm_token_type_ids"], (0, 3)),
        },
    )
    length = inputs["input_ids"].shape[1]
    for i, step in enumerate(steps):
        assert torch.allclose(step, full[:, length + i], atol=1e-5, rtol=0), i


def test_beam_search_under_mcg():
    model, inputs = build(strategy=PAPER), model_inputs()
    sequences = model.generate(
        **inputs, max_new_tokens=4, min_new_tokens=4, num_beams=3, num_return_sequences=3, do_sample=False
    )
    batch, length = inputs["input_ids"].shape
    assert sequences.shape == (3 * batch, length + 4)
    assert torch.equal(sequences[:, :length], inputs["input_ids"].repeat_interleave(3, dim=0))


@pytest.mark.parametrize("config_name", ["qwen2_vl", *QWEN3])
def test_training_forward_backward_with_float_positions(config_name):
    model, inputs = build(config_name, PAPER), model_inputs(padding_side="right")
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    model.train()
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    attention = next(layer.self_attn for layer in model.model.language_model.layers if hasattr(layer, "self_attn"))
    assert attention.q_proj.weight.grad.abs().sum() > 0
    assert all(
        param.grad is None for param in getattr(model, "mtp", torch.nn.Module()).parameters()
    )  # kept, never trained


@pytest.mark.parametrize("config_name", CONFIGS)
def test_save_and_reload_keeps_the_strategy_without_flags(tmp_path, config_name):
    strategy = RopeStrategy(name="mcg", alpha=(1.5, 2.0), frequency="paper")
    model, inputs = build(config_name, strategy), model_inputs()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["clinkd_rope"] == strategy.to_dict()
    expected_ids = model.model.get_rope_index(**inputs)
    expected_logits = logits(model, inputs)
    clinkd_class = load_model_class(AutoConfig.from_pretrained(tmp_path))
    for reloaded in (clinkd_class.from_pretrained(tmp_path), AutoModelForImageTextToText.from_pretrained(tmp_path)):
        reloaded.eval()
        assert type(reloaded) is clinkd_class
        assert reloaded.model.rope_strategy == strategy
        assert isinstance(reloaded.model.language_model.rotary_emb, type(model.model).paper_rotary)
        ids, deltas = reloaded.model.get_rope_index(**inputs)
        assert torch.equal(ids, expected_ids[0]) and torch.equal(deltas, expected_ids[1])
        assert torch.equal(logits(reloaded, inputs), expected_logits)


def test_load_model_class_picks_the_family():
    assert load_model_class(tiny_qwen2vl_config()) is ClinKDQwen2VLForConditionalGeneration
    assert load_model_class(tiny_qwen2_5_vl_config()) is ClinKDQwen2_5_VLForConditionalGeneration
    assert load_model_class(tiny_qwen3vl_config()) is ClinKDQwen3VLForConditionalGeneration
    assert load_model_class(tiny_qwen3_5_config()) is ClinKDQwen3_5ForConditionalGeneration
    with pytest.raises(ValueError, match="'llama' is not one of qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_5"):
        load_model_class(LlamaConfig())


def test_a_bad_recorded_strategy_names_the_config_key():
    config = tiny_qwen2vl_config(clinkd_rope={"name": "mcg", "alpha": [2.0, -1.0]})
    with pytest.raises(ValueError, match=r"(?s)config.clinkd_rope: .*alpha: steps must be positive"):
        load_model_class(config)(config)


def test_paper_frequencies_restart_in_each_section():
    rotary = build(strategy=RopeStrategy(name="mcg", frequency="paper")).model.language_model.rotary_emb
    theta = 10000.0  # mrope_section [2, 3, 3]: ladders of 2, 3 and 3 pairs
    expected = [1.0, theta**-0.5] + [1.0, theta ** (-1 / 3), theta ** (-2 / 3)] * 2
    assert torch.allclose(rotary.inv_freq, torch.tensor(expected), rtol=1e-6, atol=0)
    assert torch.equal(rotary.original_inv_freq, rotary.inv_freq)


@pytest.mark.parametrize(
    "config_name, sections, expected_axes",
    [
        ("qwen3_vl", [4, 2, 2], [0, 1, 2, 0, 1, 2, 0, 0]),
        ("qwen3_5", [2, 1, 1], [0, 1, 2, 0]),
    ],
)
def test_interleaved_frequency_axes_are_transformers_layout(config_name, sections, expected_axes):
    """frequency_axes reproduces the stock rotary's interleaving, and each axis's paper ladder fills its pairs in
    order."""
    assert frequency_axes(sections, interleaved=True).tolist() == expected_axes
    stock_rotary = build(config_name).model.language_model.rotary_emb
    by_axis = (
        torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 1, len(expected_axes)).clone()
    )  # each axis's freqs = its index
    assert stock_rotary.recomposition_frequencies(by_axis)[0, 0, : len(expected_axes)].tolist() == expected_axes
    paper = build(config_name, RopeStrategy(name="mcg", frequency="paper")).model.language_model.rotary_emb
    theta, axes = 10000.0, torch.tensor(expected_axes)
    for axis, size in enumerate(sections):
        ladder = [theta ** (-i / size) for i in range(size)]
        assert torch.allclose(paper.inv_freq[axes == axis], torch.tensor(ladder), rtol=1e-6, atol=0), axis


@pytest.mark.parametrize("name", ["qwen2vl", "mcg"])
def test_paper_frequency_changes_logits_and_is_deterministic(name):
    mrope = build(strategy=RopeStrategy(name=name))
    paper = build(strategy=RopeStrategy(name=name, frequency="paper"))
    paper_again = build(strategy=RopeStrategy(name=name, frequency="paper"))
    inputs = model_inputs()
    assert torch.equal(logits(paper, inputs), logits(paper_again, inputs))
    assert (logits(paper, inputs) - logits(mrope, inputs)).abs().max() > 1e-4


def test_paper_frequency_needs_the_default_rope_type():
    config = tiny_qwen2vl_config()
    config.text_config.rope_parameters = {
        "rope_type": "linear",
        "factor": 2.0,
        "rope_theta": 10000.0,
        "mrope_section": [2, 3, 3],
    }
    set_rope_strategy(config, RopeStrategy(frequency="paper"))
    with pytest.raises(ValueError, match="rope_type='linear'"):
        load_model_class(config)(config)
