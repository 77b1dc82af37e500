"""The Qwen2-VL processor without torchvision (Qwen3-VL's and Qwen3.5's process images the same way), the processor
files stock tools load, and the image preparation both paths share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO

from PIL import Image
from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2VLConfig, Qwen2VLProcessor, Qwen3_5Config, Qwen3VLConfig
from transformers.processing_utils import ProcessorMixin

from clinkd.images import PATCH_SIZE, read_rgb

MERGE_SIZE = 2


class ClinKDProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` minus the video processor.

    The stock class always builds a video processor, which needs torchvision; images are all
    Med-GRIT has. ``ProcessorMixin`` reads the attributes from this ``__init__`` signature.
    ``Qwen3VLProcessor`` (Qwen3-VL, Qwen3.5) differs only in its videos (frames between timestamp texts), so
    this class serves every family; patch size, merge size, mean/std and budget come from the checkpoint's files.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = "<|image_pad|>"
        self.video_token = "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)


# Without this, AutoProcessor.from_pretrained silently returns only the tokenizer for our checkpoints.
for _config_class in (Qwen2VLConfig, Qwen2_5_VLConfig, Qwen3VLConfig, Qwen3_5Config):
    AutoProcessor.register(_config_class, ClinKDProcessor, exist_ok=True)


def build_image_processor(min_pixels: int, max_pixels: int):
    """Qwen2-VL's PIL image processor (the torchvision one is unusable on a CPU-only torch)."""
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=PATCH_SIZE,
        temporal_patch_size=2,
        merge_size=MERGE_SIZE,
    )


def build_processor(tokenizer, min_pixels: int, max_pixels: int) -> ClinKDProcessor:
    return ClinKDProcessor(
        image_processor=build_image_processor(min_pixels, max_pixels),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


# The processor and video processor classes of each family's published checkpoints: the names stock tools resolve.
STOCK_PROCESSORS = {
    "qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
    "qwen3_5": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
}
# The keys of a published video_preprocessor_config.json (Qwen3-VL's), taken from the image processor: one vision
# tower reads both, and a Qwen2-VL hub folder gives its video processor the image processor's file too.
VIDEO_KEYS = ("size", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")


def stock_processor_files(processor_config: dict, model_type: str) -> dict[str, dict]:
    """The processor files of a stock checkpoint of ``model_type``, from the ``processor_config.json`` that
    :class:`ClinKDProcessor` saves (image processor only): transformers 5's nested ``processor_config.json`` and the
    hub's flat ``preprocessor_config.json`` and ``video_preprocessor_config.json``, all naming the stock classes."""
    processor_class, video_class = STOCK_PROCESSORS[model_type]
    image = processor_config["image_processor"]
    video = {key: image[key] for key in VIDEO_KEYS} | {"video_processor_type": video_class}
    return {
        "processor_config.json": {**processor_config, "video_processor": video, "processor_class": processor_class},
        "preprocessor_config.json": {**image, "processor_class": processor_class},
        "video_preprocessor_config.json": {**video, "processor_class": processor_class},
    }


def save_processor(processor: ClinKDProcessor, folder: str | Path, model_type: str) -> None:
    """``processor.save_pretrained(folder)``, then the processor files :func:`stock_processor_files` lists, so that
    ``AutoProcessor.from_pretrained(folder)`` resolves what it does for a published checkpoint (vLLM and
    LLaMA-Factory load the processor first)."""
    folder = Path(folder)
    processor.save_pretrained(str(folder))
    saved = json.loads((folder / "processor_config.json").read_text(encoding="utf-8"))
    for name, document in stock_processor_files(saved, model_type).items():
        (folder / name).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_processor(path: str | Path) -> ClinKDProcessor:
    """Load a saved clinkd processor or a real checkpoint's (any supported family), without torchvision."""
    return ClinKDProcessor.from_pretrained(str(path))


def pixel_budget(processor) -> int:
    """The most pixels ``processor`` feeds the model per image (``model.max_pixels``)."""
    return processor.image_processor.size["longest_edge"]


def load_image(
    path: str | Path | BinaryIO, square_size: int | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Open an image as RGB (grayscale and 16-bit inputs are converted), a huge one decoded reduced for a reader of
    ``max_pixels`` (:func:`clinkd.images.read_rgb`; ``None``: at full size).

    ``square_size`` resamples to ``square_size``×``square_size`` (MCG-RoPE's w = h option); boxes
    are relative 0–1000 coordinates, so they stay correct.
    """
    image = read_rgb(path, max_pixels and max(max_pixels, (square_size or 0) ** 2))
    if square_size:
        image = image.resize((square_size, square_size), Image.Resampling.BICUBIC)
    return image
