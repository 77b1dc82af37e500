"""The held-out check of ``clinkd pretrain``: greedy grounding on a fixed, seeded set of corpus scenes.

Scene ``i`` of the set comes from the ``heldout`` stream (never trained on) with ``U{1..max_objects}`` objects and
one grounding turn. Answers are generated exactly as ``clinkd predict`` does (:func:`generate_responses`) and
scored with the benchmark's VG rule (:func:`clinkd.metrics.rules.score_grounding` after
:func:`clinkd.metrics.cleanup.clean_response`: a hit is IoU > 0.5). Recall is also given per object count
(one object needs no choice, more need the name), with the share of boxes on another object and the centre
box's recall (the benchmark's trivial baseline) beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clinkd.batching import InputFormat, PromptCollator, collator_for
from clinkd.boxes import BoxStyle, parse_boxes
from clinkd.data.records import Sample
from clinkd.engine.generate import generate_responses
from clinkd.metrics.baselines import CENTRE_BOX
from clinkd.metrics.cleanup import clean_response
from clinkd.metrics.rules import score_grounding
from clinkd.pretrain.corpus import COLOUR, CorpusLook, CorpusScene, draw_scene, make_turn, png, scene_rng


@dataclass(frozen=True)
class HeldOut:
    """The held-out scenes and, for each, a one-turn grounding sample (its image an in-memory PNG)."""

    scenes: list[CorpusScene]
    samples: list[Sample]


def held_out_set(seed: int, count: int, image_size: int, max_objects: int, look: CorpusLook = COLOUR) -> HeldOut:
    scenes, samples = [], []
    for index in range(count):
        rng = scene_rng(seed, "heldout", index)
        scene = draw_scene(rng, image_size, int(rng.integers(1, max_objects + 1)), look)
        scenes.append(scene)
        samples.append(
            Sample(
                f"heldout-{index}", png(scene.pixels), "", [make_turn("grounding", scene.objects, rng, look)], task="VG"
            )
        )
    return HeldOut(scenes, samples)


def grounding_recall(
    model, processor, held_out: HeldOut, *, batch_size: int, max_new_tokens: int, input_format: InputFormat
) -> dict:
    """Scores of greedy answers (the model is left in eval mode): ``recall`` (hits / scenes), ``by_objects``
    (recall per object count), ``other_object`` (share of answers whose box hits an object other than the one
    asked: localised, wrongly chosen) and ``centre_box`` (the recall of the fixed centre box, a floor)."""
    model.eval()
    collator = collator_for(PromptCollator, model, processor, input_format)
    responses = []
    for start in range(0, len(held_out.samples), batch_size):
        chunk = held_out.samples[start : start + batch_size]
        responses += [
            clean_response(text) for text in generate_responses(model, processor, collator, chunk, max_new_tokens)
        ]
    asked = [sample.turns[0].answer for sample in held_out.samples]
    hits = np.array([_hit(truth, response) for truth, response in zip(asked, responses)], dtype=float)
    other = [
        any(
            _hit(obj.box.to_text(BoxStyle.QWEN_VL), response)
            for obj in scene.objects
            if obj.box not in parse_boxes(truth)
        )
        for scene, truth, response in zip(held_out.scenes, asked, responses)
    ]
    counts = np.array([len(scene.objects) for scene in held_out.scenes])
    return {
        "recall": float(hits.mean()),
        "scenes": len(hits),
        "by_objects": {int(count): float(hits[counts == count].mean()) for count in np.unique(counts)},
        "other_object": float(np.mean(other)),
        "centre_box": float(np.mean([_hit(truth, CENTRE_BOX.to_text(BoxStyle.QWEN_VL)) for truth in asked])),
    }


def _hit(truth: str, response: str) -> bool:
    """The benchmark's VG rule: some box of ``response`` has IoU > 0.5 with the box of ``truth``."""
    return score_grounding(truth, response).hits > 0
