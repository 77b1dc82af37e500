"""Run under ``torchrun --nproc_per_node 2`` by tests/engine/test_distributed.py (not collected by pytest).

    worker.py predict <data_dir> <model_dir> <out_dir>   write_predictions_sharded over the ranks
    worker.py teacher <model_dir> <zero3.json> <out.json> a ZeRO-3 student trainer + prepare_teacher

Rank 0 writes what the test checks; every rank must reach the end (collectives).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def predict(data_dir: str, model_dir: str, out_dir: str) -> None:
    from clinkd.config import PredictConfig
    from clinkd.data.medgrit import load_test_split
    from clinkd.engine.distributed import init_distributed, write_predictions_sharded
    from clinkd.model.loading import load_checkpoint

    init_distributed()
    model, processor = load_checkpoint(model_dir)
    tests = load_test_split(Path(data_dir), Path(data_dir) / "images")
    write_predictions_sharded(
        model,
        processor,
        tests,
        Path(out_dir),
        PredictConfig(batch_size=3, max_new_tokens={"VG": 6, "ROC": 6, "RC": 6, "MIA": 6}),
    )


def teacher(model_dir: str, deepspeed_config: str, out: str) -> None:
    from transformers import Trainer

    from clinkd.config import RecipeConfig
    from clinkd.engine.distributed import is_main_process, prepare_teacher, world_size
    from clinkd.engine.sft import SftSettings, training_arguments
    from clinkd.model.loading import load_checkpoint

    reference_model, _ = load_checkpoint(model_dir)
    torch.manual_seed(0)
    input_ids = torch.randint(20, reference_model.config.text_config.vocab_size, (2, 12))
    with torch.no_grad():
        reference = reference_model(input_ids=input_ids).logits
    full = sum(p.numel() for p in reference_model.parameters())

    cfg = RecipeConfig.model_validate({"train": {"deepspeed": deepspeed_config, "batch_size": 2, "max_steps": 1}})
    args = training_arguments(SftSettings.of(cfg), Path(out).parent / "teacher-run")
    # Loaded after the ZeRO-3 arguments exist: transformers partitions both models at load (zero.Init).
    student, _ = load_checkpoint(model_dir)
    teacher_model, _ = load_checkpoint(model_dir)
    trainer = Trainer(model=student, args=args, train_dataset=[0])
    placed = prepare_teacher(teacher_model, trainer.accelerator)
    local = sum(p.ds_tensor.numel() for p in teacher_model.parameters())
    with torch.no_grad():
        logits = placed(input_ids=input_ids).logits
    if is_main_process():
        Path(out).write_text(
            json.dumps(
                {
                    "world": world_size(),
                    "full_parameters": full,
                    "local_partition": local,
                    "max_logit_difference": (logits.float() - reference.float()).abs().max().item(),
                    "requires_grad": any(p.requires_grad for p in teacher_model.parameters()),
                }
            )
        )


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"predict": predict, "teacher": teacher}[sys.argv[1]](*sys.argv[2:])
