"""Frozen-vision token cache (``train.vision_cache_mb``) against the plain model: time per training step and per
forward-only batch, side by side on the same batches.

    python benchmarks/vision_cache.py                          # the shipped base, 64 tokens, batch 8, 2 threads
    python benchmarks/vision_cache.py --threads 1 --batches 40 --batch-size 16

The shipped tiny base (vision tower and merger frozen, as the default recipe trains it) sees batches of the
default mix's turns: every image asked ``--turns`` times, shuffled, as a training epoch shows them. Each variant
runs the same batches in the same process, alternating for ``--repeats`` rounds so that a shared CPU's load hits
both alike; the cached variant starts each round with an empty cache, so its first sight of every image (the
misses) is in the timing. Reported: the median seconds per batch of each variant, their ratio, and the cache's
hits and misses. Both variants must give the same losses, which the table checks.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clinkd.batching import ChatExample, TrainCollator
from clinkd.data.records import Turn
from clinkd.engine.vision_cache import cached_vision
from clinkd.model.bases import base_dir
from clinkd.model.loading import load_checkpoint


def examples(folder: Path, images: int, turns: int) -> list[ChatExample]:
    """``images`` random 224×224 images, each asked ``turns`` questions, shuffled like an epoch."""
    rng = np.random.default_rng(0)
    rows = []
    for index in range(images):
        path = folder / f"image-{index}.png"
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(path)
        rows += [
            ChatExample(path, (Turn(f"Please locate the <ref>object {turn}</ref>.", "<ref>object</ref>"),))
            for turn in range(turns)
        ]
    random.Random(0).shuffle(rows)
    return rows


def timed(model, batches, train: bool, cache_mb: int) -> tuple[float, list[float], object]:
    """Median seconds per batch, the losses, and the cache (None when off)."""
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)  # lr 0: same weights
    seconds, losses = [], []
    with cached_vision(model, cache_mb) as cache:
        for batch in batches:
            started = time.perf_counter()
            if train:
                loss = model(**batch).loss
                loss.backward()
                optimiser.step()
                optimiser.zero_grad()
            else:
                with torch.no_grad():
                    loss = model(**batch).loss
            seconds.append(time.perf_counter() - started)
            losses.append(loss.item())
    return statistics.median(seconds), losses, cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--turns", type=int, default=8, help="questions per image (the default mix asks 8)")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = load_checkpoint(base_dir("s"), "float32")
    model.model.visual.requires_grad_(False)  # train.freeze_vision_tower and freeze_merger
    with tempfile.TemporaryDirectory() as folder:
        rows = examples(Path(folder), args.images, args.turns)
        collate = TrainCollator(processor)
        size = args.batch_size
        batches = [collate(rows[start : start + size]) for start in range(0, size * args.batches, size)]
    print(f"{len(batches)} batches of {size}, {args.images} images × {args.turns} turns, {args.threads} threads\n")
    print("| pass | plain s/batch | cached s/batch | cached / plain | hits / misses | same losses |")
    print("|:--|--:|--:|--:|--:|:--|")
    for train in (True, False):
        plain_times, cached_times = [], []
        for _ in range(args.repeats):
            plain, plain_losses, _ = timed(model, batches, train, 0)
            cached, cached_losses, cache = timed(model, batches, train, 1024)
            plain_times.append(plain)
            cached_times.append(cached)
        plain, cached = statistics.median(plain_times), statistics.median(cached_times)
        print(
            f"| {'train step' if train else 'forward only'} | {plain:.4f} | {cached:.4f} | {cached / plain:.2f} | "
            f"{cache.hits} / {cache.misses} | {plain_losses == cached_losses} |"
        )


if __name__ == "__main__":
    main()
