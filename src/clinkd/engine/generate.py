"""The generation engine: neutral decoding, batched answers, and per-task predictions to resumable JSONL.

Each task writes ``<out>/<TASK>.jsonl``, one line per test record with the fixed schema of
:data:`clinkd.data.records.PREDICTION_FIELDS` plus ``index`` (the record's position in the task's samples).
Rows are appended and fsynced batch by batch; a rerun skips the rows already written, matched to the
input by record id, question and answer (not by position), so a record fixed or added between runs is
predicted once and the others are not redone. A written row that matches no input record (the record was
removed, or its question or answer changed) stops the rerun with a DataError naming the file and line:
delete the file, or predict into another folder. When positions moved, the finished file is rewritten in
input order with fresh ``index`` values.
A :class:`Selector` (beam search or SASG, ``clinkd.sasg.pipeline.SELECTORS``) may replace plain decoding; the keys its
:class:`Choice` holds per sample (SASG: every candidate with its scores) are added to that sample's row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from clinkd.batching import InputFormat, PromptCollator, collator_for
from clinkd.chat import TURN_END
from clinkd.config import PredictConfig
from clinkd.data.records import Prediction, Sample
from clinkd.data.validation import DataError
from clinkd.io import append_jsonl, atomic_write_jsonl, numbered_jsonl, read_jsonl
from clinkd.metrics.cleanup import strip_chat_tokens
from clinkd.progress import make_progress

# generate() fills every setting it is not given from the checkpoint's generation_config.json (Qwen2.5-VL-Instruct:
# repetition_penalty 1.05; Qwen2-VL: top_k 1, top_p 0.001): the scored decoding must not depend on it. These are
# transformers' own defaults, so greedy decoding raises no "flag is not valid" warning either.
NEUTRAL_DECODING = {
    "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "length_penalty": 1.0, "typical_p": 1.0,
    "temperature": 1.0, "top_p": 1.0, "top_k": 50,
}


def decoding(**settings) -> dict:
    """``generate`` keyword arguments: ``settings`` over :data:`NEUTRAL_DECODING`."""
    return {**NEUTRAL_DECODING, **settings}


def predictions_complete(path: Path, total: int, *, exact: bool = False) -> bool:
    """Whether ``path`` exists with a row for every index ``0..total-1``; with ``exact``, and for no other index.

    A merged file must match its input exactly (``exact``); a pseudo-label file may hold rows past the turns drawn now.
    """
    if not path.is_file():
        return False
    indices, wanted = {row["index"] for row in read_jsonl(path)}, set(range(total))
    return indices == wanted if exact else indices >= wanted


def _sample_key(sample: Sample) -> tuple:
    return sample.id, sample.turns[0].question, sample.turns[0].answer


def _row_key(row) -> tuple:
    return tuple(row.get(key) for key in ("id", "question", "annotation")) if isinstance(row, dict) else (None,) * 3


def written_rows(path: Path, samples: Sequence[Sample]) -> dict[int, dict]:
    """The rows already in ``path``, by the position of the sample each answers; a row answering none raises
    DataError."""
    waiting: dict[tuple, list[int]] = {}
    for index, sample in enumerate(samples):
        waiting.setdefault(_sample_key(sample), []).append(index)
    rows = {}
    for number, row in numbered_jsonl(path) if path.is_file() else ():
        positions = waiting.get(_row_key(row))
        if not positions:
            raise DataError(
                f"{path}:{number}: this row (id {_row_key(row)[0]!r}) answers no record of the input: removed, or its "
                f"question or answer changed since it was written; delete {path} or predict into another folder"
            )
        rows[positions.pop(0)] = row
    return rows


def pending_samples(path: Path, samples: Sequence[Sample]) -> list[tuple[int, Sample]]:
    """``(position, sample)`` of every sample without a row in ``path`` yet (:func:`written_rows`)."""
    done = written_rows(path, samples)
    return [(index, sample) for index, sample in enumerate(samples) if index not in done]


def renumber(path: Path, samples: Sequence[Sample]) -> None:
    """Rewrite a finished file in input order with ``index`` = position, when the input moved between runs or the
    rows were written out of order (served answers, :mod:`clinkd.engine.served`, are written as they arrive)."""
    rows = written_rows(path, samples)
    if list(rows) != sorted(rows) or any(row.get("index") != index for index, row in rows.items()):
        atomic_write_jsonl(path, ({**rows[index], "index": index} for index in sorted(rows)))


def clean_generation(text: str) -> str:
    """Cut a decoded continuation at the first end-of-turn token; box and ref tokens are kept."""
    return strip_chat_tokens(text).strip()


def _generate(model, processor, collator: PromptCollator, samples: Sequence[Sample], max_new_tokens: int, **settings):
    """``(output, prompt length)`` of ``model.generate`` on one batch, with neutral decoding and ``settings``."""
    batch = {key: value.to(model.device) for key, value in collator(samples).items()}
    tokenizer = processor.tokenizer
    output = model.generate(
        **batch,
        **decoding(**settings),
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(TURN_END),
    )
    return output, batch["input_ids"].shape[1]


def _texts(processor, collator: PromptCollator, continuations: torch.Tensor, samples: Sequence[Sample]) -> list[str]:
    texts = processor.tokenizer.batch_decode(continuations, skip_special_tokens=False)
    return [collator.relative(clean_generation(text), sample) for text, sample in zip(texts, samples)]


@torch.inference_mode()
def generate_responses(
    model, processor, collator: PromptCollator, samples: Sequence[Sample], max_new_tokens: int, num_beams: int = 1
) -> list[str]:
    """Greedy (or beam) answers for one batch of one-turn samples, boxes on the 0–1000 scale."""
    output, prompt = _generate(
        model, processor, collator, samples, max_new_tokens, do_sample=False, num_beams=num_beams
    )
    return _texts(processor, collator, output[:, prompt:], samples)


@torch.inference_mode()
def generate_with_margins(
    model, processor, collator: PromptCollator, samples: Sequence[Sample], max_new_tokens: int
) -> list[tuple[str, dict]]:
    """Greedy answers, each with ``{"margin": m}``: the mean over its generated tokens (up to and including the end
    of turn) of the top-1 minus the top-2 next-token probability, the model's confidence in its own answer."""
    output, prompt = _generate(
        model,
        processor,
        collator,
        samples,
        max_new_tokens,
        do_sample=False,
        num_beams=1,
        output_logits=True,
        return_dict_in_generate=True,
    )
    continuations = output.sequences[:, prompt:]
    margins = answer_margins(
        torch.stack(output.logits, dim=1), continuations, processor.tokenizer.convert_tokens_to_ids(TURN_END)
    )
    return [
        (text, {"margin": margin}) for text, margin in zip(_texts(processor, collator, continuations, samples), margins)
    ]


