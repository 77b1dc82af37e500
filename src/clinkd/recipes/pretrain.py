"""Recipe: pre-train the tiny base on the generic grounding corpus (``clinkd pretrain``, docs/pretrain.md).

    tokenizer (corpus texts + an English word list) → tiny model of ``model.size``
    → dense vision stage (tower + merger, per-token heads)          <out>/dense/{model,dense.json}
    → language stage (SFT on fresh scenes, vision frozen or not)     <out>/language/{checkpoints,model}
    → held-out grounding recall                                      <out>/heldout.jsonl
    → the base                                                       <out>/model, <out>/pretrain.json

Rerunning continues: a finished dense stage is reused, the language stage resumes from its newest checkpoint
(the scene stream is indexed, so it sees the scenes it would have seen), and stage times add up in
``<out>/stage_times.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from transformers import TrainerCallback

from clinkd.batching import InputFormat
from clinkd.boxes import convert_markup
from clinkd.config import ConfigError, RecipeConfig, dump_config
from clinkd.doctor import device_description
from clinkd.engine.sft import ClinKDTrainer, SftSettings, TrainerFactory, TrainResult, run_sft
from clinkd.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from clinkd.model.loading import is_checkpoint, load_checkpoint, save_checkpoint
from clinkd.pretrain.corpus import LOOKS, LanguageStream, tokenizer_texts
from clinkd.pretrain.dense import head_scores, train_dense
from clinkd.pretrain.heldout import HeldOut, grounding_recall, held_out_set
from clinkd.progress import console
from clinkd.recipes.inputs import build_tiny_from
from clinkd.recipes.stage_clock import STAGE_TIMES_FILE, StageClock

CURVE_FILE = "heldout.jsonl"


@dataclass
class PretrainResult:
    model_dir: Path
    record: dict  # what pretrain.json holds


def pretrain_dir(cfg: RecipeConfig) -> Path:
    return cfg.pretrain.out if cfg.pretrain.out is not None else cfg.output_dir / "pretrain"


def run_pretrain(cfg: RecipeConfig) -> PretrainResult:
    """Run (or continue) the whole pre-training into :func:`pretrain_dir`; returns the base and its record."""
    if cfg.model.path is not None:
        raise ConfigError("pretrain builds the tiny base of model.size from scratch; model.path must be null")
    settings = cfg.pretrain
    out = pretrain_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.resolved.yaml", dump_config(cfg))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    clock = StageClock(out / STAGE_TIMES_FILE)
    held_out = held_out_set(
        settings.seed, settings.eval_scenes, settings.image_size, settings.max_objects, LOOKS[settings.look]
    )
    model, processor, dense = clock.time("dense", lambda: dense_stage(cfg, out / "dense", held_out))
    language = clock.time("language", lambda: language_stage(cfg, model, processor, out, held_out))
    final = clock.time("evaluate", lambda: score_held_out(cfg, model, processor, held_out))
    append_jsonl(out / CURVE_FILE, [{"step": language.steps, **final}])
    save_checkpoint(model, processor, out / "model")
    record = {
        "settings": settings.model_dump(mode="json"),
        "retrieval_loss": {key: getattr(cfg.train, f"retrieval_{key}") for key in ("loss", "layer", "head")},
        "seed": settings.seed,
        "model": {
            "size": cfg.model.size,
            "tokenizer_vocab": cfg.model.tokenizer_vocab,
            "rope": cfg.model_dump(mode="json")["rope"],
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "steps": {"dense": dense["steps"], "language": language.steps},
        "seconds": clock.seconds,
        "hardware": hardware(),
        "final_loss": language.final_loss,
        "dense_heads": dense,
        "heldout": final,
        "heldout_curve": held_out_curve(out / CURVE_FILE),
        "names": list(LOOKS[settings.look].names),
    }
    atomic_write_json(out / "pretrain.json", record)
    return PretrainResult(out / "model", record)


def hardware() -> dict:
    """Where the run trained (the model card's hardware line)."""
    return {"device": device_description(), "torch_threads": torch.get_num_threads()}


def dense_stage(cfg: RecipeConfig, stage_dir: Path, held_out: HeldOut):
    """A fresh tiny model after the dense stage, with the heads' held-out scores; a finished stage is reused
    (it is short, so a killed one starts over)."""
    model_dir = stage_dir / "model"
    if is_checkpoint(model_dir):
        console.print(f"dense: reusing {model_dir}", markup=False, highlight=False)
        model, processor = load_checkpoint(model_dir, cfg.model.dtype)
        return model, processor, json.loads((stage_dir / "dense.json").read_text(encoding="utf-8"))
    settings = cfg.pretrain
    look = LOOKS[settings.look]
    texts = tokenizer_texts(settings.seed, settings.image_size, settings.max_objects, look=look)
    model, processor = build_tiny_from(
        cfg.model, [convert_markup(text, cfg.data.box_style) for text in texts], settings.seed, cfg.rope
    )
    heads = train_dense(
        model,
        processor,
        seed=settings.seed,
        steps=settings.dense_steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        image_size=settings.image_size,
        max_objects=settings.max_objects,
        look=look,
    )
    scores = {
        "steps": settings.dense_steps,
        **({} if heads is None else head_scores(model, processor, heads, held_out.scenes, look.names)),
    }
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stage_dir / "dense.json", scores)
    save_checkpoint(model, processor, model_dir)  # last: the model folder marks the stage finished
    if heads is not None:
        console.print(
            "dense heads on the held-out scenes: "
            + ", ".join(f"{k} {v:.3g}" for k, v in scores.items() if v is not None)
        )
    return model, processor, scores


