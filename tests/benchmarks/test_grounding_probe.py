"""benchmarks/grounding_probe.py writes Med-GRIT folders whose boxes are the painted objects' extents."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clinkd.boxes import parse_boxes
from clinkd.data.medgrit import load_medgrit, load_test_split

from conftest import load_benchmark

# Pixels only the named look has: ≥ 5 σ from either background (N(30, 12) single, N(100, 12) named), and
# not the stripes' exact grey levels, which also occur as isolated background pixels (no
# neighbour sharing a side).
LOOK_PIXELS = {
    "lesion": lambda grey: (grey > 170) & (grey != 200),
    "cyst": lambda grey: grey < 25,
    "mass": lambda grey: without_isolated_pixels((grey == 200) | (grey == 60)),
}


def without_isolated_pixels(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    side_neighbour = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return mask & side_neighbour


@pytest.fixture(scope="module")
def probe():
    return load_benchmark("grounding_probe")


@pytest.mark.parametrize("task", ["single", "named", "mixed"])
def test_answer_box_is_the_named_objects_extent(probe, task, tmp_path):
    probe.write_probe(tmp_path, task, train=6, test=2, seed=3)
    train = load_medgrit(tmp_path / "train.json", tmp_path / "images")
    tests = load_test_split(tmp_path, tmp_path / "images")
    assert len(train) == 6 and len(tests["VG"]) == 2
    for sample in train + tests["VG"]:
        (turn,) = sample.turns
        name = turn.question.split("<ref>")[1].split("</ref>")[0]
        grey = np.asarray(Image.open(sample.image))[..., 0].astype(int)
        assert parse_boxes(turn.answer) == [probe.mask_box(LOOK_PIXELS[name](grey))], sample.id


def test_same_seed_same_files(probe, tmp_path):
    probe.write_probe(tmp_path / "a", "named", train=3, test=1, seed=0)
    probe.write_probe(tmp_path / "b", "named", train=3, test=1, seed=0)
    assert (tmp_path / "a" / "train.json").read_text() == (tmp_path / "b" / "train.json").read_text()


def test_mixed_trains_on_one_to_three_objects_and_tests_on_three(probe, tmp_path):
    probe.write_probe(tmp_path, "mixed", train=30, test=3, seed=0)

    def looks_present(sample):
        grey = np.asarray(Image.open(sample.image))[..., 0].astype(int)
        return sum(bool(has(grey).any()) for has in LOOK_PIXELS.values())

    train_counts = {looks_present(s) for s in load_medgrit(tmp_path / "train.json", tmp_path / "images")}
    assert train_counts == {1, 2, 3}
    assert {looks_present(s) for s in load_test_split(tmp_path, tmp_path / "images")["VG"]} == {3}
