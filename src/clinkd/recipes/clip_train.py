"""Recipe: train SASG's embedded Med-CLIP on the run's own image–text pairs (``clinkd clip-train``, ``clip/`` in a
run)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clinkd.config import RecipeConfig
from clinkd.data.records import Sample
from clinkd.io import atomic_write_json
from clinkd.model.tokenizer import train_tokenizer
from clinkd.progress import console, make_progress
from clinkd.recipes.inputs import tokenizer_corpus
from clinkd.sasg.clip_train import ClipTrainResult, is_trained, matching_rate, sample_pairs, train_clip
from clinkd.sasg.pipeline import scorer_dir
from clinkd.sasg.scorer import HFClipScorer

HELDOUT_FILE = "heldout.json"


def text_tokenizer(cfg: RecipeConfig, train: Sequence[Sample], source: Path | None = None):
    """The tokenizer the CLIP reuses: ``source``'s, else ``<run>/sft/model``'s when there, else a BPE trained on
    ``train``."""
    from transformers import AutoTokenizer

    checkpoint = source or (cfg.run_dir / "sft" / "model")
    if (checkpoint / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
    if source is not None:
        raise FileNotFoundError(f"--tokenizer {source}: no tokenizer_config.json there")
    return train_tokenizer(tokenizer_corpus(train, cfg.data.box_style), cfg.model.tokenizer_vocab)


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
            pairs,
            tokenizer,
            cfg.clip,
            out_dir,
            cfg.seed,
            lambda step, loss: progress.update(bar, completed=step, info=f"loss {loss:.3f}"),
        )
    rates = {}
    if tests:
        rates = matching_rate(HFClipScorer.from_dir(out_dir), sample_pairs(tests), cfg.clip.crop_margin, cfg.seed)
        atomic_write_json(Path(out_dir) / HELDOUT_FILE, rates)
    return result, rates


def ensure_embedded_clip(
    cfg: RecipeConfig, train: Sequence[Sample], tokenizer, tests: Sequence[Sample] = ()
) -> Path | None:
    """:func:`run_clip_train` into ``<run>/clip`` when SASG will use the embedded scorer and no finished
    one is there; its directory, or ``None`` when SASG or the embedded scorer is not selected."""
    if cfg.select.method != "sasg" or cfg.select.scorer != "embedded":
        return None
    out_dir = scorer_dir(cfg.select, cfg.run_dir)
    if is_trained(out_dir):
        console.print(f"[green]clip: reusing {out_dir}")
    else:
        run_clip_train(cfg, train, tokenizer, out_dir, tests)
    return out_dir
