"""Image files as clinkd reads them: the sizes the model takes, and huge files decoded once, reduced to the budget."""

from __future__ import annotations

import pytest
from PIL import Image, JpegImagePlugin

from clinkd.data.records import Sample, Turn
from clinkd.images import MAX_ASPECT_RATIO, PATCH_SIZE, _reduced, decoded_size, read_rgb, unusable_reason
from clinkd.model.box_convention import image_size

BUDGET = 112 * 112  # the tiny processor's model.max_pixels


def test_the_aspect_ratio_limit_is_the_processors():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    smart_resize(PATCH_SIZE, PATCH_SIZE * MAX_ASPECT_RATIO)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(PATCH_SIZE, PATCH_SIZE * MAX_ASPECT_RATIO + 1)
    assert unusable_reason((PATCH_SIZE * MAX_ASPECT_RATIO, PATCH_SIZE)) is None
    assert "aspect ratio" in unusable_reason((PATCH_SIZE * MAX_ASPECT_RATIO + 1, PATCH_SIZE))


@pytest.mark.parametrize(
    "size, expected", [((2400, 1600), (300, 200)), ((224, 224), (224, 224)), ((400, 300), (400, 300))]
)
def test_only_a_file_well_above_the_budget_is_decoded_reduced(size, expected):
    assert decoded_size(size, BUDGET) == expected
    assert decoded_size(size, None) == size


def test_a_huge_image_is_decoded_once_reduced_and_read_again_when_the_file_changes(tmp_path):
    path = tmp_path / "ct_huge.png"
    Image.new("RGB", (2400, 1600), (200, 40, 40)).save(path)
    _reduced.cache_clear()
    first, second = read_rgb(path, BUDGET), read_rgb(path, BUDGET)
    assert first.size == second.size == (300, 200) and first.getpixel((10, 10)) == (200, 40, 40)
    assert (_reduced.cache_info().misses, _reduced.cache_info().hits) == (1, 1)
    first.paste((0, 0, 0), (0, 0, 300, 200))  # a caller drawing on its copy leaves the cached image alone
    assert read_rgb(path, BUDGET).getpixel((10, 10)) == (200, 40, 40)
    Image.new("RGB", (2400, 1700), (10, 10, 10)).save(path)
    assert read_rgb(path, BUDGET).getpixel((10, 10)) == (10, 10, 10)
    assert read_rgb(path).size == (2400, 1700)  # no budget: every pixel


def test_a_huge_jpeg_is_decoded_at_a_reduced_dct_scale(tmp_path, monkeypatch):
    path = tmp_path / "x_scan.jpg"
    Image.new("L", (3200, 3200), 128).save(path)
    drafted = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(
        JpegImagePlugin.JpegImageFile,
        "draft",
        lambda self, mode, size: drafted.append(draft(self, mode, size)) or drafted[-1],
    )
    _reduced.cache_clear()
    assert read_rgb(path, BUDGET).size == decoded_size((3200, 3200), BUDGET)
    assert drafted and drafted[0] is not None  # PIL decoded it at 1/2, 1/4 or 1/8 scale


def test_the_model_sees_a_huge_image_as_it_would_see_it_decoded_in_full(tmp_path, tiny_processor):
    from clinkd.batching import PromptCollator
    from clinkd.model.box_convention import PixelBoxes

    path = tmp_path / "ct_huge.png"
    Image.new("RGB", (2400, 1600), (90, 90, 90)).save(path)
    sample = Sample("ct_huge", path, "ct", [Turn("Where is the <ref>liver</ref>?", "")], task="VG")
    grid = PromptCollator(tiny_processor)([sample])["image_grid_thw"].tolist()
    full = tiny_processor.image_processor(images=[read_rgb(path)], return_tensors="pt")["image_grid_thw"].tolist()
    assert grid == full
    # Qwen2.5-VL's pixel boxes are computed from the size the processor is given, read from the header alone
    assert image_size(path, None, BUDGET) == read_rgb(path, BUDGET).size
    boxes = PixelBoxes.from_processor(tiny_processor)
    assert boxes.resized(image_size(path, None, BUDGET)) == boxes.resized((2400, 1600))
