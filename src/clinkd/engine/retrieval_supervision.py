"""The retrieval loss in training: find the box answers in a batch, read one head's attention, score it.

``train.retrieval_loss`` (docs/pretrain.md): at every answer position from ``<|box_start|>`` up to the token
before ``<|box_end|>``, head ``train.retrieval_head`` of text layer ``train.retrieval_layer`` should attend to
the image tokens in proportion to the box's share of their cells (:func:`clinkd.losses.retrieval.cell_weights`).
Boxes are read in the model's convention (Qwen2-VL 0–1000, Qwen2.5-VL pixels of the resized image); one image
per example.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from clinkd.batching import IGNORE_INDEX
from clinkd.boxes import BOX_TAGS, BoxStyle, parse_boxes
from clinkd.config import ConfigError, TrainConfig
from clinkd.losses.retrieval import attention_target_loss, cell_weights
from clinkd.model.box_convention import JsonBoxes, PixelBoxes, box_coordinates


@dataclass
class RetrievalRows:
    """The supervised attention rows of a batch: example index, query position and target over the keys."""

    example: torch.Tensor  # (N,)
    query: torch.Tensor  # (N,)
    targets: torch.Tensor  # (N, T)


@dataclass(frozen=True)
class RetrievalTargets:
    """Builds :class:`RetrievalRows` from a :class:`~clinkd.batching.TrainCollator` batch."""

    box_start: int
    box_end: int
    image_token: int
    merge: int
    decode: object  # token ids → text
    pixel_patch: int | None = None  # boxes in pixels of the resized image (grid × patch); None: on 0–1000

    @classmethod
    def for_model(cls, model, processor) -> RetrievalTargets:
        tokenizer = processor.tokenizer
        ids = tokenizer.convert_tokens_to_ids
        convention = box_coordinates(model.config, processor)
        if isinstance(convention, JsonBoxes):  # the supervised span is found by the box tokens, which JSON answers lack
            raise ValueError(
                f"train.retrieval_loss: {model.config.model_type} answers boxes as JSON, without box tokens to "
                "supervise"
            )
        pixels = isinstance(convention, PixelBoxes)
        box_start, box_end = (ids(tag) for tag in BOX_TAGS[BoxStyle.QWEN2_VL])  # the special tokens both families write
        return cls(
            box_start,
            box_end,
            model.config.image_token_id,
            model.config.vision_config.spatial_merge_size,
            tokenizer.decode,
            model.config.vision_config.patch_size if pixels else None,
        )

    def __call__(self, input_ids: torch.Tensor, labels: torch.Tensor, image_grid_thw: torch.Tensor) -> RetrievalRows:
        if image_grid_thw.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"the retrieval loss needs one image per example; got {image_grid_thw.shape[0]} images for "
                f"{input_ids.shape[0]} examples"
            )
        rows: list[tuple[int, int, torch.Tensor]] = []
        for example, (ids, answer, grid) in enumerate(zip(input_ids, labels != IGNORE_INDEX, image_grid_thw)):
            rows += [(example, query, target) for query, target in self.example_rows(ids, answer, grid)]
        length = input_ids.shape[1]
        if not rows:
            return RetrievalRows(
                torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, length)
            )
        example, query, targets = zip(*rows)
        return RetrievalRows(torch.tensor(example), torch.tensor(query), torch.stack(targets))

    def example_rows(self, ids: torch.Tensor, answer: torch.Tensor, grid: torch.Tensor):
        """(query position, target over the keys) for each position writing a box of this example's answer."""
        image_positions = (ids == self.image_token).nonzero().flatten()
        grid_rows, grid_cols = int(grid[1]) // self.merge, int(grid[2]) // self.merge
        scale = (
            (1000.0, 1000.0)
            if self.pixel_patch is None
            else (int(grid[2]) * self.pixel_patch, int(grid[1]) * self.pixel_patch)
        )
        ends = (ids == self.box_end).nonzero().flatten().tolist()
        for start in ((ids == self.box_start) & answer).nonzero().flatten().tolist():
            end = next((end for end in ends if end > start), None)
            boxes = parse_boxes(self.decode(ids[start + 1 : end].tolist()), BoxStyle.PLAIN) if end is not None else []
            if not boxes:
                continue  # a truncated or malformed box: nothing to look at
            box = boxes[0]
            target = torch.zeros(ids.shape[0])
            target[image_positions] = cell_weights((box.x1, box.y1, box.x2, box.y2), grid_rows, grid_cols, scale)
            yield from ((query, target) for query in range(start, end))


def retrieval_loss(attention: torch.Tensor, rows: RetrievalRows) -> torch.Tensor:
    """:func:`attention_target_loss` of one head's attention ``(B, T, T)`` at the rows' queries."""
    picked = attention[rows.example.to(attention.device), rows.query.to(attention.device)]
    return attention_target_loss(picked, rows.targets.to(picked.device))


@contextmanager
def captured_attention(model, layer: int, head: int):
    """Records the attention probabilities ``(B, T, T)`` of one head of text layer ``layer`` during a forward
    (the list holds the last one). The model must run eager attention (the fused kernels return none)."""
    captured: list[torch.Tensor] = []

    def keep(module, args, output):
        captured[:] = [output[1][:, head]]

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft: the wrapped model
    handle = base.model.language_model.layers[layer].self_attn.register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


@dataclass
class RetrievalSupervision:
    """The retrieval loss's weight and where it reads (``ClinKDTrainer`` adds it to the answer loss)."""

    weight: float
    layer: int
    head: int
    targets: RetrievalTargets
    previous_attention: str = "sdpa"  # the model's attention before the stage switched it to eager

    @classmethod
    def from_settings(cls, train: TrainConfig, model, processor) -> RetrievalSupervision | None:
        """None when ``train.retrieval_loss`` is 0; else switches ``model`` to eager attention (the fused kernels
        return no probabilities) after checking the layer and head exist."""
        if not train.retrieval_loss:
            return None
        text = model.config.text_config
        if not -text.num_hidden_layers <= train.retrieval_layer < text.num_hidden_layers:
            raise ConfigError(
                f"train.retrieval_layer: {train.retrieval_layer} is outside the model's {text.num_hidden_layers} text "
                "layers"
            )
        if train.retrieval_head >= text.num_attention_heads:
            raise ConfigError(
                f"train.retrieval_head: {train.retrieval_head} is not below the model's {text.num_attention_heads} "
                "heads"
            )
        previous = model.config._attn_implementation
        model.set_attn_implementation("eager")
        targets = RetrievalTargets.for_model(model, processor)
        return cls(train.retrieval_loss, train.retrieval_layer, train.retrieval_head, targets, previous)

    def release(self, model) -> None:
        """Gives ``model`` back the attention it had before (eager was for this loss only)."""
        model.set_attn_implementation(self.previous_attention)

    def watch(self, model, inputs: dict, answer_loss) -> tuple[torch.Tensor, object, torch.Tensor]:
        """Runs ``answer_loss()`` (→ ``(loss, outputs)``) with this head watched; returns that loss, the outputs
        and the (unweighted) retrieval loss of the same forward."""
        rows = self.targets(inputs["input_ids"], inputs["labels"], inputs["image_grid_thw"])
        with captured_attention(model, self.layer, self.head) as attention:
            loss, outputs = answer_loss()
        return loss, outputs, retrieval_loss(attention[0], rows)
