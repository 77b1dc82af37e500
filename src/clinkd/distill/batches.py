"""Distillation batches: training batches that remember which examples they hold, and shared position ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from clinkd.batching import ChatExample, TrainCollator
from clinkd.model.positions import RopeStrategy, build_position_ids

EXAMPLE_INDEX = "example_index"


@dataclass(frozen=True)
class IndexedExample:
    """A training example and its position in the distillation set (the key of its cached teacher rows)."""

    index: int
    example: ChatExample


def indexed(examples: Sequence[ChatExample]) -> list[IndexedExample]:
    return [IndexedExample(index, example) for index, example in enumerate(examples)]


class IndexedCollator(TrainCollator):
    """:class:`TrainCollator` over :class:`IndexedExample` that adds ``example_index`` [B] (int64) to the batch.

    The Trainer shuffles; the index is what ties a batch row to its teacher rows in the cache.
    """

    def __call__(self, items: Sequence[IndexedExample]) -> dict[str, torch.Tensor]:
        batch = super().__call__([item.example for item in items])
        batch[EXAMPLE_INDEX] = torch.tensor([item.index for item in items], dtype=torch.long)
        return batch


def batch_position_ids(batch: dict[str, torch.Tensor], strategy: RopeStrategy, spatial_merge_size: int) -> torch.Tensor:
    """The M-RoPE position ids [3, B, L] of a collated batch under ``strategy``.

    This is what the model's own ``get_rope_index`` computes from ``input_ids``; computing it once and
    passing it to student and teacher makes both see exactly the same positions.
    """
    position_ids, _ = build_position_ids(
        batch["mm_token_type_ids"],
        batch.get("image_grid_thw"),
        batch["attention_mask"],
        spatial_merge_size=spatial_merge_size,
        strategy=strategy,
    )
    return position_ids


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The forward inputs of a batch: everything but the labels and the example index."""
    return {key: value for key, value in batch.items() if key not in ("labels", EXAMPLE_INDEX)}
