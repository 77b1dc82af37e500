"""Recipe: batched generation on the per-task test files, to resumable JSONL.

Each task writes ``<out>/<TASK>.jsonl``, one line per test record with the fixed schema of
:data:`clinkd.data.records.PREDICTION_FIELDS` plus ``index`` (the record's row in its test file).
Rows are appended and fsynced batch by batch; a rerun skips the rows already written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from clinkd.batching import PromptCollator
from clinkd.config import PredictConfig
from clinkd.data.records import Prediction, Sample
from clinkd.io import append_jsonl, read_jsonl
from clinkd.progress import make_progress

# Chat scaffolding that ends an answer; box and ref tokens are kept in the response.
STOP_MARKERS = ("<|im_end|>", "<|endoftext|>")


def finished_indices(path: Path) -> set[int]:
    return {row["index"] for row in read_jsonl(path)} if path.is_file() else set()


def clean_generation(text: str) -> str:
    """Cut a decoded continuation at the first stop marker."""
    for marker in STOP_MARKERS:
        text = text.split(marker, 1)[0]
    return text.strip()


@torch.inference_mode()
def generate_responses(model, processor, collator: PromptCollator, samples: Sequence[Sample], max_new_tokens: int, num_beams: int = 1) -> list[str]:
    """Greedy (or beam) answers for one batch of one-turn samples."""
    batch = {key: value.to(model.device) for key, value in collator(samples).items()}
    tokenizer = processor.tokenizer
    output = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=num_beams,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    continuations = output[:, batch["input_ids"].shape[1] :]
    return [clean_generation(text) for text in tokenizer.batch_decode(continuations, skip_special_tokens=False)]


def run_predict(
    model,
    processor,
    tests: dict[str, list[Sample]],
    out_dir: Path,
    predict_cfg: PredictConfig,
    box_style: str = "qwen2-vl",
    square_size: int | None = None,
) -> dict[str, Path]:
    """Predict every task's test samples; returns the JSONL path per task."""
    model.eval()
    collator = PromptCollator(processor, box_style, square_size)
    paths = {}
    with make_progress() as progress:
        for task, samples in tests.items():
            path = out_dir / f"{task}.jsonl"
            paths[task] = path
            done = finished_indices(path)
            todo = [(index, sample) for index, sample in enumerate(samples) if index not in done]
            bar = progress.add_task(f"predict {task}", total=len(samples), completed=len(done), info="")
            for start in range(0, len(todo), predict_cfg.batch_size):
                chunk = todo[start : start + predict_cfg.batch_size]
                responses = generate_responses(
                    model, processor, collator, [s for _, s in chunk], predict_cfg.max_new_tokens[task], predict_cfg.num_beams
                )
                append_jsonl(path, (_row(task, index, sample, response) for (index, sample), response in zip(chunk, responses)))
                progress.advance(bar, len(chunk))
    return paths


def _row(task: str, index: int, sample: Sample, response: str) -> dict:
    turn = sample.turns[0]
    prediction = Prediction(
        id=sample.id,
        image=sample.image.name,
        task=task,
        modality=sample.modality,
        question=turn.question,
        annotation=turn.answer,
        response=response,
        extra={"index": index},
    )
    return prediction.to_json()
