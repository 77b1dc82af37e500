"""Shared fixtures: a tiny tokenizer/processor/model built in code (no downloads), and test corpora."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from PIL import Image

# Two cores: keep torch from oversubscribing when several tests build models.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = [
    "Where is the liver? <|object_ref_start|>liver<|object_ref_end|><|box_start|>(112,305),(498,702)<|box_end|>",
    "What is the object in <|box_start|>(540,410),(640,560)<|box_end|>? Right kidney",
    "Describe the region. A large bright round tumor in the upper left region.",
    "What can you diagnose from the overall findings in this image? CT image showing a small dark cyst.",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from clinkd.model.tokenizer import train_tokenizer

    return train_tokenizer(CORPUS, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_processor(tiny_tokenizer):
    from clinkd.model.processor import build_processor

    return build_processor(tiny_tokenizer, 112 * 112, 112 * 112)


@pytest.fixture()
def tiny_model(tiny_processor):
    import torch

    from clinkd.model.loading import model_class_for
    from clinkd.model.tiny import tiny_config

    torch.manual_seed(0)
    config = tiny_config(tiny_processor.tokenizer, "xs")
    return model_class_for(config)(config).eval()


# ---- a tiny model overfitted to one VG question, and a tiny SASG selector (infer and demo tests) ----
VG_QUESTION = "Where is the <ref>liver</ref> in this image?"
VG_ANSWER = "<ref>liver</ref><box>(112,305),(498,702)</box>"


@pytest.fixture(scope="session")
def overfit_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("overfit") / "ct_overfit.png"
    Image.new("RGB", (112, 112), (30, 30, 30)).save(path)
    return path


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, tiny_processor, overfit_image):
    """A tiny xs model overfitted (~4 s) to answer VG_QUESTION on ``overfit_image`` with VG_ANSWER, saved to disk."""
    import torch

    from clinkd.batching import ChatExample, TrainCollator
    from clinkd.data.records import Turn
    from clinkd.model.loading import model_class_for, save_checkpoint
    from clinkd.model.tiny import tiny_config

    torch.manual_seed(0)
    config = tiny_config(tiny_processor.tokenizer, "xs")
    model = model_class_for(config)(config).train()
    batch = TrainCollator(tiny_processor)([ChatExample(overfit_image, (Turn(VG_QUESTION, VG_ANSWER),))])
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster, and much faster on a busy machine
    try:
        for _ in range(50):
            model(**batch).loss.backward()
            optimiser.step()
            optimiser.zero_grad()
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-vg"
    save_checkpoint(model.eval(), tiny_processor, path)
    return path


@pytest.fixture(scope="session")
def tiny_sasg(tmp_path_factory, tiny_processor):
    """clinkd.sasg's selector (3 beams, 3 candidates) with a CLIP trained for 5 steps on an 8-image synthetic set."""
    from clinkd.config import ClipTrainConfig, RecipeConfig
    from clinkd.data.medgrit import load_medgrit
    from clinkd.sasg import sample_pairs, selector_for, train_clip
    from clinkd.synth import generate

    root = tmp_path_factory.mktemp("sasg")
    generate(root / "data", seed=0, images=8, test_per_cell=1, image_size=48)
    clip_cfg = ClipTrainConfig(hidden=32, layers=1, heads=2, steps=5, batch_size=8, image_size=32)
    train_clip(
        sample_pairs(load_medgrit(root / "data" / "train.json", root / "data" / "images")),
        tiny_processor.tokenizer,
        clip_cfg,
        root / "clip",
    )
    cfg = RecipeConfig(clip=clip_cfg, select={"method": "sasg", "scorer_path": root / "clip"})
    return selector_for(cfg.select, cfg.clip.crop_margin, cfg.seed, cfg.run_dir)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A synthetic Med-GRIT folder for the reflect tests: 8 training images, one test record per cell, 56 px."""
    from clinkd.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, seed=0, images=8, test_per_cell=1, image_size=56)
    return out


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """A synthetic Med-GRIT folder: 8 training images, one test record per task and modality, 48 px."""
    from clinkd.synth import generate

    root = tmp_path_factory.mktemp("small") / "data"
    generate(root, seed=0, images=8, test_per_cell=1, image_size=48)
    return root


def caption_corpus(seed: int, size: int, empty_references: bool = False) -> tuple[list[str], list[list[str]]]:
    """Seeded candidate/reference captions with the edge cases the caption metrics must survive: every 7th candidate
    empty, single words, very long texts, 1–3 references (with ``empty_references``, some empty ones too)."""
    rng = random.Random(seed)
    vocab = "the a lesion liver kidney small large bright dark round in of left right region shows tumor cyst".split()

    def sentence(low, high):
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(low, high)))

    candidates, references = [], []
    for i in range(size):
        kind = i % 7
        candidates.append({0: "", 1: sentence(1, 1), 2: sentence(40, 90)}.get(kind, sentence(2, 15)))
        refs = [sentence(1, 25) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        if empty_references and kind == 3 and i % 2:
            refs[0] = ""
        references.append(refs)
    return candidates, references


# ---- checkpoints in the exact published format (clinkd.testing.real_format), built once per session ----
REFERENCE = Path(__file__).resolve().parent / "data" / "reference"
QWEN2_VL, QWEN2_5_VL = REFERENCE / "qwen2-vl-2b-instruct", REFERENCE / "qwen2.5-vl-3b-instruct"
QWEN3_VL, QWEN3_5 = REFERENCE / "qwen3-vl-4b-instruct", REFERENCE / "qwen3.5-0.8b"
# A larger teacher of each family shares its student's vocabulary, as the paper's 7B teacher shares the 2B student's.
HUB_CHECKPOINTS = {
    "qwen2_vl": dict(reference_dir=QWEN2_VL),
    "qwen2_vl_sharded": dict(reference_dir=QWEN2_VL, shards=2),
    "qwen2_5_vl": dict(reference_dir=QWEN2_5_VL),
    "qwen2_vl_teacher": dict(
        reference_dir=QWEN2_VL,
        seed=1,
        text={"hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 3, "num_attention_heads": 6},
    ),
    "qwen3_vl": dict(reference_dir=QWEN3_VL),
    "qwen3_vl_teacher": dict(
        reference_dir=QWEN3_VL,
        seed=1,
        text={"hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 4, "num_attention_heads": 6},
    ),
    "qwen3_5": dict(reference_dir=QWEN3_5, stand_ins=QWEN3_VL),
}


class HubCheckpoints(dict):
    """``{name: folder}`` of :data:`HUB_CHECKPOINTS`, each built (a few seconds) the first time a test asks for it."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> Path:
        from clinkd.testing.real_format import build_hub_checkpoint

        self[name] = build_hub_checkpoint(out_dir=self.root / name, **HUB_CHECKPOINTS[name])
        return self[name]


