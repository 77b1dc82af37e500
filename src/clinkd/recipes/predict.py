"""Recipe: a trained model's answers to the test files of ``data.dir`` (``clinkd predict``), plain or selected, or
a served model's (``clinkd predict --endpoint``)."""

from __future__ import annotations

from pathlib import Path

from clinkd.batching import InputFormat
from clinkd.config import RecipeConfig
from clinkd.data.validation import ISSUES_FILE
from clinkd.endpoint import ChatEndpoint
from clinkd.engine.generate import write_predictions
from clinkd.engine.served import ServedModel, write_served_predictions
from clinkd.model.loading import load_checkpoint
from clinkd.recipes.inputs import load_dataset
from clinkd.sasg.pipeline import selector_for


def run_predict(cfg: RecipeConfig, model_dir: Path, out_dir: Path) -> dict[str, Path]:
    """``<out_dir>/<TASK>.jsonl`` for every task (resumable), through ``select.method``'s selector."""
    dataset = load_dataset(
        cfg, with_train=False, issues_file=out_dir / ISSUES_FILE
    )  # data problems before the slow load
    model, processor = load_checkpoint(model_dir, cfg.model.dtype)
    selector = selector_for(cfg.select, cfg.clip.crop_margin, cfg.seed, cfg.run_dir, model.device)
    return write_predictions(model, processor, dataset.tests, out_dir, cfg.predict, InputFormat.of(cfg), selector)


def run_predict_served(cfg: RecipeConfig, out_dir: Path) -> tuple[dict[str, Path], dict]:
    """``<out_dir>/<TASK>.jsonl`` for every task (resumable) from the model at ``predict.endpoint``, and the run record
    (``served.json``)."""
    dataset = load_dataset(cfg, with_train=False, issues_file=out_dir / ISSUES_FILE)
    endpoint = ChatEndpoint.from_config(
        cfg.predict.endpoint, "predict.endpoint", allow_empty=True
    )  # an empty answer scores as one
    served = ServedModel(endpoint, cfg.predict.endpoint, cfg.predict.max_new_tokens, InputFormat.of(cfg))
    try:
        return write_served_predictions(served, dataset.tests, out_dir)
    finally:
        endpoint.close()
