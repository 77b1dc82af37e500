"""LoRA through peft: targets, the identity at init, and train → save → merge → reload → same predictions."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")

from typer.testing import CliRunner

from clinkd.batching import PromptCollator, TrainCollator, training_examples
from clinkd.cli import app
from clinkd.config import ConfigError, LoraConfig, RecipeConfig, TrainConfig, load_config
from clinkd.data.medgrit import load_medgrit, load_test_split
from clinkd.engine.generate import generate_responses
from clinkd.engine.sft import SftSettings, run_sft
from clinkd.model.loading import load_checkpoint, save_checkpoint
from clinkd.model.lora import (
    ADAPTER_DIR,
    apply_lora,
    export_lora,
    load_lora,
    lora_targets,
    quantization_config,
    trainable_parameters,
)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    from clinkd.synth import generate

    data = tmp_path_factory.mktemp("synth")
    generate(data, seed=0, images=16, test_per_cell=1)
    return data


def with_adapters(model, lora: LoraConfig, train: TrainConfig = TrainConfig()):
    """:func:`apply_lora` with a recipe's ``train.lora`` and freeze knobs, as the SFT engine calls it."""
    return apply_lora(
        model, lora.target_modules, train.frozen_parts, rank=lora.r, alpha=lora.alpha, dropout=lora.dropout
    )


def test_default_targets_are_the_llm_projections(tiny_model):
    targets = lora_targets(tiny_model, LoraConfig().target_modules, TrainConfig().frozen_parts)
    layers = tiny_model.config.text_config.num_hidden_layers
    assert len(targets) == 7 * layers
    assert all(name.startswith("model.language_model.layers.") for name in targets)


def test_targets_follow_the_freeze_knobs(tiny_model):
    vision_only = TrainConfig(freeze_vision_tower=False, freeze_llm=True, freeze_merger=True)
    targets = lora_targets(tiny_model, ["qkv", "fc1", "q_proj"], vision_only.frozen_parts)
    depth = tiny_model.config.vision_config.depth
    assert sorted(targets) == sorted(
        [f"model.visual.blocks.{i}.attn.qkv" for i in range(depth)]
        + [f"model.visual.blocks.{i}.mlp.fc1" for i in range(depth)]
    )
    with pytest.raises(ValueError, match="frozen: vision_tower, merger, llm"):
        lora_targets(tiny_model, LoraConfig().target_modules, {"vision_tower": True, "merger": True, "llm": True})


def test_qwen3_vl_deepstack_mergers_belong_to_the_merger():
    """freeze_merger freezes Qwen3-VL's DeepStack mergers with the merger; freezing the vision tower leaves them
    alone."""
    from clinkd.engine.sft import apply_freeze
    from clinkd.model.loading import model_class_for

    from conftest import tiny_qwen3vl_config

    model = model_class_for(tiny_qwen3vl_config())(tiny_qwen3vl_config())
    deepstack = list(model.model.visual.deepstack_merger_list.parameters())
    counts = apply_freeze(model, TrainConfig(freeze_vision_tower=True, freeze_merger=False))
    assert all(param.requires_grad for param in deepstack) and counts["vision_tower"] == 0
    assert counts["merger"] == sum(p.numel() for p in [*model.model.visual.merger.parameters(), *deepstack])
    apply_freeze(model, TrainConfig(freeze_vision_tower=False, freeze_merger=True))
    assert not any(param.requires_grad for param in deepstack)
    assert all(param.requires_grad for param in model.model.visual.blocks.parameters())
    fc1 = lora_targets(model, ["linear_fc1"], TrainConfig(freeze_vision_tower=True, freeze_merger=False).frozen_parts)
    assert sorted(fc1) == ["model.visual.deepstack_merger_list.0.linear_fc1", "model.visual.merger.linear_fc1"]


def test_wrapped_model_starts_at_the_base_and_trains_only_the_adapters(tiny_model, tiny_processor, synth_data):
    cfg = LoraConfig(r=4, alpha=8)
    batch = TrainCollator(tiny_processor)(
        training_examples(load_medgrit(synth_data / "train.json", synth_data / "images")[:2])
    )
    with torch.no_grad():
        base_logits = tiny_model(**batch).logits
    targets = lora_targets(tiny_model, cfg.target_modules, TrainConfig().frozen_parts)
    shapes = {name: module.weight.shape for name, module in tiny_model.named_modules() if name in targets}
    wrapped = with_adapters(tiny_model, cfg)
    with torch.no_grad():
        assert torch.equal(wrapped(**batch).logits, base_logits)  # B = 0 at init
    # Σ r·(d_in + d_out) over the targets, and nothing else trains.
    assert trainable_parameters(wrapped) == sum(4 * (d_in + d_out) for d_out, d_in in shapes.values())
    assert all("lora_" in name for name, p in wrapped.named_parameters() if p.requires_grad)


def _predict(model, processor, samples):
    model.eval()
    responses = generate_responses(model, processor, PromptCollator(processor), samples, max_new_tokens=8)
    with torch.no_grad():
        logits = model(**PromptCollator(processor)(samples)).logits
    return responses, logits