@pytest.fixture(scope="session")
def hub_checkpoints(tmp_path_factory):
    """``{name: folder}``: Qwen2-VL in one file and sharded, Qwen2.5-VL, Qwen3-VL, Qwen3.5, and a larger teacher of
    Qwen2-VL (3 layers, width 96) and of Qwen3-VL (4 layers, width 96). Random bf16 weights, built on first use."""
    return HubCheckpoints(tmp_path_factory.mktemp("hub"))


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` imported as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- tiny configs of every family and padded multimodal batches (tests/model/test_positions.py, test_rope_model.py,
# test_lora.py) ----
IMAGE, VIDEO, VISION_START, VISION_END = 90, 91, 92, 93
MERGE = 2


def tiny_qwen2vl_config(**top_level):
    """A 2-layer Qwen2-VL with 2×2-pixel patches (patch vectors of 3·2·2·2 = 24 values)."""
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=512,
            use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
        ),
        vision_config=dict(
            depth=1,
            embed_dim=16,
            hidden_size=32,
            num_heads=2,
            mlp_ratio=2,
            in_channels=3,
            patch_size=2,
            spatial_merge_size=MERGE,
            temporal_patch_size=2,
        ),
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        **top_level,
    )


# the top-level keys Qwen3-VL and Qwen3.5 configs share: the special-token ids and a tied head
QWEN3_TOP_LEVEL = dict(
    image_token_id=IMAGE,
    video_token_id=VIDEO,
    vision_start_token_id=VISION_START,
    vision_end_token_id=VISION_END,
    tie_word_embeddings=True,
)


def tiny_qwen3_vision(**extra) -> dict:
    """Qwen3-VL's vision tower at test size (2×2-pixel patches), which Qwen3.5 shares without DeepStack."""
    return dict(
        depth=1,
        hidden_size=16,
        intermediate_size=32,
        num_heads=2,
        in_channels=3,
        patch_size=2,
        spatial_merge_size=MERGE,
        temporal_patch_size=2,
        out_hidden_size=32,
        num_position_embeddings=16,
        **extra,
    )


def tiny_qwen3vl_config(**top_level):
    """A 2-layer Qwen3-VL (head_dim 16: 8 rotation pairs interleaved as [4, 2, 2]) with 2×2-pixel patches, a 4×4
    learned position grid and one DeepStack feature (vision block 0 into LLM layer 0)."""
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=512,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
        ),
        vision_config=tiny_qwen3_vision(deepstack_visual_indexes=[0]),
        **QWEN3_TOP_LEVEL,
        **top_level,
    )


def tiny_qwen3_5_config(**top_level):
    """A 2-layer Qwen3.5 (a Gated DeltaNet layer, then full attention: head_dim 32 · partial_rotary_factor 0.25 =
    4 rotation pairs interleaved as [2, 1, 1]) with one MTP layer and 2×2-pixel patches."""
    from transformers import Qwen3_5Config

    return Qwen3_5Config(
        text_config=dict(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            max_position_embeddings=512,
            layer_types=["linear_attention", "full_attention"],
            linear_num_key_heads=2,
            linear_num_value_heads=2,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 1, 1],
                "mrope_interleaved": True,
                "partial_rotary_factor": 0.25,
            },
            mtp_num_hidden_layers=1,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
        ),
        vision_config=tiny_qwen3_vision(),
        **QWEN3_TOP_LEVEL,
        **top_level,
    )


def make_batch(specs: list[list], padding_side: str = "left", seed: int = 0) -> dict:
    """A padded batch from per-sample layouts: an int is that many text tokens, ``(h, w)`` an image of
    h×w patches (``h·w/4`` LLM tokens). Returns input_ids, attention_mask, mm_token_type_ids, image_grid_thw."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    rows, grids = [], []
    for spec in specs:
        tokens = []
        for part in spec:
            if isinstance(part, int):
                tokens += torch.randint(2, 80, (part,), generator=generator).tolist()
            else:
                tokens += [IMAGE] * (part[0] * part[1] // MERGE**2)
                grids.append([1, *part])
        rows.append(tokens)
    length = max(len(tokens) for tokens in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for b, tokens in enumerate(rows):
        columns = slice(length - len(tokens), length) if padding_side == "left" else slice(0, len(tokens))
        input_ids[b, columns] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[b, columns] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": (input_ids == IMAGE).int(),
        "image_grid_thw": torch.tensor(grids, dtype=torch.long) if grids else None,
    }
