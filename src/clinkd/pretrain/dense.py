"""Dense vision pre-training: linear heads on every merged visual token (the grounding note's "dense" stage).

The merger emits one token per cell of the image, in raster order (a 4×4 grid of 28-px cells at 112 px). Each
token is taught, through linear heads that are thrown away afterwards:

* ``name``: the name (``1 +`` its index among the look's names) of the object covering the largest share of the cell,
when that share
  is at least :data:`MIN_COVER`; else 0, background;
* ``row``, ``column``: the cell's own row and column;
* ``box``: the covering object's 0–1000 box / 1000 (L1, object cells only).

Only the vision tower and merger train (AdamW, cosine schedule); the language model is untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from clinkd.pretrain.corpus import COLOUR, CorpusLook, CorpusScene, draw_scene, scene_rng
from clinkd.progress import make_progress

MIN_COVER = 0.25  # an object owns a cell from a quarter of its pixels: the smallest objects still own one
WARMUP = 0.03


@dataclass(frozen=True)
class CellLabels:
    """Per-cell targets of a batch, cells in raster order per image: ``names``, ``rows``, ``columns`` (long) and
    ``boxes`` (float, 0–1; meaningful where ``names > 0``)."""

    names: torch.Tensor
    rows: torch.Tensor
    columns: torch.Tensor
    boxes: torch.Tensor

    def to(self, device) -> "CellLabels":
        return CellLabels(self.names.to(device), self.rows.to(device), self.columns.to(device), self.boxes.to(device))


def cell_labels(scene: CorpusScene, grid: tuple[int, int], names: Sequence[str] = COLOUR.names) -> CellLabels:
    """The targets of one scene's ``grid = (rows, columns)`` cells (see the module docstring)."""
    size = scene.pixels.shape[0]
    owner = np.zeros((size, size), dtype=np.int64)  # 0 background, k + 1 object k (objects never overlap)
    for index, obj in enumerate(scene.objects):
        owner[obj.mask] = index + 1
    row_edges, column_edges = (np.linspace(0, size, cells + 1).round().astype(int) for cells in grid)
    labels, rows, columns, boxes = [], [], [], []
    for row in range(grid[0]):
        for column in range(grid[1]):
            cell = owner[row_edges[row] : row_edges[row + 1], column_edges[column] : column_edges[column + 1]]
            counts = np.bincount(cell.ravel(), minlength=len(scene.objects) + 1)[1:]
            best = int(counts.argmax()) if counts.size else 0
            covered = counts.size > 0 and counts[best] >= MIN_COVER * cell.size
            obj = scene.objects[best] if covered else None
            labels.append(names.index(obj.name) + 1 if obj else 0)
            boxes.append([obj.box.x1, obj.box.y1, obj.box.x2, obj.box.y2] if obj else [0.0] * 4)
            rows.append(row)
            columns.append(column)
    return CellLabels(
        torch.tensor(labels), torch.tensor(rows), torch.tensor(columns), torch.tensor(boxes, dtype=torch.float32) / 1000
    )


def stack_labels(labels: Sequence[CellLabels]) -> CellLabels:
    return CellLabels(
        *(torch.cat([getattr(item, field) for item in labels]) for field in ("names", "rows", "columns", "boxes"))
    )


class DenseHeads(nn.Module):
    """Linear name, row, column and box heads over merged visual tokens of width ``width``."""

    def __init__(self, width: int, grid: tuple[int, int], names: int):
        super().__init__()
        self.name = nn.Linear(width, names + 1)
        self.row = nn.Linear(width, grid[0])
        self.column = nn.Linear(width, grid[1])
        self.box = nn.Linear(width, 4)

    def forward(self, tokens: torch.Tensor) -> CellLabels:
        """Logits (name, row, column) and boxes for ``tokens`` of shape ``(cells, width)``."""
        return CellLabels(self.name(tokens), self.row(tokens), self.column(tokens), self.box(tokens))


def dense_loss(predicted: CellLabels, target: CellLabels) -> torch.Tensor:
    """Cross-entropy of name, row and column, plus L1 of the box over object cells."""
    loss = F.cross_entropy(predicted.names, target.names)
    loss = loss + F.cross_entropy(predicted.rows, target.rows) + F.cross_entropy(predicted.columns, target.columns)
    objects = target.names > 0
    if objects.any():
        loss = loss + F.l1_loss(predicted.boxes[objects], target.boxes[objects])
    return loss


