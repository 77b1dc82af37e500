"""The Qwen2-VL processor without torchvision (Qwen3-VL's and Qwen3.5's process images the same way), and the image
preparation both paths share."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2VLConfig, Qwen2VLProcessor, Qwen3_5Config, Qwen3VLConfig
from transformers.processing_utils import ProcessorMixin

from clinkd.images import to_rgb

PATCH_SIZE = 14
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


def load_processor(path: str | Path) -> ClinKDProcessor:
    """Load a saved clinkd processor or a real checkpoint's (any supported family), without torchvision."""
    return ClinKDProcessor.from_pretrained(str(path))


def load_image(path: str | Path, square_size: int | None = None) -> Image.Image:
    """Open an image as RGB (grayscale and 16-bit inputs are converted).

    ``square_size`` resamples to ``square_size``×``square_size`` (MCG-RoPE's w = h option); boxes
    are relative 0–1000 coordinates, so they stay correct.
    """
    with Image.open(path) as opened:
        image = to_rgb(opened)
    if square_size:
        image = image.resize((square_size, square_size), Image.Resampling.BICUBIC)
    return image
