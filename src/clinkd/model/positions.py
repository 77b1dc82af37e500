"""M-RoPE position ids for Qwen2-VL: the stock rule, the paper's MCG-RoPE and the released ClinKD patch.
Qwen2.5-VL, Qwen3-VL and Qwen3.5 place images by the same rule (their ``get_rope_index`` differs for videos only).

One vectorised function, :func:`build_position_ids`, builds the ``3 × B × L`` (temporal, height,
width) position ids and the ``B × 1`` rope deltas of a padded batch for any of three strategies.
The derivations are in ``docs/mcg-rope.md``; the short version:

Notation. Inside one sample, ``i`` is a token's *sequence index* among the attended tokens
(``cumsum(attention_mask) - 1``). An image occupies ``n = T'·h'·w'`` consecutive tokens, where
``(T', h', w') = (t, h / m, w / m)`` is its LLM grid (``image_grid_thw`` divided by the spatial
merge size ``m``), and its token number ``k`` holds the patch ``(τ, r, c)`` in row-major order.
``s`` is the *cursor* when the image starts: the position a text token would take there.

* ``qwen2vl`` (stock, equal to ``Qwen2VLModel.get_rope_index``): text tokens take consecutive
  positions; image patch ``(τ, r, c)`` at ``(s+τ, s+r, s+c)``; the text after the image resumes at
  ``s + max(h', w')``.
* ``mcg`` (the paper). With ``ℓ`` the position of the last token before the image, ``w = w'``,
  ``h = h'`` and 1-based patch indices ``v⁽¹⁾ = r+1``, ``v⁽²⁾ = c+1``, a patch sits at
  ``(α₁v⁽¹⁾ + λ₁, α₂v⁽²⁾ + λ₂)`` with ``λ₁ = ℓ + (wh + 1 − α₁(h+1))/2`` and
  ``λ₂ = ℓ + (wh + 1 − α₂(w+1))/2``, and the text after the image resumes at ``ℓ + wh + 1``.
  Equivalently every axis is centred on ``ℓ + (n+1)/2``: axis ``a`` of size ``n_a`` with step
  ``α_a`` gives ``ℓ + (n+1)/2 + α_a·(v_a − (n_a−1)/2)`` for the 0-based index ``v_a``. The temporal
  axis uses the same rule with step 1, so an image (``T' = 1``) has ``t = ℓ + (n+1)/2``: the gap
  equation holds on all three axes. Positions are half-integers unless ``n`` is odd (for ``α = 2``);
  ``rounding="none"`` keeps them as float32, ``"floor"`` floors them to integers.
* ``clinkd-official`` (the released patch, batch-safe): stock positions with one extra step at
  every text↔image boundary: an image starts at ``max(previous) + 2`` (at ``0`` when it opens the
  sequence), the text after it at ``max(image) + 2``.

Deltas. ``deltas[b] = cursor_after_last_token − n_valid[b]``: the next token appended to sample
``b`` (sequence index ``n_valid[b]``) gets position ``n_valid[b] + deltas[b]`` on every axis, which
is exactly what a full recompute over the longer sequence gives, so cached decoding (transformers
adds ``rope_deltas`` to ``cumsum(attention_mask) - 1``, or appends ``last + 1``) matches it.
For ``mcg`` an image consumes exactly ``n`` positions, so its deltas are all zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

import torch

IMAGE_TOKEN, VIDEO_TOKEN = 1, 2  # mm_token_type_ids values; text is 0
PAPER_ALPHA = (2.0, 2.0)


NAMES = ("qwen2vl", "mcg", "clinkd-official")
FREQUENCIES = ("mrope", "paper")
ROUNDINGS = ("none", "floor")


@dataclass(frozen=True)
class RopeStrategy:
    """How the LLM positions of a multimodal sequence are built, and which rotary frequencies rotate them.

    ``alpha = (α₁, α₂)`` (height, width step inside an image) and ``rounding`` only apply to ``mcg``
    (``none``: float32 ids, ``floor``: integer ids); ``frequency`` applies to every strategy: ``mrope`` keeps
    Qwen2-VL's frequencies, ``paper`` restarts the frequency ladder inside each of the t/h/w sections (see
    :mod:`clinkd.model.rope`). A plain dataclass, so this module needs only torch: it ships beside an
    exported model's remote code. pydantic validates it as a config section (``extra`` keys are errors).
    """

    __pydantic_config__ = {"extra": "forbid"}

    name: Literal["qwen2vl", "mcg", "clinkd-official"] = "qwen2vl"
    alpha: tuple[float, float] = PAPER_ALPHA
    frequency: Literal["mrope", "paper"] = "mrope"
    rounding: Literal["none", "floor"] = "none"

    def __post_init__(self):
        for field, value, allowed in (
            ("name", self.name, NAMES),
            ("frequency", self.frequency, FREQUENCIES),
            ("rounding", self.rounding, ROUNDINGS),
        ):
            if value not in allowed:
                raise ValueError(f"{field}: {value!r} is not one of {', '.join(allowed)}")
        alpha = tuple(float(a) for a in self.alpha)
        if len(alpha) != 2 or not all(0 < a < math.inf for a in alpha):  # NaN fails the comparison too
            raise ValueError(f"alpha: steps must be positive and finite, two of them (α₁, α₂), got {self.alpha}")
        object.__setattr__(self, "alpha", alpha)
        if self.name != "mcg" and (alpha != PAPER_ALPHA or self.rounding != "none"):
            raise ValueError(f"alpha/rounding only apply to name='mcg', not {self.name!r}")

    @classmethod
    def from_dict(cls, recorded: dict) -> RopeStrategy:
        """The strategy a config recorded with :meth:`to_dict`; an unknown key is an error."""
        unknown = sorted(set(recorded) - {field.name for field in fields(cls)})
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}")
        return cls(**recorded)

    def to_dict(self) -> dict:
        """JSON-ready (alpha as a list), as stored in a model's ``config.json``."""
        return {"name": self.name, "alpha": list(self.alpha), "frequency": self.frequency, "rounding": self.rounding}

    @property
    def float_positions(self) -> bool:
        """Whether the ids can be non-integer (then they are float32, else int64)."""
        return self.name == "mcg" and self.rounding == "none"


