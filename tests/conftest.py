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
    train_clip(sample_pairs(load_medgrit(root / "data" / "train.json", root / "data" / "images")), tiny_processor.tokenizer, clip_cfg, root / "clip")
    cfg = RecipeConfig(clip=clip_cfg, select={"method": "sasg", "scorer_path": root / "clip"})
    return selector_for(cfg.select, cfg.clip.crop_margin, cfg.seed, cfg.run_dir)


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
    "qwen2_vl_teacher": dict(reference_dir=QWEN2_VL, seed=1,
                             text={"hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 3, "num_attention_heads": 6}),
    "qwen3_vl": dict(reference_dir=QWEN3_VL),
    "qwen3_vl_teacher": dict(reference_dir=QWEN3_VL, seed=1,
                             text={"hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 4, "num_attention_heads": 6}),
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

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
