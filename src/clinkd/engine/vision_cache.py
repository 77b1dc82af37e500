"""Visual tokens computed once per image while the vision tower and merger do not change.

A frozen vision tower maps the same pixels to the same tokens, and a training epoch shows each image once per
turn (eight times in the default turn mix; a teacher pass and every reflective round show them again). While
:func:`cached_vision` is active, the model's ``get_image_features`` looks each image's patches up by content and
runs the tower only on the images it has not seen: the merged tokens it returns are the very tensors the tower
returned the first time, so the forward, the loss and the gradients are unchanged (tested against the uncached
model). Bounded by bytes, least recently used first out.

Only the families whose image features are the merged tokens alone are cached (Qwen2-VL, Qwen2.5-VL); Qwen3-VL
and Qwen3.5 also return DeepStack features and run uncached.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

CACHED_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
ImageKey = tuple[tuple[int, ...], int, int]


def image_key(patches: torch.Tensor) -> ImageKey:
    """One image's patch rows, fingerprinted by shape, CRC-32 and Adler-32 of their bytes (64 bits in all: a few
    milliseconds per batch, where a cryptographic hash costs as much as the tower it saves)."""
    data = patches.detach().to("cpu").contiguous().numpy().data
    return tuple(patches.shape), zlib.crc32(data), zlib.adler32(data)


@dataclass
class VisionTokenCache:
    """Merged visual tokens by :func:`image_key`, at most ``max_bytes`` of them (least recently used evicted)."""

    max_bytes: int
    entries: OrderedDict[ImageKey, torch.Tensor] = field(default_factory=OrderedDict)
    stored_bytes: int = 0
    hits: int = 0
    misses: int = 0

    def tokens(
        self,
        compute: Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor]],
        pixel_values: torch.Tensor,
        grid_thw: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Each image's tokens, in order; ``compute(pixels, grid)`` runs the tower on the images not cached."""
        images = torch.split(pixel_values, grid_thw.prod(-1).tolist())
        keys = [image_key(patches) for patches in images]
        first_index: dict[ImageKey, int] = {}
        for index, key in enumerate(keys):
            first_index.setdefault(key, index)  # an image twice in one batch goes through the tower once
        found = {key: self.entries[key] for key in first_index if key in self.entries}
        missing = [index for key, index in first_index.items() if key not in found]
        if missing:
            computed = compute(torch.cat([images[index] for index in missing]), grid_thw[missing])
            for index, tokens in zip(missing, computed, strict=True):
                found[keys[index]] = tokens.detach()
                self.store(keys[index], found[keys[index]])
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        for key in first_index:
            if key in self.entries:
                self.entries.move_to_end(key)
        return [found[key] for key in keys]

    def store(self, key: ImageKey, tokens: torch.Tensor) -> None:
        if tokens.nbytes > self.max_bytes or key in self.entries:
            return
        self.entries[key] = tokens
        self.stored_bytes += tokens.nbytes
        while self.stored_bytes > self.max_bytes:
            _, evicted = self.entries.popitem(last=False)
            self.stored_bytes -= evicted.nbytes


@contextmanager
def cached_vision(model, max_mb: int) -> Iterator[VisionTokenCache | None]:
    """Within the block, ``model`` (a Qwen2-VL or Qwen2.5-VL, or a peft model around one) computes each image's
    visual tokens once. The caller vouches that the vision tower and merger do not change inside the block (frozen
    while training, or a forward-only pass). Yields the cache, or None where nothing is cached (``max_mb`` 0, or
    another family)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if max_mb <= 0 or base.config.model_type not in CACHED_FAMILIES:
        yield None
        return
    inner = base.model
    original = inner.get_image_features
    cache = VisionTokenCache(max_mb * 2**20)

    def get_image_features(pixel_values, image_grid_thw=None, **kwargs):
        def compute(pixels, grid):
            return original(pixels, grid, **{**kwargs, "return_dict": True}).pooler_output

        return BaseModelOutputWithPooling(pooler_output=tuple(cache.tokens(compute, pixel_values, image_grid_thw)))

    inner.get_image_features = get_image_features  # an instance attribute: the class's method is untouched
    try:
        yield cache
    finally:
        del inner.get_image_features
