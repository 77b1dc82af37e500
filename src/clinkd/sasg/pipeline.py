"""Selectors for :func:`clinkd.engine.generate.write_predictions`: ``select.method`` beam and sasg."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from clinkd.batching import PromptCollator
from clinkd.config import SelectConfig
from clinkd.data.records import Sample
from clinkd.images import VIEW_PIXELS
from clinkd.engine.generate import Selector, generate_responses
from clinkd.model.processor import load_image
from clinkd.sasg.candidates import generate_candidates
from clinkd.sasg.scorer import MedClipScorer, ScorerError, load_scorer
from clinkd.sasg.select import ScoredCandidate, Selection, score_candidates, select
from clinkd.sasg.views import TASK_KINDS

CLIP_DIR = "clip"  # the embedded scorer's folder inside a run


class BeamSelector:
    """Beam search, best beam only (no extra row keys): the cost baseline of SASG."""

    def __init__(self, num_beams: int):
        self.num_beams = num_beams

    def __call__(self, model, processor, collator: PromptCollator, task: str, samples: Sequence[Sample], max_new_tokens: int) -> list[tuple[str, dict]]:
        return [(response, {}) for response in generate_responses(model, processor, collator, samples, max_new_tokens, self.num_beams)]


class SasgSelector:
    """Semantic-Aware Selective Generation: N candidates per sample in one ``generate`` call per batch, all
    scored in one CLIP pass, the best calibrated score kept.

    As a :class:`~clinkd.engine.generate.Selector` it adds ``selected`` and ``candidates`` to each row;
    :meth:`rank` serves ``clinkd infer`` and the demo (candidates best first, tasks from ``sample.task``).
    """

    name = "sasg"

    def __init__(self, scorer: MedClipScorer, select_cfg: SelectConfig, crop_margin: float, seed: int = 0):
        self.scorer = scorer
        self.select_cfg = select_cfg
        self.crop_margin = crop_margin
        self.seed = seed

    def __call__(self, model, processor, collator: PromptCollator, task: str, samples: Sequence[Sample], max_new_tokens: int) -> list[tuple[str, dict]]:
        selections = self.selections(model, processor, collator, [task] * len(samples), samples, max_new_tokens)
        return [(selection.response, selection.row_extra()) for selection in selections]

    def rank(self, model, processor, collator: PromptCollator, samples: Sequence[Sample], max_new_tokens: int) -> list[list[ScoredCandidate]]:
        missing = [sample.id for sample in samples if sample.task not in TASK_KINDS]
        if missing:
            raise ValueError(f"SASG needs each sample's task (VG, ROC, RC or MIA); missing for {', '.join(missing)}")
        selections = self.selections(model, processor, collator, [sample.task for sample in samples], samples, max_new_tokens)
        return [selection.ranked() for selection in selections]

    def selections(
        self, model, processor, collator: PromptCollator, tasks: Sequence[str], samples: Sequence[Sample], max_new_tokens: int
    ) -> list[Selection]:
        candidate_lists = generate_candidates(model, processor, collator, samples, max_new_tokens, self.select_cfg, self.seed)
        scores = score_candidates(
            self.scorer,
            [load_image(sample.image, max_pixels=VIEW_PIXELS) for sample in samples],  # not the model's budget: boxes are relative
            tasks,
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


def sasg_selector(select: SelectConfig, crop_margin: float, seed: int, run_dir: Path, device: str | torch.device = "cpu") -> SasgSelector:
    """SASG configured by ``select`` (whatever ``select.method`` says), its scorer loaded from :func:`scorer_dir`."""
    scorer = load_scorer(select.scorer, scorer_dir(select, run_dir), device)
    return SasgSelector(scorer, select, crop_margin, seed)


def selector_for(
    select: SelectConfig, crop_margin: float, seed: int, run_dir: Path, device: str | torch.device = "cpu"
) -> Selector | None:
    """The :func:`~clinkd.engine.generate.write_predictions` selector of ``select.method``: ``None`` for greedy
    (plain decoding with ``predict.num_beams``), best-beam for beam, :class:`SasgSelector` for sasg."""
    if select.method == "greedy":
        return None
    if select.method == "beam":
        return BeamSelector(select.num_beams)
    return sasg_selector(select, crop_margin, seed, run_dir, device)
