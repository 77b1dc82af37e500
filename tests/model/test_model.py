import pytest
import torch
from PIL import Image

from clinkd.model.loading import CheckpointError, load_checkpoint, save_checkpoint
from clinkd.model.processor import load_image
from clinkd.model.tiny import TINY_SIZES, mrope_section, tiny_config


def test_tokenizer_splits_digits_and_keeps_special_tokens(tiny_tokenizer):
    tokens = tiny_tokenizer.tokenize("<|box_start|>(123,45),(6,789)<|box_end|>")
    assert tokens[0] == "<|box_start|>" and tokens[-1] == "<|box_end|>"
    digits = [t for t in tokens if t.isdigit()]
    assert digits == list("123456789") and all(len(t) == 1 for t in digits)


def test_mrope_section_matches_qwen2vl_7b_and_fills_half_the_head():
    assert mrope_section(128) == [16, 24, 24]
    for size in TINY_SIZES.values():
        head_dim = size.hidden // size.heads
        assert sum(mrope_section(head_dim)) == head_dim // 2


def test_unknown_tiny_size_names_the_key(tiny_tokenizer):
    with pytest.raises(ValueError, match="model.size"):
        tiny_config(tiny_tokenizer, "xxl")


def test_save_and_load_round_trip_is_exact(tmp_path, tiny_model, tiny_processor):
    image = Image.new("RGB", (112, 112), (10, 200, 30))
    text = tiny_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is the liver?"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = tiny_processor(text=[text], images=[image], return_tensors="pt")
    save_checkpoint(tiny_model, tiny_processor, tmp_path / "ckpt")
    model, processor = load_checkpoint(tmp_path / "ckpt")
    again = processor(text=[text], images=[image], return_tensors="pt")
    assert torch.equal(inputs["input_ids"], again["input_ids"])
    assert torch.equal(inputs["pixel_values"], again["pixel_values"])
    with torch.no_grad():
        assert torch.equal(tiny_model(**inputs).logits, model.eval()(**again).logits)
    assert not (tmp_path / ".ckpt.partial").exists()


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a clinkd or Qwen2-VL checkpoint"):
        load_checkpoint(tmp_path / "empty")


def test_load_image_converts_grayscale_16bit_and_squares(tmp_path):
    import numpy as np

    path = tmp_path / "x16.png"
    Image.fromarray(np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 16).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (64, 32)
    assert image.getextrema()[0] == (0, 255)
    assert load_image(path, square_size=56).size == (56, 56)
