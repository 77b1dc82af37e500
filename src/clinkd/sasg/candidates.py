"""N candidate answers per input, in one batched ``generate`` call, with their sequence log-probabilities.

Beam search (``num_beams`` beams, the best ``num_return_sequences`` kept, best first) or sampling
(``temperature``, ``top_p``, N = ``num_return_sequences`` draws). Output row ``i·N + k`` is candidate ``k``
of input ``i`` in both modes.

The log-probability is the model's own, from its raw logits (no temperature, top-p or repetition penalty):

    log p(y | x) = Σ_{t ≤ T} log softmax(z_t)[y_t]

over the generated tokens up to and including the first end token ``<|im_end|>`` (all of them when it
never comes). For beam search, ``z_t`` is the logit row of the beam that token ``t`` was chosen from.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from clinkd.batching import PromptCollator
from clinkd.chat import TURN_END
from clinkd.config import SelectConfig
from clinkd.data.records import Sample
from clinkd.engine.generate import clean_generation, decoding


@dataclass(frozen=True)
class Candidate:
    """One generated answer: cleaned text, sequence log-prob, and its rank in the generate output."""

    text: str
    logprob: float
    rank: int


def decoding_kwargs(select_cfg: SelectConfig) -> dict:
    """``generate`` arguments for ``select.candidates`` (beam or sample), none left to the checkpoint's defaults."""
    if select_cfg.candidates == "beam":
        return decoding(
            do_sample=False, num_beams=select_cfg.num_beams, num_return_sequences=select_cfg.num_return_sequences
        )
    return decoding(
        do_sample=True,
        num_beams=1,
        temperature=select_cfg.temperature,
        top_p=select_cfg.top_p,
        top_k=0,  # top-p alone decides, not the checkpoint's default top-k
        num_return_sequences=select_cfg.num_return_sequences,
    )


def sequence_logprobs(
    logits: Sequence[torch.Tensor], continuations: torch.Tensor, beam_indices: torch.Tensor | None, end_id: int
) -> torch.Tensor:
    """``[rows]`` sums of ``log softmax(logits[t][row_t])[token_t]`` up to and including the first ``end_id``.

    ``logits[t]`` is ``[batch·beams, V]`` (raw, per step); ``continuations`` is ``[rows, T]``;
    ``beam_indices[r, t]`` is the logit row token ``t`` of output row ``r`` came from (``-1`` past its
    end), or ``None`` when row ``r`` of the logits is output row ``r`` (sampling, greedy).
    """
    rows, steps = continuations.shape
    if beam_indices is None:
        beam_indices = torch.arange(rows, device=continuations.device)[:, None].expand(rows, steps)
    beam_indices = beam_indices[:, :steps].long()
    is_end = (continuations == end_id).long()
    # A token counts while no end token came before it: the end token itself is included.
    before_end = (is_end.cumsum(dim=1) - is_end) == 0
    keep = before_end & (beam_indices >= 0)
    total = torch.zeros(rows, dtype=torch.float32, device=continuations.device)
    for step in range(steps):
        log_probs = logits[step].float().log_softmax(dim=-1)
        picked = log_probs[beam_indices[:, step].clamp(min=0), continuations[:, step]]
        total += torch.where(keep[:, step], picked, torch.zeros_like(picked))
    return total


def batch_seed(seed: int, samples: Sequence[Sample]) -> int:
    """A sampling seed fixed by the batch's contents, so a resumed run draws the same candidates."""
    return zlib.crc32("\n".join(sample.id for sample in samples).encode()) ^ seed


@torch.inference_mode()
def generate_candidates(
    model,
    processor,
    collator: PromptCollator,
    samples: Sequence[Sample],
    max_new_tokens: int,
    select_cfg: SelectConfig,
    seed: int = 0,
) -> list[list[Candidate]]:
    """``num_return_sequences`` candidates for each sample (boxes on the 0–1000 scale), from one ``generate``
    call for the whole batch."""
    batch = {key: value.to(model.device) for key, value in collator(samples).items()}
    tokenizer = processor.tokenizer
    end_id = tokenizer.convert_tokens_to_ids(TURN_END)
    kwargs = decoding_kwargs(select_cfg)
    if kwargs["do_sample"]:
        torch.manual_seed(batch_seed(seed, samples))
    output = model.generate(
        **batch,
        **kwargs,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=end_id,
        return_dict_in_generate=True,
        output_logits=True,
    )
    continuations = output.sequences[:, batch["input_ids"].shape[1] :]
    beam_indices = output.beam_indices if kwargs["num_beams"] > 1 else None
    logprobs = sequence_logprobs(output.logits, continuations, beam_indices, end_id).tolist()
    per_input = select_cfg.num_return_sequences
    decoded = tokenizer.batch_decode(continuations, skip_special_tokens=False)
    # Boxes back on the 0–1000 scale (Qwen2.5-VL pixels), so crops and the selected answer are relative.
    texts = [collator.relative(clean_generation(text), samples[row // per_input]) for row, text in enumerate(decoded)]
    return [
        [
            Candidate(texts[row], logprobs[row], rank)
            for rank, row in enumerate(range(i * per_input, (i + 1) * per_input))
        ]
        for i in range(len(samples))
    ]
