"""The real path on checkpoints in the exact published format (``hub_checkpoints`` in conftest.py): the real Qwen2
vocabulary, the authors' config/tokenizer/processor files, hub weight names at reduced size."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from clinkd.batching import PromptCollator
from clinkd.data.records import Sample, Turn
from clinkd.model.loading import CheckpointError, load_checkpoint, save_checkpoint, set_pixel_budget
from clinkd.model.processor import load_processor
from clinkd.recipes.predict import generate_responses

# Ids of the published Qwen2 tokenizer (shared by Qwen2-VL and Qwen2.5-VL).
KNOWN_IDS = {
    "Hello world": [9707, 1879],
    "<|box_start|>(123,456),(789,999)<|box_end|>": [151648, 7, 16, 17, 18, 11, 19, 20, 21, 23547, 22, 23, 24, 11, 24, 24, 24, 8, 151649],
    "What is 2+2?": [3838, 374, 220, 17, 10, 17, 30],
    "你好": [108386],
}
FAMILIES = ["qwen2_vl", "qwen2_5_vl"]


def hub_state(folder) -> dict[str, torch.Tensor]:
    """Every tensor stored in a checkpoint folder, one file or shards."""
    state = {}
    for path in sorted(folder.glob("*.safetensors")):
        state |= load_file(path)
    return state


def internal_name(hub_name: str) -> str:
    """Where transformers 5 keeps a hub weight (``visual.*`` → ``model.visual.*``, ``model.*`` → ``model.language_model.*``)."""
    if hub_name.startswith("visual."):
        return "model." + hub_name
    return "model.language_model." + hub_name.removeprefix("model.")


@pytest.mark.parametrize("name", FAMILIES)
def test_the_fixture_has_the_real_vocabulary(hub_checkpoints, name):
    tokenizer = load_processor(hub_checkpoints[name]).tokenizer
    for text, ids in KNOWN_IDS.items():
        assert tokenizer(text)["input_ids"] == ids, text
    assert len(tokenizer) == {"qwen2_vl": 151657, "qwen2_5_vl": 151665}[name]


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_vl_sharded", "qwen2_5_vl"])
def test_a_hub_checkpoint_loads_every_weight_exactly(hub_checkpoints, name):
    folder = hub_checkpoints[name]
    model, _ = load_checkpoint(folder, dtype="bfloat16")
    loaded, on_disk = model.state_dict(), hub_state(folder)
    for hub_name, tensor in on_disk.items():
        assert torch.equal(loaded[internal_name(hub_name)], tensor), hub_name
    assert set(loaded) - {internal_name(n) for n in on_disk} == {"lm_head.weight"}
    assert torch.equal(model.lm_head.weight, model.model.language_model.embed_tokens.weight)  # tied, as published


def test_our_saved_layout_reloads_exactly(hub_checkpoints, tmp_path):
    model, processor = load_checkpoint(hub_checkpoints["qwen2_5_vl"])
    save_checkpoint(model, processor, tmp_path / "saved")
    assert "text_config" in json.loads((tmp_path / "saved" / "config.json").read_text())  # transformers 5 layout
    again, again_processor = load_checkpoint(tmp_path / "saved")
    reloaded = again.state_dict()
    assert all(torch.equal(reloaded[key], value) for key, value in model.state_dict().items())
    assert again_processor.tokenizer("What is 2+2?")["input_ids"] == KNOWN_IDS["What is 2+2?"]


def copy_with_weights(folder, out, edit) -> None:
    shutil.copytree(folder, out)
    state = hub_state(folder)
    edit(state)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def test_missing_weights_are_an_error_naming_them_and_the_folder(hub_checkpoints, tmp_path):
    broken = tmp_path / "no-layer-1"
    copy_with_weights(hub_checkpoints["qwen2_vl"], broken, lambda state: [state.pop(k) for k in list(state) if ".layers.1.mlp." in k])
    with pytest.raises(CheckpointError, match=r"no-layer-1.*missing 3: .*model\.language_model\.layers\.1\.mlp\.down_proj\.weight"):
        load_checkpoint(broken)
    model, _ = load_checkpoint(broken, allow_partial=[r"layers\.1\.mlp\."])  # a deliberate partial load
    assert model.model.language_model.layers[1].mlp.up_proj.weight.shape == (128, 64)


def test_unexpected_and_misshaped_weights_are_errors(hub_checkpoints, tmp_path):
    extra = tmp_path / "extra"
    copy_with_weights(hub_checkpoints["qwen2_vl"], extra, lambda state: state.update({"model.new_head.weight": torch.zeros(2, 2)}))
    with pytest.raises(CheckpointError, match=r"extra: .*unexpected 1: model\.language_model\.new_head\.weight"):
        load_checkpoint(extra)
    misshaped = tmp_path / "misshaped"
    copy_with_weights(hub_checkpoints["qwen2_vl"], misshaped, lambda state: state.update({"model.norm.weight": torch.ones(63)}))
    with pytest.raises(CheckpointError, match=r"mismatched 1: model\.language_model\.norm\.weight"):
        load_checkpoint(misshaped)


@pytest.mark.parametrize("name, padding_side", [("qwen2_vl", "left"), ("qwen2_5_vl", "right")])
def test_the_processor_follows_the_published_files(hub_checkpoints, name, padding_side, tmp_path):
    folder = hub_checkpoints[name]
    processor, config = load_processor(folder), json.loads((folder / "config.json").read_text())
    assert processor.tokenizer.padding_side == padding_side  # as published; batched prompts pad left anyway (below)
    size = processor.image_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (3136, 12845056)
    for token, key in [("<|image_pad|>", "image_token_id"), ("<|video_pad|>", "video_token_id"),
                       ("<|vision_start|>", "vision_start_token_id"), ("<|vision_end|>", "vision_end_token_id")]:
        assert processor.tokenizer.convert_tokens_to_ids(token) == config[key], token
    assert (processor.image_token_id, processor.tokenizer.pad_token_id, processor.tokenizer.eos_token) == (151655, 151643, "<|im_end|>")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is the liver?"}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Where is the liver?<|im_end|>\n<|im_start|>assistant\n"
    )
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    batch = processor(text=[text], images=[Image.new("RGB", (168, 112))], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 8, 12]]
    assert int((batch["input_ids"] == 151655).sum()) == 24
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no min_pixels/max_pixels deprecation
        set_pixel_budget(processor, 112 * 112, 112 * 112)
        batch = processor(text=[text], images=[Image.new("RGB", (112, 112))], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]]


@pytest.fixture()
def two_prompts(tmp_path):
    image = tmp_path / "scan.png"
    Image.new("RGB", (112, 112), (40, 40, 40)).save(image)
    return [Sample(f"s{i}", image, "CT", [Turn(question, "")], "VG") for i, question in
            enumerate(["Where is the liver?", "Where is the <ref>left kidney</ref> in this abdominal CT image?"])]


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_prompts_pad_left_for_both_families(hub_checkpoints, name, two_prompts):
    processor = load_processor(hub_checkpoints[name])
    batch = PromptCollator(processor)(two_prompts)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()


def test_greedy_answers_ignore_the_checkpoints_sampling_defaults(hub_checkpoints, two_prompts):
    """Qwen2.5-VL-Instruct's generation_config.json sets repetition_penalty 1.05: scored decoding must not use it."""
    model, processor = load_checkpoint(hub_checkpoints["qwen2_5_vl"])
    collator = PromptCollator(processor)
    model.generation_config.repetition_penalty = 1.0
    plain = generate_responses(model, processor, collator, two_prompts, max_new_tokens=12)
    model.generation_config.repetition_penalty = 50.0
    assert generate_responses(model, processor, collator, two_prompts, max_new_tokens=12) == plain