def visual_tokens(model, processor, scenes: Sequence[CorpusScene]) -> tuple[torch.Tensor, tuple[int, int]]:
    """The merged visual tokens of ``scenes`` as ``(images · cells, width)`` and the cell grid ``(rows, columns)``."""
    batch = processor.image_processor(images=[Image.fromarray(scene.pixels) for scene in scenes], return_tensors="pt")
    grid_thw = batch["image_grid_thw"].to(model.device)
    pixels = batch["pixel_values"].to(model.device, model.dtype)
    merged = model.model.visual(pixels, grid_thw=grid_thw).pooler_output
    merge = processor.image_processor.merge_size
    _, height, width = batch["image_grid_thw"][0].tolist()
    return merged, (height // merge, width // merge)


def cell_grid(processor, image_size: int) -> tuple[int, int]:
    """The ``(rows, columns)`` of merged tokens the processor makes of an ``image_size`` square image."""
    blank = Image.new("RGB", (image_size, image_size))
    _, height, width = processor.image_processor(images=[blank], return_tensors="pt")["image_grid_thw"][0].tolist()
    merge = processor.image_processor.merge_size
    return height // merge, width // merge


def dense_batch(
    seed: int, step: int, batch_size: int, image_size: int, max_objects: int, look: CorpusLook
) -> list[CorpusScene]:
    """Step ``step``'s fresh scenes of ``look``, 1 to ``max_objects`` objects each."""
    scenes = []
    for index in range(step * batch_size, (step + 1) * batch_size):
        rng = scene_rng(seed, "dense", index)
        scenes.append(draw_scene(rng, image_size, int(rng.integers(1, max_objects + 1)), look))
    return scenes


def train_dense(
    model,
    processor,
    *,
    seed: int,
    steps: int,
    batch_size: int,
    lr: float,
    image_size: int,
    max_objects: int,
    look: CorpusLook = COLOUR,
) -> DenseHeads | None:
    """Train the vision tower + merger with fresh dense heads for ``steps`` steps; returns the heads (None: no step)."""
    if steps == 0:
        return None
    visual = model.model.visual
    torch.manual_seed(seed)
    heads = DenseHeads(model.config.vision_config.hidden_size, cell_grid(processor, image_size), len(look.names)).to(
        model.device
    )
    parameters = [*visual.parameters(), *heads.parameters()]
    optimiser = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimiser, round(WARMUP * steps), steps)
    with make_progress() as progress:
        bar = progress.add_task("dense", total=steps, info="")
        for step in range(steps):
            scenes = dense_batch(seed, step, batch_size, image_size, max_objects, look)
            tokens, grid = visual_tokens(model, processor, scenes)
            loss = dense_loss(
                heads(tokens), stack_labels([cell_labels(scene, grid, look.names) for scene in scenes]).to(model.device)
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimiser.step()
            schedule.step()
            progress.update(bar, advance=1, info=f"loss {loss.item():.3f}")
    return heads


@torch.no_grad()
def head_scores(
    model,
    processor,
    heads: DenseHeads,
    scenes: Sequence[CorpusScene],
    names: Sequence[str] = COLOUR.names,
    batch_size: int = 32,
) -> dict[str, float]:
    """How well ``heads`` read the tower on ``scenes``: name accuracy on all cells and on object cells, row and
    column accuracy, and the mean box L1 on object cells in 0–1000 units."""
    predicted, target = [], []
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        tokens, grid = visual_tokens(model, processor, chunk)
        predicted.append(heads(tokens))
        target.append(stack_labels([cell_labels(scene, grid, names) for scene in chunk]).to(model.device))
    predicted, target = stack_labels(predicted), stack_labels(target)
    objects = target.names > 0
    names_right = predicted.names.argmax(-1) == target.names
    return {
        "name_accuracy": _mean(names_right),
        "object_cell_name_accuracy": _mean(names_right[objects]),
        "row_accuracy": _mean(predicted.rows.argmax(-1) == target.rows),
        "column_accuracy": _mean(predicted.columns.argmax(-1) == target.columns),
        "box_l1": _mean(1000 * (predicted.boxes[objects] - target.boxes[objects]).abs()),
        "object_cells": int(objects.sum()),
        "cells": int(objects.numel()),
    }


def _mean(values: torch.Tensor) -> float | None:
    """The mean as a float; None (JSON null) for no values."""
    return values.float().mean().item() if values.numel() else None