STOCK = RopeStrategy(name="qwen2vl")
PAPER = RopeStrategy(name="mcg")
OFFICIAL = RopeStrategy(name="clinkd-official")


class ImageLayout:
    """Where each image of a padded batch lies, computed once with tensor ops (no loop over tokens).

    Per image ``j`` (order of appearance, batch-major, the order of ``image_grid_thw``):
    ``grid[j] = (T', h', w')``, ``size[j] = T'h'w'``, ``row[j]``, ``first_col[j]``/``last_col[j]``
    (columns of its first/last token) and ``start_index[j]`` (sequence index of its first token).
    Per image token ``k`` (row-major): ``rows[k]``, ``cols[k]``, ``image[k]`` and ``patch[:, k] = (τ, r, c)``.
    """

    def __init__(self, is_image: torch.Tensor, index: torch.Tensor, image_grid_thw: torch.Tensor | None, merge: int):
        self.rows, self.cols = is_image.nonzero(as_tuple=True)
        if image_grid_thw is None:
            if self.rows.numel():
                raise ValueError(f"{self.rows.numel()} image tokens but no image_grid_thw")
            image_grid_thw = torch.zeros(0, 3, dtype=torch.long, device=is_image.device)
        grid = image_grid_thw.to(device=is_image.device, dtype=torch.long)
        self.grid = torch.stack([grid[:, 0], grid[:, 1] // merge, grid[:, 2] // merge], dim=1)
        if (self.grid[:, 0] != 1).any():
            raise ValueError(f"image_grid_thw: images have t = 1, got t = {grid[:, 0].tolist()} (no video support)")
        self.size = self.grid.prod(dim=1)
        if int(self.size.sum()) != self.rows.numel():
            raise ValueError(
                f"image_grid_thw describes {int(self.size.sum())} image tokens (t·h·w/merge² summed over "
                f"{len(grid)} images) but mm_token_type_ids marks {self.rows.numel()}"
            )
        ends = self.size.cumsum(0)
        first, last = ends - self.size, ends - 1
        self.image = torch.repeat_interleave(torch.arange(len(self.size), device=is_image.device), self.size)
        self.row, self.first_col, self.last_col = self.rows[first], self.cols[first], self.cols[last]
        split = (self.rows[last] != self.row) | (self.last_col - self.first_col != self.size - 1)
        if split.any():
            bad = split.nonzero().flatten().tolist()
            raise ValueError(f"image(s) {bad}: tokens are not one contiguous run of t·h·w/merge² in a single sample")
        self.start_index = index[self.row, self.first_col]
        local = torch.arange(self.rows.numel(), device=is_image.device) - first[self.image]
        _, height, width = self.grid[self.image].unbind(1)
        self.patch = torch.stack([local // (height * width), (local // width) % height, local % width])


def _image_placement(
    strategy: RopeStrategy, layout: ImageLayout
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(origin[3, J], step[3, 1] | None, after[J])``: image token ``k`` of image ``j`` sits at
    ``s_j + origin[:, j] + step · patch[:, k]`` (``step=None``: 1), and ``after[j]`` is how far image ``j``
    moves the cursor beyond the ``size[j]`` sequence slots it occupies.

    Per-image terms are computed once per image, so the per-token work is one gather and one
    multiply-add (mcg is float32: exact for the half-integer positions of integer steps below 2²⁴).
    """
    height_width_max = layout.grid[:, 1:].max(dim=1).values
    if strategy.name == "qwen2vl":
        return torch.zeros_like(layout.grid.T), None, height_width_max - layout.size
    if strategy.name == "clinkd-official":
        boundary = (layout.start_index > 0).long()  # no text↔image boundary before an image that opens the sequence
        return boundary.expand(3, -1), None, boundary + height_width_max + 1 - layout.size
    steps = torch.tensor((1.0, *strategy.alpha), device=layout.grid.device, dtype=torch.float32)[:, None]
    centre = (layout.size.float() - 1) / 2  # ℓ + (n+1)/2 relative to s = ℓ + 1
    origin = centre - steps * (layout.grid.T.float() - 1) / 2
    return origin, steps, torch.zeros_like(layout.size)


def build_position_ids(
    mm_token_type_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    *,
    spatial_merge_size: int,
    strategy: RopeStrategy = STOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(position_ids[3, B, L], deltas[B, 1])`` of a padded batch (left or right padding).

    ``mm_token_type_ids`` marks text (0) and image (1) tokens; ``image_grid_thw`` holds one
    ``(t, h, w)`` patch grid per image in order of appearance (batch-major), as the processor returns
    it; ``attention_mask`` (1 = token, 0 = padding) may be ``None``. Padding gets position 0. The ids
    are int64, or float32 when ``strategy.float_positions``; deltas have the same dtype.

    Every sample's positions are ``sequence index + shift``, where the shift is an exclusive cumsum of
    the per-image cursor moves placed at each image's last token; image tokens are placed from their
    image's start cursor by the strategy's rule (see the module docstring).
    """
    valid = torch.ones_like(mm_token_type_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if ((mm_token_type_ids == VIDEO_TOKEN) & valid).any():
        raise ValueError("mm_token_type_ids: video tokens (2) are not supported, only text (0) and images (1)")
    index = valid.long().cumsum(dim=1) - 1
    layout = ImageLayout((mm_token_type_ids == IMAGE_TOKEN) & valid, index, image_grid_thw, spatial_merge_size)
    origin, step, after = _image_placement(strategy, layout)

    moves = torch.zeros_like(index)
    moves.index_put_((layout.row, layout.last_col), after, accumulate=True)
    shift = moves.cumsum(dim=1) - moves  # exclusive: an image's own move applies after it

    dtype = torch.float32 if strategy.float_positions else torch.long
    position_ids = (index + shift).to(dtype).unsqueeze(0).repeat(3, 1, 1)
    image_start = layout.start_index + shift[layout.row, layout.first_col]  # shift is constant inside an image
    placed = (image_start + origin)[:, layout.image]
    placed = placed + layout.patch if step is None else torch.addcmul(placed, step, layout.patch.float())
    if strategy.rounding == "floor":
        placed = placed.floor()
    position_ids[:, layout.rows, layout.cols] = placed.to(dtype)
    position_ids.masked_fill_(~valid, 0)
    return position_ids, moves.sum(dim=1, keepdim=True).to(dtype)
