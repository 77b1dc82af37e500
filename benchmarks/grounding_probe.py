"""Learnability probes for visual grounding: the simplest VG data a tiny model should learn.

    python benchmarks/grounding_probe.py --out /tmp/probe/single --task single     # one bright ellipse
    python benchmarks/grounding_probe.py --out /tmp/probe/named --task named       # three named shapes
    clinkd run configs/default.yaml name=probe-single data.dir=/tmp/probe/single data.synth.enabled=false \\
        distill.enabled=false reflect.enabled=false select.method=greedy report.teacher=false \\
        report.student=false train.max_steps=1000

Each task writes a Med-GRIT folder (``train.json``, ``test_VG.json``, ``images/``) with one VG turn per
image and fresh images throughout (16,000 train by default, so 1,000 steps at batch 16 never repeat one):

* ``single``: one bright ellipse (12–35 % of the side) on a noisy dark background, "Where is the lesion?".
  Localising needs no choice: the model only has to read *where* the salient object is.
* ``named``: a dark "cyst", a bright "lesion" and a striped "mass" (16–32 % of the side, apart) on a grey
  background; the question names one of them. Localising now needs the name → look binding as well.
* ``mixed``: ``named`` scenes with 1–3 of the objects in training (the asked one always there), tested
  on the three-object ``named`` scenes.

The gap between the two (docs/benchmarks.md, "Grounding probes") separates a pipeline fault from a
capability limit: the training path learns ``single`` and, at the same budget, not ``named``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from clinkd.boxes import Box, format_ref
from clinkd.data.medgrit import write_medgrit
from clinkd.data.records import Sample, Turn
from clinkd.synth.draw import ellipse_mask

SIZE = 112
NAMED_LOOKS = {"cyst": "dark", "lesion": "bright", "mass": "striped"}


def random_ellipse(rng: np.random.Generator, radius_range: tuple[float, float]) -> np.ndarray:
    rx, ry = rng.uniform(*radius_range, 2) * SIZE
    cx, cy = rng.uniform(rx, SIZE - rx), rng.uniform(ry, SIZE - ry)
    return ellipse_mask(SIZE, cx, cy, rx, ry)


def mask_box(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    return Box.from_pixels(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, SIZE, SIZE).rounded()


def paint(image: np.ndarray, mask: np.ndarray, look: str, rng: np.random.Generator) -> None:
    if look == "striped":
        ys, xs = np.nonzero(mask)
        image[ys, xs] = np.where(((xs + ys) // 4) % 2 == 0, 200, 60)
    else:
        image[mask] = rng.normal(5 if look == "dark" else 220, 3 if look == "dark" else 10, mask.sum())


def single_scene(rng: np.random.Generator) -> tuple[np.ndarray, str, Box]:
    image = rng.normal(30, 12, (SIZE, SIZE))
    mask = random_ellipse(rng, (0.06, 0.175))
    image[mask] = rng.normal(200, 15, mask.sum())
    return image, "lesion", mask_box(mask)


def place_object(rng: np.random.Generator, taken: np.ndarray) -> np.ndarray:
    """An ellipse mask apart from the ``taken`` pixels (a few redraws keep boxes plus a 2 px margin apart)."""
    for _ in range(50):
        mask = random_ellipse(rng, (0.08, 0.16))
        ys, xs = np.nonzero(mask)
        margin = np.s_[max(0, ys.min() - 2) : ys.max() + 3, max(0, xs.min() - 2) : xs.max() + 3]
        if not taken[margin].any():
            break
    taken[margin] = True
    return mask


def draw_named(rng: np.random.Generator, names: list[str]) -> tuple[np.ndarray, dict[str, Box]]:
    """A grey scene with the named objects drawn in ``names`` order; their boxes by name."""
    image = rng.normal(100, 12, (SIZE, SIZE))
    taken = np.zeros((SIZE, SIZE), bool)
    boxes = {}
    for name in names:
        mask = place_object(rng, taken)
        paint(image, mask, NAMED_LOOKS[name], rng)
        boxes[name] = mask_box(mask)
    return image, boxes


def named_scene(rng: np.random.Generator) -> tuple[np.ndarray, str, Box]:
    image, boxes = draw_named(rng, list(NAMED_LOOKS))
    name = list(NAMED_LOOKS)[rng.integers(len(NAMED_LOOKS))]
    return image, name, boxes[name]


def mixed_scene(rng: np.random.Generator) -> tuple[np.ndarray, str, Box]:
    """Like ``named`` with 1, 2 or 3 objects (uniform), the asked one always drawn: a third of the
    scenes need no choice, so the "where" readout can form while the "which" binding has none."""
    names = list(NAMED_LOOKS)
    target = names[rng.integers(len(names))]
    count = rng.integers(1, len(names) + 1)
    others = [name for name in names if name != target]
    rng.shuffle(others)
    image, boxes = draw_named(rng, [target] + others[: count - 1])
    return image, target, boxes[target]


SCENES = {"single": single_scene, "named": named_scene, "mixed": mixed_scene}
# ``mixed`` trains on 1–3 objects but is tested on the three-object scenes of ``named``: the choice it must learn.
TEST_SCENES = {"mixed": named_scene}


def write_probe(out: Path, task: str, train: int, test: int, seed: int) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        samples = []
        scene = TEST_SCENES.get(task, SCENES[task]) if split == "test" else SCENES[task]
        for index in range(count):
            image, name, box = scene(rng)
            image_id = f"ct_probe--{split}--{index:06d}"
            path = out / "images" / f"{image_id}.png"
            Image.fromarray(np.repeat(image.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)).save(path)
            turn = Turn(f"Where is the {format_ref(name)}?", format_ref(name) + box.to_text("qwen-vl"))
            samples.append(Sample(image_id, path, "ct", [turn]))
        write_medgrit(samples, out / ("train.json" if split == "train" else "test_VG.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--task", choices=sorted(SCENES), default="named")
    parser.add_argument("--train", type=int, default=16000)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_probe(args.out, args.task, args.train, args.test, args.seed)
    print(f"{args.task} probe: {args.train} train / {args.test} test images in {args.out}")


if __name__ == "__main__":
    main()