def test_lora_run_saves_merges_reloads_and_predicts_the_same(tiny_model, tiny_processor, synth_data, tmp_path):
    save_checkpoint(tiny_model, tiny_processor, tmp_path / "base")
    train = load_medgrit(synth_data / "train.json", synth_data / "images")
    cfg = RecipeConfig.model_validate(
        {
            "output_dir": str(tmp_path / "runs"),
            "train": {
                "max_steps": 2,
                "batch_size": 4,
                "lr": 2e-2,
                "warmup_ratio": 0.0,
                "logging_steps": 1,
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            },
        }
    )
    stage = tmp_path / "sft"
    run_sft(SftSettings.of(cfg), tiny_model, tiny_processor, training_examples(train)[:8], stage)
    samples = [s for task in ("VG", "RC") for s in load_test_split(synth_data, synth_data / "images")[task][:2]]

    # Before the merge: the base reloaded with the saved adapter.
    unmerged = load_lora(load_checkpoint(tmp_path / "base")[0], stage / ADAPTER_DIR)
    assert any(p.abs().sum() > 0 for n, p in unmerged.named_parameters() if "lora_B" in n), (
        "training did not move the adapters"
    )
    responses, logits = _predict(unmerged, tiny_processor, samples)

    merged_in_run, processor = load_checkpoint(stage / "model")  # merged by run_sft, a plain checkpoint
    assert not any("lora" in name for name in merged_in_run.state_dict())
    cli = CliRunner().invoke(
        app,
        [
            "merge-lora",
            "--base",
            str(tmp_path / "base"),
            "--adapter",
            str(stage / ADAPTER_DIR),
            "--out",
            str(tmp_path / "merged"),
            "--dtype",
            "float32",
        ],
    )
    assert cli.exit_code == 0, cli.output
    merged_offline, _ = load_checkpoint(tmp_path / "merged")
    for merged in (merged_in_run, merged_offline):
        merged_responses, merged_logits = _predict(merged, processor, samples)
        assert merged_responses == responses
        torch.testing.assert_close(merged_logits, logits, atol=1e-5, rtol=1e-5)


def test_export_without_merge_writes_only_the_adapter(tiny_model, tiny_processor, tmp_path):
    wrapped = with_adapters(tiny_model, LoraConfig(r=2))
    export_lora(wrapped, tiny_processor, tmp_path / "model", tmp_path / "adapter", merge=False)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() and (
        tmp_path / "adapter" / "tokenizer.json"
    ).is_file()
    assert not (tmp_path / "model").exists()


def test_lora_config_section(tmp_path):
    assert load_config(None, ["train.lora={}"]).train.lora == LoraConfig()
    assert load_config(None, ["train.lora.r=4"]).train.lora.r == 4
    assert load_config(None).train.lora is None
    with pytest.raises(ConfigError, match="train.lora.target_modules"):
        load_config(None, ["train.lora.target_modules=[]"])


def test_qlora_needs_cuda_and_plain_lora_needs_no_quantisation():
    assert quantization_config("none") is None
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            quantization_config("4bit")


def test_qlora_quantises_the_checkpoint_at_load(tiny_model, tiny_processor, tmp_path, monkeypatch):
    """QLoRA's BitsAndBytesConfig reaches from_pretrained (bitsandbytes itself needs CUDA: stubbed here)."""
    from clinkd.model import lora
    from clinkd.model.loading import model_class_for
    from clinkd.recipes.inputs import initial_model

    save_checkpoint(tiny_model, tiny_processor, tmp_path / "base")
    seen = {}
    monkeypatch.setattr(
        lora, "quantization_config", lambda quantize, dtype: seen.setdefault("config", ("nf4", quantize, dtype))
    )
    model_class = model_class_for(tiny_model.config)
    original = model_class.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        seen["kwargs"] = kwargs.pop("quantization_config", None)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(model_class, "from_pretrained", classmethod(from_pretrained))
    cfg = load_config(None, [f"model.path={tmp_path / 'base'}", "model.dtype=bfloat16", "train.lora.quantize=4bit"])
    initial_model(cfg, [])
    assert seen["config"] == ("nf4", "4bit", torch.bfloat16) and seen["kwargs"] == seen["config"]
    with pytest.raises(ConfigError, match="set model.path"):
        initial_model(load_config(None, ["model.init=scratch", "train.lora.quantize=4bit"]), [])


def test_gathered_weights_rebuild_a_peft_model_that_merges_like_the_original(tiny_model, tiny_processor, synth_data):
    """The ZeRO-3/FSDP save path: a peft model rebuilt on the meta device from its (gathered) state dict."""
    from clinkd.engine.distributed import with_full_weights

    wrapped = with_adapters(tiny_model, LoraConfig(r=2))
    torch.manual_seed(1)
    for name, param in wrapped.named_parameters():
        if "lora_B" in name:
            param.data.normal_(std=0.02)  # a trained adapter's scale
    rebuilt = with_full_weights(wrapped, {name: tensor.clone() for name, tensor in wrapped.state_dict().items()})
    batch = TrainCollator(tiny_processor)(
        training_examples(load_medgrit(synth_data / "train.json", synth_data / "images")[:1])
    )
    with torch.no_grad():
        expected = wrapped.eval()(**batch).logits
        torch.testing.assert_close(rebuilt.eval()(**batch).logits, expected)
        torch.testing.assert_close(rebuilt.merge_and_unload()(**batch).logits, expected, atol=1e-5, rtol=1e-5)


def test_the_retrieval_loss_trains_through_lora_adapters(tiny_model, tiny_processor, synth_data, tmp_path):
    train = load_medgrit(synth_data / "train.json", synth_data / "images")
    cfg = RecipeConfig.model_validate(
        {
            "output_dir": str(tmp_path / "runs"),
            "train": {
                "max_steps": 2,
                "batch_size": 4,
                "logging_steps": 1,
                "retrieval_loss": 1.0,
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            },
        }
    )
    grounding = [example for example in training_examples(train) if "<box>" in example.turns[0].answer][:8]
    run_sft(SftSettings.of(cfg), tiny_model, tiny_processor, grounding, tmp_path / "sft")
    log = json.loads((tmp_path / "sft/train_log.json").read_text())["log_history"]
    assert [entry["retrieval_loss"] > 0 for entry in log if "loss" in entry] == [True, True]
    assert tiny_model.config._attn_implementation == "sdpa"  # eager only while the stage trained
