"""The selectors of ``clinkd predict``, ``clinkd infer`` and the demo, by name (:data:`SELECTORS`, ``select.method``):
greedy (plain decoding), beam and sasg, each a :class:`~clinkd.engine.generate.Selector`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from clinkd.batching import PromptCollator
from clinkd.config import SelectConfig
from clinkd.data.records import Sample
from clinkd.engine.generate import Choice, Selector, generate_responses
from clinkd.images import VIEW_PIXELS
from clinkd.model.processor import load_image
from clinkd.sasg.candidates import generate_candidates
from clinkd.sasg.scorer import MedClipScorer, ScorerError, load_scorer
from clinkd.sasg.select import Selection, score_candidates, select
from clinkd.sasg.views import TASK_KINDS

CLIP_DIR = "clip"  # the embedded scorer's folder inside a run


class BeamSelector:
    """Beam search, best beam only (no extra row keys): the cost baseline of SASG."""

    name = "beam"

    def __init__(self, num_beams: int):
        self.num_beams = num_beams

    def __call__(
        self, model, processor, collator: PromptCollator, task: str, samples: Sequence[Sample], max_new_tokens: int
    ) -> list[Choice]:
        return [
            Choice(response)
            for response in generate_responses(model, processor, collator, samples, max_new_tokens, self.num_beams)
        ]


class SasgSelector:
    """Semantic-Aware Selective Generation: N candidates per sample in one ``generate`` call per batch, all
    scored in one CLIP pass, the best calibrated score kept. Each choice's row gets ``selected`` and ``candidates``
    (every candidate with its scores), and its candidates ranked best first."""

    name = "sasg"

    def __init__(self, scorer: MedClipScorer, select_cfg: SelectConfig, crop_margin: float, seed: int = 0):
        self.scorer = scorer
        self.select_cfg = select_cfg
        self.crop_margin = crop_margin
        self.seed = seed

    def __call__(
        self, model, processor, collator: PromptCollator, task: str, samples: Sequence[Sample], max_new_tokens: int
    ) -> list[Choice]:
        if task not in TASK_KINDS:
            raise ValueError(f"SASG scores answers to a task of {', '.join(TASK_KINDS)}, not {task!r}")
        selections = self.selections(model, processor, collator, task, samples, max_new_tokens)
        return [
            Choice(selection.response, selection.row_extra(), tuple(selection.ranked())) for selection in selections
        ]

    def selections(
        self, model, processor, collator: PromptCollator, task: str, samples: Sequence[Sample], max_new_tokens: int
    ) -> list[Selection]:
        candidate_lists = generate_candidates(
            model, processor, collator, samples, max_new_tokens, self.select_cfg, self.seed
        )
        scores = score_candidates(
            self.scorer,
            [
                load_image(sample.image, max_pixels=VIEW_PIXELS) for sample in samples
            ],  # not the model's budget: boxes are relative
            [task] * len(samples),
            [sample.turns[0].question for sample in samples],
            [[candidate.text for candidate in candidates] for candidates in candidate_lists],
            self.crop_margin,
        )
        return [
            select(candidates, item_scores, self.select_cfg.tie_break, self.select_cfg.tie_margin)
            for candidates, item_scores in zip(candidate_lists, scores)
        ]


def scorer_dir(select: SelectConfig, run_dir: Path) -> Path:
    """``select.scorer_path``, or ``<run_dir>/clip`` for the embedded scorer."""
    if select.scorer_path is not None:
        return select.scorer_path
    if select.scorer == "embedded":
        return run_dir / CLIP_DIR
    raise ScorerError(f"select.scorer={select.scorer} needs select.scorer_path")


def sasg_selector(
    select: SelectConfig, crop_margin: float, seed: int, run_dir: Path, device: str | torch.device = "cpu"
) -> SasgSelector:
    """SASG configured by ``select`` (whatever ``select.method`` says), its scorer loaded from :func:`scorer_dir`."""
    scorer = load_scorer(select.scorer, scorer_dir(select, run_dir), device)
    return SasgSelector(scorer, select, crop_margin, seed)


def beam_selector(
    select: SelectConfig, crop_margin: float, seed: int, run_dir: Path, device: str | torch.device = "cpu"
) -> BeamSelector:
    """Beam search with ``select.num_beams``, best beam only."""
    return BeamSelector(select.num_beams)


def greedy_selector(
    select: SelectConfig, crop_margin: float, seed: int, run_dir: Path, device: str | torch.device = "cpu"
) -> None:
    """None: plain decoding (with ``predict.num_beams``)."""
    return None


# select.method → the selector it builds, from the recipe's select: block, clip.crop_margin, seed, run folder, device.
SELECTORS: dict[str, Callable[..., Selector | None]] = {
    "greedy": greedy_selector,
    "beam": beam_selector,
    "sasg": sasg_selector,
}


def selector_for(
    select: SelectConfig, crop_margin: float, seed: int, run_dir: Path, device: str | torch.device = "cpu"
) -> Selector | None:
    """The :data:`SELECTORS` entry of ``select.method``, built from ``select`` (None: plain decoding)."""
    return SELECTORS[select.method](select, crop_margin, seed, run_dir, device)