def language_recipe(cfg: RecipeConfig, out: Path) -> RecipeConfig:
    """The recipe :func:`run_sft` trains the language stage with: pretrain's steps, batch, lr and checkpoints,
    vision frozen (see :class:`UnfreezeVision`), one scene batch per step, logs under ``out/logs``."""
    settings = cfg.pretrain
    train = cfg.train.model_copy(
        update={
            "max_steps": settings.steps,
            "batch_size": settings.batch_size,
            "grad_accum": 1,
            "lr": settings.lr,
            "save_steps": settings.save_steps,
            "freeze_vision_tower": True,
            "freeze_merger": True,
            "freeze_llm": False,
            "vision_cache_mb": 0,  # fresh scenes every step: no image comes back (and unfreeze_after trains the tower)
            "lora": None,
            "deepspeed": None,
        }
    )
    return cfg.model_copy(update={"seed": settings.seed, "train": train, "output_dir": out.parent, "name": out.name})


def language_stage(cfg: RecipeConfig, model, processor, out: Path, held_out: HeldOut) -> TrainResult:
    """SFT of the whole model on the corpus turns (vision frozen until ``unfreeze_after``), resumable."""
    settings = cfg.pretrain
    stream = LanguageStream(
        settings.seed,
        settings.steps,
        settings.batch_size,
        settings.image_size,
        settings.max_objects,
        settings.curriculum_steps,
        settings.tasks,
        LOOKS[settings.look],
    )
    # Every parameter is in the optimiser, so the vision tower can join at unfreeze_after (a frozen one gets no grad,
    # no update).
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=cfg.train.weight_decay)
    callbacks = [
        UnfreezeVision(settings.unfreeze_after),
        HeldOutCurve(settings.eval_steps, cfg, processor, held_out, out / CURVE_FILE),
    ]
    return run_sft(
        SftSettings.of(language_recipe(cfg, out)),
        model,
        processor,
        [],
        out / "language",
        make_trainer=PretrainTrainer.factory(optimiser, callbacks),
        train_dataset=stream,  # run_sft's default TrainCollator reads the turns
    )


def score_held_out(cfg: RecipeConfig, model, processor, held_out: HeldOut) -> dict:
    return grounding_recall(
        model,
        processor,
        held_out,
        batch_size=cfg.predict.batch_size,
        max_new_tokens=cfg.predict.max_new_tokens["VG"],
        input_format=InputFormat.of(cfg),
    )


def held_out_curve(path: Path) -> list[dict]:
    """The recall rows of ``heldout.jsonl`` by step (a rerun's row replaces an earlier one of the same step)."""
    return sorted({row["step"]: row for row in read_jsonl(path)}.values(), key=lambda row: row["step"])


class PretrainTrainer(ClinKDTrainer):
    """A Trainer that reads the scene stream in order (example ``i`` belongs to step ``i // batch_size``, whose
    curriculum level it was drawn at) and runs the pretrain callbacks."""

    def __init__(self, *args, extra_callbacks=(), **kwargs):
        kwargs["args"].train_sampling_strategy = "sequential"
        super().__init__(*args, **kwargs)
        for callback in extra_callbacks:
            self.add_callback(callback)

    @classmethod
    def factory(cls, optimiser: torch.optim.Optimizer, callbacks: Sequence[TrainerCallback]) -> TrainerFactory:
        """What :func:`run_sft` builds the language stage's trainer with: this optimiser (every parameter) and
        callbacks."""
        return partial(cls, optimizers=(optimiser, None), extra_callbacks=callbacks)


class UnfreezeVision(TrainerCallback):
    """Makes the vision tower and merger trainable from language step ``after`` on (None: never)."""

    def __init__(self, after: int | None):
        self.after = after

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.after is not None and state.global_step >= self.after:
            model.model.visual.requires_grad_(True)


class HeldOutCurve(TrainerCallback):
    """Every ``every`` steps (not the last: the recipe scores that), the held-out recall, appended to ``path``."""

    def __init__(self, every: int | None, cfg: RecipeConfig, processor, held_out: HeldOut, path: Path):
        self.every, self.cfg, self.processor, self.held_out, self.path = every, cfg, processor, held_out, path

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if not self.every or step % self.every or step >= state.max_steps or not state.is_world_process_zero:
            return
        scores = score_held_out(self.cfg, model, self.processor, self.held_out)
        model.train()
        append_jsonl(self.path, [{"step": step, **scores}])
        console.print(
            f"held-out grounding at step {step}: Recall@0.5 {scores['recall']:.1%} {scores['by_objects']}",
            markup=False,
            highlight=False,
        )
