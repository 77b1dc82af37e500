"""Which outputs are weak: grounding against the IoU threshold, the similarity threshold, the budget, and the
turns reflected on (items, seeded samples, tasks read off the ground truth)."""

from __future__ import annotations

from collections import Counter

import pytest

from clinkd.boxes import Box
from clinkd.data.records import Sample, Turn, infer_task
from clinkd.reflect.items import reflect_items, seeded_sample
from clinkd.reflect.scoring import select_weak
from clinkd.reflect.similarity import (
    Judgement,
    LexicalSimilarity,
    grounding,
    judge,
)

from conftest import VG_ANSWER  # the ground truth of one VG answer

LEXICAL = LexicalSimilarity()



# ---- grounding and thresholds ---------------------------------------------------------------------


def test_grounding_needs_every_box_above_the_iou_threshold():
    half = Box(0, 0, 100, 100).iou(Box(0, 0, 100, 50))
    assert half == 0.5
    assert grounding("<box>(0,0),(100,50)</box>", "<box>(0,0),(100,100)</box>") == (False, 0.5)  # strictly above 0.5
    assert grounding("<|box_start|>(0,0),(100,60)<|box_end|>", "<box>(0,0),(100,100)</box>") == (
        True,
        pytest.approx(0.6),
    )
    assert grounding("(0,0),(100,100)", "<box>(0,0),(100,100)</box>") == (
        True,
        1.0,
    )  # bare pair, like the metrics read it
    assert grounding("liver", VG_ANSWER) == (False, 0.0)
    assert grounding("<box>(0,0),(100,100)</box><box>(0,0),(9,9)</box>", "<box>(0,0),(100,100)</box>") == (False, 0.0)
    assert grounding("<box>(5,x),(1,1)</box>", VG_ANSWER) == (False, 0.0)  # unparseable box
    assert grounding("anything", "right kidney") == (None, None)


def test_weak_means_below_threshold_or_wrong_grounding():
    assert not Judgement(0.8, None, None).weak(0.8)  # exactly at the threshold is kept
    assert Judgement(0.7999, None, None).weak(0.8)
    assert Judgement(1.0, False, 0.2).weak(0.8)  # right words, wrong box
    assert not Judgement(0.9, True, 0.7).weak(0.8)
    assert Judgement(0.9, True, 0.6).quality == 0.6 and Judgement(0.5, None, None).quality == 0.5
    [verdict] = judge(
        ["<|object_ref_start|>liver<|object_ref_end|><|box_start|>(600,600),(700,700)<|box_end|>"], [VG_ANSWER], LEXICAL
    )
    assert verdict.similarity == 1.0 and verdict.grounded is False and verdict.weak(0.8)


def test_select_weak_takes_the_worst_first_within_budget():
    rows = [
        {"key": "a", "weak": True, "quality": 0.5},
        {"key": "b", "weak": False, "quality": 0.9},
        {"key": "c", "weak": True, "quality": 0.1},
        {"key": "d", "weak": True, "quality": 0.5},
        {"key": "e", "weak": True, "quality": 0.0},
    ]
    assert [r["key"] for r in select_weak(rows, None, 1)][:2] == ["e", "c"]
    assert [r["key"] for r in select_weak(rows, 2, 1)] == ["e", "c"]
    assert {r["key"] for r in select_weak(rows, None, 1)} == {"a", "c", "d", "e"}
    ties = [{"key": f"k{i}", "weak": True, "quality": 0.0} for i in range(40)]
    first, second = ([r["key"] for r in select_weak(ties, 10, n)] for n in (1, 2))
    assert first == [r["key"] for r in select_weak(ties, 10, 1)]  # reproducible
    assert set(first) != set(second)  # another round reaches other items


def test_seeded_sample_is_deterministic_and_keeps_order():
    values = list(range(100))
    a = seeded_sample(values, 10, seed=3)
    assert a == seeded_sample(values, 10, seed=3) == sorted(a) and len(set(a)) == 10
    assert seeded_sample(values, 10, seed=4) != a
    assert seeded_sample(values, None, 0) == values and seeded_sample(values, 500, 0) == values


def test_infer_task_recovers_every_synthetic_test_task(synth_dir):
    from clinkd.data.medgrit import load_test_split

    tests = load_test_split(synth_dir, synth_dir / "images")
    checked = Counter()
    for task, samples in tests.items():
        for sample in samples:
            assert infer_task(sample.turns[0]) == task, sample.turns[0]
            checked[task] += 1
    assert set(checked) == {"VG", "ROC", "RC", "MIA"}


def test_reflect_items_one_per_turn_with_stable_unique_keys(tmp_path):
    train = [
        Sample(
            "ct_1",
            tmp_path / "a.png",
            "ct",
            [Turn("Where is the <ref>liver</ref>?", VG_ANSWER), Turn("Describe this image.", "CT image.")],
        ),
        Sample("ct_1", tmp_path / "a.png", "ct", [Turn("What is in <box>(1,2),(3,4)</box>?", "liver")]),
    ]
    items = reflect_items(train)
    assert [i.key for i in items] == ["ct_1#0", "ct_1#1", "ct_1#0@2"]
    assert [i.sample.task for i in items] == ["VG", "MIA", "ROC"]
    assert all(len(i.sample.turns) == 1 for i in items)
