"""Recipe: a trained model's answers to the test files of ``data.dir`` (``clinkd predict``), plain or selected."""

from __future__ import annotations

from pathlib import Path

from clinkd.config import RecipeConfig
from clinkd.data.validation import ISSUES_FILE
from clinkd.engine.generate import write_predictions
from clinkd.model.loading import load_checkpoint
from clinkd.recipes.inputs import load_dataset
from clinkd.sasg.pipeline import selector_for


def run_predict(cfg: RecipeConfig, model_dir: Path, out_dir: Path) -> dict[str, Path]:
    """``<out_dir>/<TASK>.jsonl`` for every task (resumable), through ``select.method``'s selector."""
    dataset = load_dataset(cfg, with_train=False, issues_file=out_dir / ISSUES_FILE)  # data problems before the slow load
    model, processor = load_checkpoint(model_dir, cfg.model.dtype)
    selector = selector_for(cfg.select, cfg.clip.crop_margin, cfg.seed, cfg.run_dir, model.device)
    return write_predictions(model, processor, dataset.tests, out_dir, cfg.predict, cfg.data.box_style, cfg.model.square_size, selector)
