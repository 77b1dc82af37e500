"""The SFT engine: supervised fine-tuning on transformers' Trainer, shared by every training stage.

Loss on assistant tokens only, freeze knobs for the vision tower / merger / LLM, cosine LR,
seeded, checkpointed every ``train.save_steps`` and resumed from the newest checkpoint when a
run is restarted, TensorBoard logs under ``<run>/logs``.
"""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch.utils.tensorboard import SummaryWriter
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from clinkd.batching import ChatExample, InputFormat, TrainCollator, collator_for
from clinkd.config import RecipeConfig, TrainConfig
from clinkd.engine.distributed import deepspeed_cpu_state, is_main_process, save_trained
from clinkd.engine.retrieval_supervision import RetrievalSupervision
from clinkd.engine.vision_cache import cached_vision
from clinkd.io import atomic_write_json, match_umask
from clinkd.model.loading import checked_from_pretrained, folder_damage
from clinkd.model.lora import ADAPTER_DIR, apply_lora, is_lora, model_parts, trainable_parameters
from clinkd.progress import RichProgressCallback, console


@dataclass(frozen=True)
class SftSettings:
    """What the SFT engine reads from a recipe: the training knobs, the seed, the model's dtype, how samples are
    shown to it, and where the TensorBoard logs go."""

    train: TrainConfig
    seed: int
    dtype: str
    input_format: InputFormat
    logs_dir: Path
    in_order: bool = False  # read the examples in the order given (a curriculum), not shuffled

    @classmethod
    def of(cls, cfg: RecipeConfig) -> SftSettings:
        return cls(cfg.train, cfg.seed, cfg.model.dtype, InputFormat.of(cfg), cfg.run_dir / "logs")


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    final_loss: float | None
    seconds: float


def apply_freeze(model, train_cfg: TrainConfig) -> dict[str, int]:
    """Freeze the requested parts, and what no part holds (Qwen3.5's MTP layer, kept but never run), and return the
    trainable parameter counts per part."""
    parts = {
        part: [p for module in modules for p in module.parameters(recurse=False)]
        for part, modules in model_parts(model).items()
    }
    parts["llm"] += list(model.lm_head.parameters())
    frozen = train_cfg.frozen_parts
    model.requires_grad_(False)  # from_pretrained leaves loaded weights trainable; only the parts are set below
    for part, params in parts.items():
        for param in params:
            param.requires_grad_(not frozen[part])
    # lm_head is tied to the embeddings: count each tensor once.
    return {
        part: sum(p.numel() for p in {id(p): p for p in params}.values() if p.requires_grad)
        for part, params in parts.items()
    }


CHECKPOINT_NAME = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")  # what the Trainer saves and resumes from


class UmaskCheckpoints(TrainerCallback):
    """Give each Trainer checkpoint's files the umask's mode (safetensors writes them 0600)."""

    def on_save(self, args, state, control, **kwargs):
        match_umask(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


def training_arguments(settings: SftSettings, output_dir: Path) -> TrainingArguments:
    train = settings.train
    on_gpu = torch.cuda.is_available()
    # DeepSpeed runs on its own accelerator (CUDA or CPU); use_cpu would bypass it.
    use_cpu = not on_gpu and train.deepspeed is None
    deepspeed_on_cpu = not on_gpu and train.deepspeed is not None
    if deepspeed_on_cpu:
        deepspeed_cpu_state()
    checkpointing = {"activation_checkpointing": True, "activation_checkpointing_kwargs": {"use_reentrant": False}}
    # transformers 5 has no warmup_ratio: TrainingArguments.get_warmup_steps reads a warmup_steps below 1 as the share
    # ceil(share × total steps), and train.warmup_ratio is below 1 (TrainConfig bounds it).
    warmup_share_of_steps = train.warmup_ratio
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        learning_rate=train.lr,
        weight_decay=train.weight_decay,
        lr_scheduler_type=train.scheduler,
        warmup_steps=warmup_share_of_steps,
        max_grad_norm=train.max_grad_norm,
        logging_steps=train.logging_steps,
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        seed=settings.seed,
        data_seed=settings.seed,
        train_sampling_strategy="sequential" if settings.in_order else "random",
        remove_unused_columns=False,
        dataloader_num_workers=train.num_workers,
        report_to=[],
        disable_tqdm=True,
        log_level="warning",
        use_cpu=use_cpu,
        bf16=on_gpu and settings.dtype == "bfloat16",
        fp16=on_gpu and settings.dtype == "float16",
        deepspeed=str(train.deepspeed) if train.deepspeed is not None else None,
        accelerator_config={"use_configured_state": True} if deepspeed_on_cpu else None,
        # Non-reentrant checkpointing works when the inputs need no grad (frozen embeddings, LoRA).
        **(checkpointing if train.gradient_checkpointing else {}),
    )


