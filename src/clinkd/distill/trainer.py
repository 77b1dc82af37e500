"""The student's trainer: transformers' Trainer with the distillation loss, against an online or a cached teacher."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch

from clinkd.batching import ChatExample, collator_for
from clinkd.distill.batches import EXAMPLE_INDEX, IndexedCollator, batch_position_ids, indexed, model_inputs
from clinkd.distill.teacher_cache import TeacherCache
from clinkd.engine.distributed import prepare_teacher
from clinkd.engine.sft import ClinKDTrainer, SftSettings, TrainerFactory, TrainResult, run_sft
from clinkd.losses import KDLossConfig, answer_mask, distillation_loss
from clinkd.model.rope import rope_strategy_of

log = logging.getLogger(__name__)


def output_vocab_size(model) -> int:
    """Rows of the model's output head (its logits' last dimension)."""
    return model.get_output_embeddings().weight.shape[0]


def check_teacher_vocab(teacher_vocab: int, student_vocab: int, tokenizer_size: int) -> bool:
    """Whether the teacher's logits must be sliced to the student's vocabulary; logs the check when they must.

    Slicing drops the teacher ids ≥ ``student_vocab``. That is only sound when the tokenizer never emits
    them (``tokenizer_size <= student_vocab``: Qwen2-VL's extra head rows are padding), else ValueError.
    A teacher narrower than the student raises ValueError too.
    """
    if teacher_vocab < student_vocab:
        raise ValueError(f"teacher vocabulary ({teacher_vocab}) is narrower than the student's ({student_vocab})")
    if teacher_vocab == student_vocab:
        return False
    if tokenizer_size > student_vocab:
        raise ValueError(
            f"teacher vocabulary ({teacher_vocab}) is wider than the student's ({student_vocab}) and the tokenizer "
            f"has {tokenizer_size} ids: slicing would drop real tokens"
        )
    log.warning(
        "teacher vocabulary %d > student's %d: teacher logits are sliced to ids [0, %d) before the softmax "
        "(checked: the tokenizer's %d ids all lie below %d)",
        teacher_vocab, student_vocab, student_vocab, tokenizer_size, student_vocab,
    )
    return True


class KDTrainer(ClinKDTrainer):
    """``Trainer`` whose answer loss is ``clinkd.losses``' distillation loss; only ``answer_loss`` changes
    (its KD and CE terms go to the training logs through ``note_term``).

    Exactly one teacher source:
    - ``teacher``: a model run in this process on the student's own batch (input ids, pixels, grid and
      position ids, computed once from the student's position strategy), frozen, in eval mode and placed
      like the student (``clinkd.engine.distributed.prepare_teacher``: same device, or sharded under ZeRO-3/FSDP);
    - ``teacher_cache``: a :class:`TeacherCache` whose rows are looked up by the batch's ``example_index``.

    Reduction: with ``kd_config.reduction == "mean"`` and the Trainer's ``num_items_in_batch`` (the answer
    tokens of all micro-batches of one optimiser step), CE and KD are both divided by that global count, so
    gradient accumulation gives the loss of the whole step (across processes too, scaled back up as
    ``Trainer.compute_loss`` does). With ``"sum"`` KD is summed over the micro-batch's answer tokens and the
    Trainer averages micro-batches, as the official snippet would under HF's Trainer.
    """

    def __init__(
        self, *args, kd_config: KDLossConfig, teacher=None, teacher_cache: TeacherCache | None = None, **kwargs
    ):
        if (teacher is None) == (teacher_cache is None):
            raise ValueError("KDTrainer needs exactly one of teacher and teacher_cache")
        super().__init__(*args, **kwargs)
        self.kd_config = kd_config
        self.teacher_cache = teacher_cache
        self.teacher = None if teacher is None else prepare_teacher(teacher, self.accelerator)

    @classmethod
    def factory(
        cls, kd_config: KDLossConfig, *, teacher=None, teacher_cache: TeacherCache | None = None
    ) -> TrainerFactory:
        """What :func:`~clinkd.engine.sft.run_sft` builds its trainer with: KD trainers of this loss and teacher."""
        return partial(cls, kd_config=kd_config, teacher=teacher, teacher_cache=teacher_cache)

    def teacher_rows(self, example_index: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached rows of the batch's examples, after checking each example's row count against its labels."""
        examples = example_index.tolist()
        expected = answer_mask(labels, self.kd_config).sum(dim=1).tolist()
        for example, count in zip(examples, expected):
            cached = self.teacher_cache.row_count(example)
            if cached != count:
                raise ValueError(
                    f"teacher cache {self.teacher_cache.cache_dir}: example {example} has {cached} cached answer rows "
                    f"but its labels select {count}; the cache does not belong to these examples"
                )
        indices, logprobs = self.teacher_cache.rows(examples)
        return indices.to(labels.device), logprobs.to(labels.device)

    def answer_loss(self, model, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None):
        cfg = self.kd_config
        inputs = dict(inputs)
        example_index = inputs.pop(EXAMPLE_INDEX)
        labels = inputs.pop("labels")
        student = self.accelerator.unwrap_model(model)
        position_ids = batch_position_ids(
            inputs, rope_strategy_of(student.config), student.config.vision_config.spatial_merge_size
        )
        global_mean = cfg.reduction == "mean" and num_items_in_batch is not None
        ce_kwargs = {"num_items_in_batch": num_items_in_batch} if global_mean else {}
        outputs = model(**model_inputs(inputs), labels=labels, position_ids=position_ids, **ce_kwargs)
        if self.teacher is not None:
            with torch.no_grad():
                teacher = {"teacher_logits": self.teacher(**model_inputs(inputs), position_ids=position_ids).logits}
        else:
            teacher = {"topk": self.teacher_rows(example_index, labels)}
        step_tokens = int(num_items_in_batch) if global_mean else None  # None: the micro-batch's own answer tokens
        parts = distillation_loss(outputs.logits, labels, outputs.loss, cfg, **teacher, step_tokens=step_tokens)
        n_tokens = parts["n_tokens"]
        step_tokens = n_tokens if step_tokens is None else step_tokens
        loss = parts["loss"]
        if global_mean and self.args.average_tokens_across_devices:
            # As Trainer.compute_loss: the count spans all processes, and DDP averages their gradients.
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        # Trainer divides by the accumulation steps only a loss not already normalised over the whole step.
        self.loss_is_scaled_for_ga = global_mean
        if model.training:
            # Logged in the micro-batch's own reduction: per answer token for reduction="mean", KD summed for
            # "sum" (CE is then the model's per-token mean).
            to_micro_batch = step_tokens / max(n_tokens, 1)
            self.note_term("kd", parts["kd"].item() * to_micro_batch)
            self.note_term("ce", outputs.loss.item() * to_micro_batch)
        return (loss, outputs) if return_outputs else loss


def train_student(
    settings: SftSettings,
    model,
    processor,
    examples: list[ChatExample],
    stage_dir: Path,
    kd_config: KDLossConfig,
    *,
    teacher=None,
    teacher_cache: TeacherCache | None = None,
) -> TrainResult:
    """:func:`clinkd.engine.sft.run_sft` with the :class:`KDTrainer` and the :class:`IndexedCollator`: the same
    training arguments, LoRA or freezing, box convention, checkpoint resume and outputs."""
    return run_sft(
        settings,
        model,
        processor,
        examples,
        stage_dir,
        make_trainer=KDTrainer.factory(kd_config, teacher=teacher, teacher_cache=teacher_cache),
        collator=collator_for(IndexedCollator, model, processor, settings.input_format),
        train_dataset=indexed(examples),
    )
