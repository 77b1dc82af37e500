"""Selectors for :func:`clinkd.recipes.predict.run_predict` (``select.method`` beam and sasg), and the embedded CLIP stage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from clinkd.batching import PromptCollator
from clinkd.config import RecipeConfig, SelectConfig
from clinkd.data.records import Sample
from clinkd.io import atomic_write_json
from clinkd.model.processor import load_image
from clinkd.progress import console, make_progress
from clinkd.recipes.predict import Selector, generate_responses
from clinkd.sasg.candidates import generate_candidates
from clinkd.sasg.clip_train import ClipTrainResult, is_trained, matching_rate, sample_pairs, train_clip
from clinkd.sasg.scorer import HFClipScorer, MedClipScorer, ScorerError, load_scorer
from clinkd.sasg.select import ScoredCandidate, Selection, score_candidates, select
from clinkd.sasg.views import TASK_KINDS

CLIP_DIR = "clip"  # the embedded scorer's folder inside a run
HELDOUT_FILE = "heldout.json"


class BeamSelector:
    """Beam search, best beam only (no extra row keys): the cost baseline of SASG."""

    def __init__(self, num_beams: int):
        self.num_beams = num_beams

    def __call__(self, model, processor, collator: PromptCollator, task: str, samples: Sequence[Sample], max_new_tokens: int) -> list[tuple[str, dict]]:
        return [(response, {}) for response in generate_responses(model, processor, collator, samples, max_new_tokens, self.num_beams)]


class SasgSelector:
    """Semantic-Aware Selective Generation: N candidates per sample in one ``generate`` call per batch, all
    scored in one CLIP pass, the best calibrated score kept.

    As a :class:`~clinkd.recipes.predict.Selector` it adds ``selected`` and ``candidates`` to each row;
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
            [load_image(sample.image) for sample in samples],  # the original pixels: boxes are relative
            tasks,
            [sample.turns[0].question for sample in samples],
            [[candidate.text for candidate in candidates] for candidates in candidate_lists],
            self.crop_margin,
        )
        return [
            select(candidates, item_scores, self.select_cfg.tie_break, self.select_cfg.tie_margin)
            for candidates, item_scores in zip(candidate_lists, scores)
        ]


def scorer_dir(cfg: RecipeConfig) -> Path:
    """``select.scorer_path``, or ``<run>/clip`` for the embedded scorer."""
    if cfg.select.scorer_path is not None:
        return cfg.select.scorer_path
    if cfg.select.scorer == "embedded":
        return cfg.run_dir / CLIP_DIR
    raise ScorerError(f"select.scorer={cfg.select.scorer} needs select.scorer_path")


def build_selector(cfg: RecipeConfig, device: str | torch.device = "cpu") -> SasgSelector:
    """SASG configured by the recipe's ``select:`` block (whatever ``select.method`` says)."""
    scorer = load_scorer(cfg.select.scorer, scorer_dir(cfg), device)
    return SasgSelector(scorer, cfg.select, cfg.clip.crop_margin, cfg.seed)


def selector_for(cfg: RecipeConfig, device: str | torch.device = "cpu") -> Selector | None:
    """The :func:`~clinkd.recipes.predict.run_predict` selector of ``select.method``: ``None`` for greedy
    (plain decoding with ``predict.num_beams``), best-beam for beam, :class:`SasgSelector` for sasg."""
    if cfg.select.method == "greedy":
        return None
    if cfg.select.method == "beam":
        return BeamSelector(cfg.select.num_beams)
    return build_selector(cfg, device)


def run_clip_train(
    cfg: RecipeConfig, train: Sequence[Sample], tokenizer, out_dir: Path, tests: Sequence[Sample] = ()
) -> tuple[ClipTrainResult, dict[str, float]]:
    """Train the embedded CLIP (``clip.*``) on ``train``'s pairs into ``out_dir``, with a progress bar. With
    ``tests``, its held-out matching rate (:func:`~clinkd.sasg.clip_train.matching_rate`) is also measured
    and written to ``<out_dir>/heldout.json``."""
    pairs = sample_pairs(train)
    with make_progress() as progress:
        bar = progress.add_task("clip-train", total=cfg.clip.steps, info=f"{len(pairs)} pairs")
        result = train_clip(
            pairs, tokenizer, cfg.clip, out_dir, cfg.seed, lambda step, loss: progress.update(bar, completed=step, info=f"loss {loss:.3f}")
        )
    rates = {}
    if tests:
        rates = matching_rate(HFClipScorer.from_dir(out_dir), sample_pairs(tests), cfg.clip.crop_margin, cfg.seed)
        atomic_write_json(Path(out_dir) / HELDOUT_FILE, rates)
    return result, rates


def ensure_embedded_clip(cfg: RecipeConfig, train: Sequence[Sample], tokenizer, tests: Sequence[Sample] = ()) -> Path | None:
    """:func:`run_clip_train` into ``<run>/clip`` when SASG will use the embedded scorer and no finished
    one is there; its directory, or ``None`` when SASG or the embedded scorer is not selected."""
    if cfg.select.method != "sasg" or cfg.select.scorer != "embedded":
        return None
    out_dir = scorer_dir(cfg)
    if is_trained(out_dir):
        console.print(f"[green]clip: reusing {out_dir}")
    else:
        run_clip_train(cfg, train, tokenizer, out_dir, tests)
    return out_dir