def trainer_checkpoints(checkpoints: Path) -> list[Path]:
    """The Trainer's ``checkpoint-N`` folders under ``checkpoints``, newest first."""
    steps = {
        int(match.group(1)): path
        for path in checkpoints.iterdir()
        if path.is_dir() and (match := CHECKPOINT_NAME.fullmatch(path.name))
    }
    return [steps[step] for step in sorted(steps, reverse=True)]


def resume_point(checkpoints: Path, stage: str) -> str | None:
    """The newest intact Trainer checkpoint under ``checkpoints`` (None: start afresh), announced on the console.

    A newer one with a damaged file (cut by a kill mid-save, a full disk; :func:`~clinkd.model.loading.folder_damage`)
    is said in one line and set aside as ``damaged-checkpoint-N`` (by the main process), so the Trainer never sees it.
    """
    for checkpoint in trainer_checkpoints(checkpoints) if checkpoints.is_dir() else []:
        damaged = folder_damage(checkpoint)
        if damaged is None:
            step = checkpoint.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
            console.print(f"{stage}: resuming from checkpoint {step} ({checkpoint})", markup=False, highlight=False)
            return str(checkpoint)
        aside = checkpoint.with_name(f"damaged-{checkpoint.name}")
        console.print(
            f"{stage}: {damaged}; set aside as {aside}, falling back to the previous checkpoint",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        if is_main_process():
            shutil.rmtree(aside, ignore_errors=True)
            checkpoint.rename(aside)
    return None


class ClinKDTrainer(Trainer):
    """``Trainer`` that resumes a full model's weights by their names on disk.

    transformers 5 resumes with a non-strict ``load_state_dict`` of the checkpoint's file names, but
    ``save_pretrained`` writes the hub's names (``model.layers.*``, ``visual.*``), which match none of the
    model's own, so nothing loads and training goes on from the initial weights (huggingface/transformers#43701).
    Here the checkpoint loads through :func:`clinkd.model.loading.checked_from_pretrained` (renamed, and every
    weight accounted for). Adapters (peft) and sharded engines keep transformers' own resume.
    """

    def __init__(self, *args, retrieval: RetrievalSupervision | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.retrieval = retrieval
        self._terms: dict[str, list[float]] = defaultdict(list)  # loss terms noted since the last log

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The stage's answer loss (:meth:`answer_loss`), plus the retrieval loss when ``train.retrieval_loss`` is
        on."""
        if self.retrieval is None:
            return self.answer_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs, retrieval = self.retrieval.watch(
            self.accelerator.unwrap_model(model),
            inputs,
            lambda: self.answer_loss(model, inputs, True, num_items_in_batch),
        )
        self.note_term("retrieval_loss", retrieval.item())
        loss = loss + self.retrieval.weight * retrieval * self.micro_batch_share(num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def answer_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss on the answer tokens (Trainer's CE; the KD trainer's distillation loss)."""
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def micro_batch_share(self, num_items_in_batch) -> float:
        """Scales a per-micro-batch mean to the step as the answer loss is: Trainer divides a loss by the
        accumulation steps only when it is not already normalised over the whole step."""
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None
            ) or self.compute_loss_func is not None
        return 1 / getattr(self, "current_gradient_accumulation_steps", 1) if scaled else 1.0

    def note_term(self, name: str, value: float) -> None:
        """One micro-batch's value of a loss term; the next training log shows the mean since the last one."""
        self._terms[name].append(value)

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._terms:
            logs = {**logs, **{name: sum(values) / len(values) for name, values in self._terms.items()}}
            self._terms.clear()
        super().log(logs, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        if is_lora(model) or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        loaded = checked_from_pretrained(type(model), resume_from_checkpoint, config=model.config, dtype=model.dtype)
        model.load_state_dict(loaded.state_dict())


class TrainerFactory(Protocol):
    """Builds a stage's trainer from what :func:`run_sft` prepares: :class:`ClinKDTrainer` itself, or a stage's own
    subclass with its own arguments bound (``clinkd.distill.trainer.KDTrainer.factory``)."""

    def __call__(
        self,
        *,
        model,
        args: TrainingArguments,
        train_dataset,
        data_collator,
        callbacks: list[TrainerCallback],
        retrieval: RetrievalSupervision | None,
    ) -> ClinKDTrainer: ...


def run_sft(
    settings: SftSettings,
    model,
    processor,
    examples: list[ChatExample],
    stage_dir: Path,
    *,
    make_trainer: TrainerFactory = ClinKDTrainer,
    collator=None,
    train_dataset=None,
) -> TrainResult:
    """Train ``model`` on ``examples``; the final model goes to ``stage_dir/model``.

    Stages with their own loss (distillation) pass their ``make_trainer`` (e.g. ``KDTrainer.factory(...)``), and
    their own ``collator`` and ``train_dataset`` (default: ``TrainCollator`` over ``examples``); everything else
    (arguments, LoRA or freezing, resume, saving, logs) is shared.
    """
    import time

    started = time.perf_counter()
    stage_dir.mkdir(parents=True, exist_ok=True)
    if settings.train.threads:
        torch.set_num_threads(settings.train.threads)
    lora = settings.train.lora
    if lora is not None:
        train = settings.train
        model = apply_lora(
            model,
            lora.target_modules,
            train.frozen_parts,
            rank=lora.r,
            alpha=lora.alpha,
            dropout=lora.dropout,
            gradient_checkpointing=train.gradient_checkpointing,
        )
        trainable = {"lora": trainable_parameters(model)}
    else:
        trainable = apply_freeze(model, settings.train)
    if not any(trainable.values()):
        raise ValueError("train.freeze_*: every part of the model is frozen; nothing would train")
    checkpoints = stage_dir / "checkpoints"
    if collator is None:
        collator = collator_for(TrainCollator, model, processor, settings.input_format)
    retrieval = RetrievalSupervision.from_settings(settings.train, model, processor)
    trainer = make_trainer(
        model=model,
        args=training_arguments(settings, checkpoints),
        train_dataset=examples if train_dataset is None else train_dataset,
        data_collator=collator,
        callbacks=[
            RichProgressCallback(stage_dir.name),
            TensorBoardCallback(SummaryWriter(str(settings.logs_dir / stage_dir.name))),
            UmaskCheckpoints(),
        ],
        retrieval=retrieval,
    )
    train = settings.train
    vision_fixed = train.freeze_vision_tower and train.freeze_merger  # else the cached tokens would go stale
    try:
        with cached_vision(model, train.vision_cache_mb if vision_fixed else 0) as vision_cache:
            output = trainer.train(resume_from_checkpoint=resume_point(checkpoints, stage_dir.name))
    finally:
        if retrieval is not None:
            retrieval.release(model)
    # QLoRA adapters are merged offline into the 16-bit base (clinkd.model.lora.merge_adapter_checkpoint).
    merge = lora is None or (lora.merge and lora.quantize == "none")
    model_dir = stage_dir / "model" if merge else stage_dir / ADAPTER_DIR
    save_trained(
        trainer,
        processor,
        stage_dir / "model",
        merge_lora=merge,
        adapter_path=stage_dir / ADAPTER_DIR if lora else None,
    )
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if trainer.is_world_process_zero():
        atomic_write_json(
            stage_dir / "train_log.json",
            {
                "trainable_parameters": trainable,
                "vision_cache": vision_cache and {"hits": vision_cache.hits, "misses": vision_cache.misses},
                "log_history": trainer.state.log_history,
            },
        )
    return TrainResult(model_dir, output.global_step, losses[-1] if losses else None, time.perf_counter() - started)
