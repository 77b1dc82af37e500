"""Qwen2.5-VL pixel boxes (the resize matches the processor, rewriting round-trips, the hooks apply it) and
Qwen3-VL's JSON boxes."""

from __future__ import annotations

import random

import pytest
from PIL import Image
from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3_5Config, Qwen3VLConfig

from clinkd.batching import ChatExample, PromptCollator, TrainCollator
from clinkd.data.records import Sample, Turn
from clinkd.model.box_convention import JsonBoxes, PixelBoxes, RelativeBoxes, box_coordinates, image_size
from clinkd.model.loading import save_checkpoint, set_pixel_budget
from clinkd.model.processor import build_image_processor, load_processor

BUDGET = PixelBoxes(factor=28, min_pixels=56 * 56, max_pixels=1280 * 28 * 28)


@pytest.mark.parametrize("size", [(112, 112), (300, 100), (1000, 1000), (1920, 1080), (45, 700)])
def test_resized_size_is_what_the_processor_feeds_the_model(size):
    processor = build_image_processor(BUDGET.min_pixels, BUDGET.max_pixels)
    grid = processor(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"][0].tolist()
    assert BUDGET.resized(size) == (grid[2] * 14, grid[1] * 14)


def test_pixel_boxes_read_the_processor_budget(tiny_processor):
    assert PixelBoxes.from_processor(tiny_processor) == PixelBoxes(28, 112 * 112, 112 * 112)


def test_to_model_scales_every_box_and_keeps_the_rest():
    text = "<ref>liver</ref><box>(100,250),(500,1000)</box> and <|box_start|>(0,0),(1000,1000)<|box_end|>?"
    # 1000×500 → smart_resize → 1008×504 pixels
    assert BUDGET.resized((1000, 500)) == (1008, 504)
    assert BUDGET.to_model(text, (1000, 500)) == (
        "<ref>liver</ref><box>(101,126),(504,504)</box> and <|box_start|>(0,0),(1008,504)<|box_end|>?"
    )


def test_bare_pairs_are_rewritten_only_when_no_box_is_tagged():
    assert BUDGET.from_model("(504,252),(1008,504)", (1000, 500)) == "(500,500),(1000,1000)"
    assert (
        BUDGET.from_model("<box>(504,252),(1008,504)</box> not (1,1),(2,2)", (1000, 500))
        == "<box>(500,500),(1000,1000)</box> not (1,1),(2,2)"
    )


def test_from_model_clamps_boxes_past_the_border():
    assert (
        BUDGET.from_model("<|box_start|>(1100,600),(2000,700)<|box_end|>", (1000, 500))
        == "<|box_start|>(1000,1000),(1000,1000)<|box_end|>"
    )


def test_round_trip_is_exact_at_1000_pixels_and_within_half_a_pixel_below():
    rng = random.Random(0)
    for _ in range(300):
        size = (rng.randint(28, 2500), rng.randint(28, 2500))
        width, height = BUDGET.resized(size)
        x1, x2 = sorted(rng.randint(0, 1000) for _ in range(2))
        y1, y2 = sorted(rng.randint(0, 1000) for _ in range(2))
        back = BUDGET.from_model(BUDGET.to_model(f"<box>({x1},{y1}),({x2},{y2})</box>", size), size)
        got = [int(v) for v in back[6:-7].replace("(", "").replace(")", "").split(",")]
        bound_x, bound_y = int(500 / width + 0.5), int(500 / height + 0.5)
        for value, original, bound in zip(got, (x1, y1, x2, y2), (bound_x, bound_y, bound_x, bound_y)):
            assert abs(value - original) <= bound, (size, (x1, y1, x2, y2), back)
        if width >= 1000 and height >= 1000:
            assert got == [x1, y1, x2, y2]


def test_qwen2_vl_keeps_relative_boxes_and_qwen2_5_vl_uses_pixels(tiny_processor):
    assert box_coordinates(Qwen2VLConfig(), tiny_processor) == RelativeBoxes()
    assert isinstance(box_coordinates(Qwen2_5_VLConfig(), tiny_processor), PixelBoxes)
    assert RelativeBoxes().to_model("<box>(1,2),(3,4)</box>", (5, 5)) == "<box>(1,2),(3,4)</box>"


def test_qwen3_families_read_and_write_json_boxes(tiny_processor):
    assert (
        box_coordinates(Qwen3VLConfig(), tiny_processor)
        == box_coordinates(Qwen3_5Config(), tiny_processor)
        == JsonBoxes()
    )
    answer = "<|object_ref_start|>liver<|object_ref_end|><|box_start|>(112,305),(498,702)<|box_end|>"
    to_model = JsonBoxes().to_model(answer, (640, 480))
    assert to_model == '{"bbox_2d": [112, 305, 498, 702], "label": "liver"}'  # relative 0–1000, whatever the size
    assert JsonBoxes().from_model(to_model, (640, 480)) == "<ref>liver</ref><box>(112,305),(498,702)</box>"


def test_image_size_is_the_size_given_to_the_processor(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (300, 120)).save(path)
    assert image_size(path) == (300, 120)
    assert image_size(path, square_size=224) == (224, 224)


def test_collators_write_pixel_boxes_for_a_pixel_model(tmp_path, tiny_processor):
    path = tmp_path / "ct_0.png"
    Image.new("RGB", (200, 140)).save(path)
    boxes = PixelBoxes.from_processor(tiny_processor)
    assert boxes.resized((200, 140)) == (112, 84)  # the 112×112 pixel budget
    turn = Turn("Where is <ref>it</ref><box>(0,0),(500,500)</box>?", "<ref>it</ref><box>(500,500),(1000,1000)</box>")
    decode = tiny_processor.tokenizer.decode
    train = TrainCollator(tiny_processor, boxes=boxes)([ChatExample(path, (turn,))])
    assert "(0,0),(56,42)" in decode(train["input_ids"][0]) and "(56,42),(112,84)" in decode(train["input_ids"][0])
    prompt = PromptCollator(tiny_processor, boxes=boxes)([Sample("ct_0", path, "ct", [turn])])
    assert "(0,0),(56,42)" in decode(prompt["input_ids"][0])
    relative = TrainCollator(tiny_processor)([ChatExample(path, (turn,))])
    assert "(500,500),(1000,1000)" in decode(relative["input_ids"][0])


def test_pixel_budget_is_saved_with_the_processor(tmp_path, tiny_model, tiny_processor):
    set_pixel_budget(tiny_processor, 56 * 56, 224 * 224)
    try:
        save_checkpoint(tiny_model, tiny_processor, tmp_path / "model")
        assert PixelBoxes.from_processor(load_processor(tmp_path / "model")) == PixelBoxes(28, 56 * 56, 224 * 224)
    finally:
        set_pixel_budget(tiny_processor, 112 * 112, 112 * 112)


class _ScriptedModel:
    """Stands in for a Qwen2.5-VL model whose every continuation is ``answer`` (pixel boxes)."""

    device = "cpu"

    def __init__(self, tokenizer, answer: str):
        import torch

        self.answer = torch.tensor(tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"])
        self.vocab = len(tokenizer)

    def eval(self):
        return self

    def generate(self, input_ids, num_return_sequences=1, return_dict_in_generate=False, **_):
        from types import SimpleNamespace

        import torch

        rows = input_ids.shape[0] * num_return_sequences
        sequences = torch.cat(
            [input_ids.repeat_interleave(num_return_sequences, 0), self.answer.expand(rows, -1)], dim=1
        )
        if not return_dict_in_generate:
            return sequences
        logits = tuple(torch.zeros(rows, self.vocab) for _ in range(len(self.answer)))
        return SimpleNamespace(sequences=sequences, logits=logits, beam_indices=None)


def test_every_decoder_returns_relative_boxes_for_a_pixel_model(tmp_path, tiny_processor):
    """Plain decoding, SASG candidates and `clinkd infer` all map Qwen2.5-VL pixel boxes back to 0–1000."""
    from clinkd.config import SelectConfig
    from clinkd.engine.generate import generate_responses
    from clinkd.interactive.infer import InferRequest, run_request
    from clinkd.sasg.candidates import generate_candidates

    path = tmp_path / "ct_0.png"
    Image.new("RGB", (200, 140)).save(path)  # resized to 112 × 84 by the 112² budget
    model = _ScriptedModel(tiny_processor.tokenizer, "<|box_start|>(56,42),(112,84)<|box_end|>")
    collator = PromptCollator(tiny_processor, boxes=PixelBoxes.from_processor(tiny_processor))
    sample = Sample("ct_0", path, "ct", [Turn("Where is <ref>it</ref>?", "")], task="VG")
    relative = "<|box_start|>(500,500),(1000,1000)<|box_end|>"
    assert generate_responses(model, tiny_processor, collator, [sample], 20) == [relative]
    candidates = generate_candidates(
        model, tiny_processor, collator, [sample], 20, SelectConfig(candidates="sample", num_return_sequences=2)
    )
    assert [candidate.text for candidate in candidates[0]] == [relative, relative]
    model.config = Qwen2_5_VLConfig()
    result = run_request(model, tiny_processor, InferRequest(path, "VG", "Where is <ref>it</ref>?"))
    assert result.answer == relative
