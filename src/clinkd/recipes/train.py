"""Recipe: supervised fine-tuning (SFT) on transformers' Trainer.

Loss on assistant tokens only, freeze knobs for the vision tower / merger / LLM, cosine LR,
seeded, checkpointed every ``train.save_steps`` and resumed from the newest checkpoint when a
run is restarted, TensorBoard logs under ``<run>/logs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from transformers import Trainer, TrainingArguments
from transformers.integrations import TensorBoardCallback
from transformers.trainer_utils import get_last_checkpoint

from clinkd.batching import ChatExample, TrainCollator
from clinkd.config import RecipeConfig, TrainConfig
from clinkd.io import atomic_write_json
from clinkd.model.loading import save_checkpoint
from clinkd.progress import RichProgressCallback


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    final_loss: float | None
    seconds: float


def apply_freeze(model, train_cfg: TrainConfig) -> dict[str, int]:
    """Freeze the requested parts and return the trainable parameter counts per part."""
    parts = {
        "vision_tower": [p for n, p in model.model.visual.named_parameters() if not n.startswith("merger.")],
        "merger": list(model.model.visual.merger.parameters()),
        "llm": list(model.model.language_model.parameters()) + list(model.lm_head.parameters()),
    }
    frozen = {"vision_tower": train_cfg.freeze_vision_tower, "merger": train_cfg.freeze_merger, "llm": train_cfg.freeze_llm}
    for part, params in parts.items():
        for param in params:
            param.requires_grad_(not frozen[part])
    # lm_head is tied to the embeddings: count each tensor once.
    return {part: sum(p.numel() for p in {id(p): p for p in params}.values() if p.requires_grad) for part, params in parts.items()}


def training_arguments(cfg: RecipeConfig, output_dir: Path) -> TrainingArguments:
    train = cfg.train
    on_gpu = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        learning_rate=train.lr,
        weight_decay=train.weight_decay,
        lr_scheduler_type=train.scheduler,
        warmup_steps=train.warmup_ratio,  # a float below 1 is a ratio of the total steps
        max_grad_norm=train.max_grad_norm,
        logging_steps=train.logging_steps,
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,
        dataloader_num_workers=train.num_workers,
        report_to=[],
        disable_tqdm=True,
        log_level="warning",
        use_cpu=not on_gpu,
        bf16=on_gpu and cfg.model.dtype == "bfloat16",
        fp16=on_gpu and cfg.model.dtype == "float16",
    )


def run_sft(cfg: RecipeConfig, model, processor, examples: list[ChatExample], stage_dir: Path) -> TrainResult:
    """Train ``model`` on ``examples``; the final model goes to ``stage_dir/model``."""
    import time

    started = time.perf_counter()
    stage_dir.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    trainable = apply_freeze(model, cfg.train)
    if not any(trainable.values()):
        raise ValueError("train.freeze_*: every part of the model is frozen; nothing would train")
    checkpoints = stage_dir / "checkpoints"
    trainer = Trainer(
        model=model,
        args=training_arguments(cfg, checkpoints),
        train_dataset=examples,
        data_collator=TrainCollator(processor, cfg.data.box_style, cfg.model.square_size),
        callbacks=[RichProgressCallback("train"), TensorBoardCallback(SummaryWriter(str(cfg.run_dir / "logs" / stage_dir.name)))],
    )
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    output = trainer.train(resume_from_checkpoint=resume)
    model_dir = stage_dir / "model"
    save_checkpoint(trainer.model, processor, model_dir)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    atomic_write_json(stage_dir / "train_log.json", {"trainable_parameters": trainable, "log_history": trainer.state.log_history})
    return TrainResult(model_dir, output.global_step, losses[-1] if losses else None, time.perf_counter() - started)
