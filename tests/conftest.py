"""Shared fixtures: a tiny tokenizer/processor/model built in code (no downloads)."""

from __future__ import annotations

import os

import pytest

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