def answer_margins(logits: torch.Tensor, tokens: torch.Tensor, end_id: int) -> list[float]:
    """Per row of ``logits`` ``(B, T, V)``: the mean of ``p₁ − p₂`` (the two largest softmax probabilities) over the
    steps up to and including the first ``end_id`` of ``tokens`` ``(B, T)`` (all ``T`` steps when it never ends)."""
    top = logits.float().softmax(dim=-1).topk(2, dim=-1).values
    margin = top[..., 0] - top[..., 1]
    ended = (tokens == end_id).int().cumsum(dim=1)
    keep = (ended == 0) | ((ended == 1) & (tokens == end_id))  # before the end, and the end itself
    return ((margin * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)).tolist()


@dataclass(frozen=True)
class Choice:
    """A selector's answer to one sample: the ``response``, the keys it adds to the sample's prediction ``row``, and
    the candidates it chose among, ``ranked`` best first (each with ``text: str`` and ``score: float``, ``-inf`` for
    an invalid one; empty when it ranks none)."""

    response: str
    row: dict = field(default_factory=dict)
    ranked: tuple[Any, ...] = ()


class Selector(Protocol):
    """Chooses each sample's response for one batch of ``task`` in place of plain decoding: the one interface of
    ``clinkd predict``, ``clinkd infer`` and the demo (``clinkd.sasg.pipeline.SELECTORS`` names them)."""

    name: str

    def __call__(
        self, model, processor, collator: PromptCollator, task: str, samples: Sequence[Sample], max_new_tokens: int
    ) -> list[Choice]: ...


def write_predictions(
    model,
    processor,
    tests: dict[str, list[Sample]],
    out_dir: Path,
    predict_cfg: PredictConfig,
    input_format: InputFormat = InputFormat(),
    selector: Selector | None = None,
) -> dict[str, Path]:
    """Predict every task's test samples, shown in ``input_format`` (plain decoding, or through ``selector``); returns
    the JSONL path per task."""
    model.eval()
    # Qwen2.5-VL: pixel boxes in; every decoder returns 0–1000 boxes (PromptCollator.relative).
    collator = collator_for(PromptCollator, model, processor, input_format)
    paths = {}
    with make_progress() as progress:
        for task, samples in tests.items():
            path = out_dir / f"{task}.jsonl"
            paths[task] = path
            todo = pending_samples(path, samples)
            bar = progress.add_task(f"predict {task}", total=len(samples), completed=len(samples) - len(todo), info="")
            for start in range(0, len(todo), predict_cfg.batch_size):
                chunk = todo[start : start + predict_cfg.batch_size]
                chunk_samples = [s for _, s in chunk]
                if selector is None:
                    responses = generate_responses(
                        model,
                        processor,
                        collator,
                        chunk_samples,
                        predict_cfg.max_new_tokens[task],
                        predict_cfg.num_beams,
                    )
                    choices = [Choice(response) for response in responses]
                else:
                    choices = selector(
                        model, processor, collator, task, chunk_samples, predict_cfg.max_new_tokens[task]
                    )
                append_jsonl(
                    path,
                    (
                        prediction_row(task, index, sample, choice.response, choice.row)
                        for (index, sample), choice in zip(chunk, choices)
                    ),
                )
                progress.advance(bar, len(chunk))
            renumber(path, samples)
    return paths


def prediction_row(task: str, index: int, sample: Sample, response: str, extra: dict) -> dict:
    """The JSONL row of the sample at position ``index`` of ``task``'s samples, answered ``response``."""
    return Prediction.for_sample(task, sample, response, {"index": index, **extra}).to_json()
