"""Recipe: plain supervised fine-tuning from the initial model (``clinkd train``, and ``sft/`` in ``clinkd run``)."""

from __future__ import annotations

from pathlib import Path

from clinkd.batching import training_examples
from clinkd.config import RecipeConfig
from clinkd.data.records import Sample
from clinkd.engine.sft import SftSettings, TrainResult, run_sft
from clinkd.model.loading import is_checkpoint, load_checkpoint
from clinkd.progress import console
from clinkd.recipes.inputs import initial_model, prepared_dataset


def run_train(cfg: RecipeConfig) -> TrainResult:
    """Train the initial model on the training records into ``<run>/sft`` (resumes from its checkpoints)."""
    dataset = prepared_dataset(cfg)
    model, processor = initial_model(cfg, dataset.train)
    return run_sft(
        SftSettings.of(cfg),
        model,
        processor,
        training_examples(dataset.train, cfg.data.train_turns),
        cfg.run_dir / "sft",
    )


def sft_model(cfg: RecipeConfig, train: list[Sample], stage_dir: Path):
    """Plain SFT from the initial model into ``stage_dir/model``; reused when it is already there."""
    model_dir = stage_dir / "model"
    if is_checkpoint(model_dir):
        console.print(f"[green]sft: reusing {model_dir}")
        return load_checkpoint(model_dir, cfg.model.dtype)
    model, processor = initial_model(cfg, train)
    result = run_sft(SftSettings.of(cfg), model, processor, training_examples(train, cfg.data.train_turns), stage_dir)
    if cfg.train.lora is not None:  # the object in memory carries unmerged adapters: use what was saved
        return load_checkpoint(result.model_dir, cfg.model.dtype)
    return model, processor
