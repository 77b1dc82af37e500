"""clinkd.engine.vision_cache: a frozen tower's tokens computed once per image, the forward unchanged."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from clinkd.batching import ChatExample, TrainCollator
from clinkd.data.records import Turn
from clinkd.engine.vision_cache import VisionTokenCache, cached_vision, image_key


def images(tmp_path, count: int) -> list:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = tmp_path / f"image-{index}.png"
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def batch(tiny_processor, paths) -> dict:
    turns = [(Turn("Describe the image.", f"Answer {index}."),) for index in range(len(paths))]
    examples = [ChatExample(path, turn) for path, turn in zip(paths, turns)]
    return TrainCollator(tiny_processor)(examples)


def test_cached_forward_and_gradients_equal_the_plain_model_and_each_image_goes_through_the_tower_once(
    tiny_model, tiny_processor, tmp_path
):
    first, second = images(tmp_path, 2)
    inputs = batch(tiny_processor, [first, second, first, first])  # the same image three times in one batch
    tiny_model.model.visual.requires_grad_(False)
    plain = tiny_model(**inputs)
    plain.loss.backward()
    plain_grads = {name: p.grad.clone() for name, p in tiny_model.named_parameters() if p.grad is not None}
    tiny_model.zero_grad()
    with cached_vision(tiny_model, 16) as cache:
        once = tiny_model(**inputs)
        again = tiny_model(**inputs)
        again.loss.backward()
    assert torch.equal(once.logits, plain.logits) and torch.equal(again.logits, plain.logits)
    assert (cache.misses, cache.hits) == (2, 6)  # 2 distinct images; 2 repeats in the first batch, 4 in the second
    for name, p in tiny_model.named_parameters():
        if p.grad is not None:
            assert torch.equal(p.grad, plain_grads[name]), name
    assert "get_image_features" not in vars(tiny_model.model)  # the class's own method is back


def test_the_cache_keeps_at_most_its_bytes_least_recently_used_out():
    rows = [torch.full((4, 6), float(index)) for index in range(3)]
    tokens = {image_key(row): torch.full((2, 8), float(index)) for index, row in enumerate(rows)}  # 64 bytes each
    cache = VisionTokenCache(max_bytes=128)

    def compute(pixels, grid):
        return [tokens[image_key(chunk)] for chunk in torch.split(pixels, grid.prod(-1).tolist())]

    grid = torch.tensor([[1, 2, 2]])
    for row in (rows[0], rows[1], rows[0], rows[2]):  # row 0 used again, so row 1 is the least recent
        cache.tokens(compute, row, grid)
    assert list(cache.entries) == [image_key(rows[0]), image_key(rows[2])] and cache.stored_bytes == 128
    assert (cache.hits, cache.misses) == (1, 3)


def test_image_keys_tell_images_apart_and_match_equal_pixels():
    pixels = torch.randn(16, 1176)
    assert image_key(pixels) == image_key(pixels.clone())
    changed = pixels.clone()
    changed[7, 100] += 1e-3
    assert image_key(changed) != image_key(pixels)


@pytest.mark.parametrize("model_type", ["qwen3_vl", "qwen3_5"])
def test_families_with_deepstack_features_and_a_zero_budget_run_uncached(model_type, tiny_model):
    other = SimpleNamespace(config=SimpleNamespace(model_type=model_type))
    with cached_vision(other, 16) as cache:
        assert cache is None
    with cached_vision(tiny_model, 0) as cache:
        assert cache is None and "get_image_features" not in vars(tiny_model.model)
