"""From samples to model batches: chat messages, training labels and generation prompts.

Both the tiny model and real Qwen2-VL checkpoints go through here, with the checkpoint's own
chat template. Labels cover the assistant turns only (their text and closing ``<|im_end|>``),
which is LLaMA-Factory's ``train_on_prompt: false``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from clinkd.boxes import convert_markup
from clinkd.chat import TURN_END
from clinkd.data.records import Sample, Turn
from clinkd.model.box_convention import BoxCoordinates, RelativeBoxes, Size, box_coordinates, image_size
from clinkd.model.processor import load_image, pixel_budget

if TYPE_CHECKING:
    from clinkd.config import RecipeConfig

IGNORE_INDEX = -100
ASSISTANT_HEADER = "<|im_start|>assistant\n"


@dataclass(frozen=True)
class InputFormat:
    """How a sample is shown to a model: the box markup of its texts (``data.box_style``) and the image's resize:
    ``square_size``×``square_size`` (``model.square_size``), else the pixel budget of the model's processor
    (``model.min_pixels``/``max_pixels``, set when the model is loaded or built)."""

    box_style: str = "qwen2-vl"
    square_size: int | None = None

    @classmethod
    def of(cls, cfg: RecipeConfig) -> InputFormat:
        return cls(cfg.data.box_style, cfg.model.square_size)

    def image(self, path: str | Path, processor) -> Image.Image:
        """The image as ``processor`` is given it (decoded reduced when the file is far above its budget)."""
        return load_image(path, self.square_size, pixel_budget(processor))

    def image_size(self, path: str | Path, processor) -> Size:
        """The ``(width, height)`` of :meth:`image`, read from the file's header."""
        return image_size(path, self.square_size, pixel_budget(processor))


@dataclass(frozen=True)
class ChatExample:
    """One model input: an image and the QA turns asked about it (one turn for test samples)."""

    image: Path
    turns: tuple[Turn, ...]


def training_examples(samples: Sequence[Sample], mode: str = "split") -> list[ChatExample]:
    """``split``: one example per QA turn, like the one-turn test files; ``multi``: one per image."""
    if mode == "split":
        return [ChatExample(s.image, (turn,)) for s in samples for turn in s.turns]
    if mode == "multi":
        return [ChatExample(s.image, tuple(s.turns)) for s in samples]
    raise ValueError(f"data.train_turns: unknown mode {mode!r}; expected split or multi")


def build_messages(
    turns: Sequence[Turn], box_style: str, with_answers: bool, to_model: Callable[[str], str] | None = None
) -> list[dict]:
    """Chat messages with the image in the first user turn; box markup in ``box_style``, then ``to_model``
    (the model's coordinate convention, e.g. Qwen2.5-VL pixels) applied to every text."""

    def text(raw: str) -> str:
        converted = convert_markup(raw, box_style)
        return to_model(converted) if to_model is not None else converted

    messages: list[dict] = []
    for index, turn in enumerate(turns):
        content = [{"type": "text", "text": text(turn.question)}]
        if index == 0:
            content.insert(0, {"type": "image"})
        messages.append({"role": "user", "content": content})
        if with_answers:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": text(turn.answer)}]})
    return messages


class TrainCollator:
    """Collates :class:`ChatExample` into right-padded processor outputs with assistant-only labels."""

    def __init__(self, processor, input_format: InputFormat = InputFormat(), boxes: BoxCoordinates = RelativeBoxes()):
        self.processor = processor
        self.input_format = input_format
        self.boxes = boxes
        tokenizer = processor.tokenizer
        self.header_ids = tokenizer(ASSISTANT_HEADER, add_special_tokens=False)["input_ids"]
        self.end_id = tokenizer.convert_tokens_to_ids(TURN_END)

    def __call__(self, examples: Sequence[ChatExample]) -> dict[str, torch.Tensor]:
        images = [self.input_format.image(ex.image, self.processor) for ex in examples]
        box_style = self.input_format.box_style
        texts = [
            self.processor.apply_chat_template(
                build_messages(ex.turns, box_style, True, partial(self.boxes.to_model, image_size=image.size)),
                tokenize=False,
            )
            for ex, image in zip(examples, images)
        ]
        batch = self.processor(text=texts, images=images, padding=True, padding_side="right", return_tensors="pt")
        batch["labels"] = assistant_labels(batch["input_ids"], batch["attention_mask"], self.header_ids, self.end_id)
        return dict(batch)


def assistant_labels(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, header_ids: Sequence[int], end_id: int
) -> torch.Tensor:
    """Copy of ``input_ids`` with everything but assistant spans set to ``IGNORE_INDEX``.

    A span starts right after each ``<|im_start|>assistant\\n`` header and ends with (and
    includes) the next ``<|im_end|>``, so the model learns to stop.
    """
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    header = torch.tensor(header_ids)
    width = len(header_ids)
    for row in range(input_ids.shape[0]):
        ids = input_ids[row]
        windows = ids.unfold(0, width, 1)
        starts = ((windows == header).all(dim=1).nonzero().flatten() + width).tolist()
        ends = (ids == end_id).nonzero().flatten().tolist()
        for start in starts:
            stop = next((end for end in ends if end >= start), ids.shape[0] - 1)
            labels[row, start : stop + 1] = ids[start : stop + 1]
    labels[attention_mask == 0] = IGNORE_INDEX
    return labels


class PromptCollator:
    """Left-padded generation prompts (the question turn and the assistant header); :meth:`relative` maps
    a generated answer back from the model's box convention to the 0–1000 scale."""

    def __init__(self, processor, input_format: InputFormat = InputFormat(), boxes: BoxCoordinates = RelativeBoxes()):
        self.processor = processor
        self.input_format = input_format
        self.boxes = boxes

    def __call__(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        images = [self.input_format.image(sample.image, self.processor) for sample in samples]
        box_style = self.input_format.box_style
        texts = [
            self.processor.apply_chat_template(
                build_messages(sample.turns[:1], box_style, False, partial(self.boxes.to_model, image_size=image.size)),
                tokenize=False,
                add_generation_prompt=True,
            )
            for sample, image in zip(samples, images)
        ]
        return dict(self.processor(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt"))

    def relative(self, answer: str, sample: Sample) -> str:
        """``answer`` with its boxes on the 0–1000 scale (Qwen2.5-VL: from pixels of the resized image)."""
        return self.boxes.from_model(answer, self.input_format.image_size(sample.image, self.processor))


def collator_for(collator_class: type, model, processor, input_format: InputFormat = InputFormat()):
    """``collator_class`` (train, prompt or indexed) showing samples in ``input_format``, in ``model``'s box convention
    (Qwen2.5-VL reads pixel boxes)."""
    return collator_class(processor, input_format, box_coordinates(model.config, processor))
