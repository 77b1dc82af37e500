"""Semantic-Aware Selective Generation (SASG, the paper's Algorithm 1) and its Med-CLIP scorers (docs/sasg.md)."""

from clinkd.sasg.candidates import Candidate, generate_candidates, sequence_logprobs
from clinkd.sasg.clip_train import ClipPair, matching_rate, sample_pairs, train_clip
from clinkd.sasg.pipeline import SELECTORS, BeamSelector, SasgSelector, sasg_selector, scorer_dir, selector_for
from clinkd.sasg.scorer import HFClipScorer, ImagePrep, MedClipScorer, OpenClipScorer, ScorerError, load_scorer
from clinkd.sasg.select import ScoredCandidate, Selection, calibrate, choose, score_candidates, select
from clinkd.sasg.views import ClipView, answer_views, clip_text, crop

__all__ = [
    "SELECTORS",
    "BeamSelector",
    "Candidate",
    "ClipPair",
    "ClipView",
    "HFClipScorer",
    "ImagePrep",
    "MedClipScorer",
    "OpenClipScorer",
    "SasgSelector",
    "ScoredCandidate",
    "ScorerError",
    "Selection",
    "answer_views",
    "calibrate",
    "choose",
    "clip_text",
    "crop",
    "generate_candidates",
    "load_scorer",
    "matching_rate",
    "sample_pairs",
    "sasg_selector",
    "score_candidates",
    "scorer_dir",
    "select",
    "selector_for",
    "sequence_logprobs",
    "train_clip",
]
