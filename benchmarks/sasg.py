"""The cost of SASG next to plain decoding: greedy, beam-3 top-1, and SASG (beam 3, N = 3, CLIP-scored).

    python benchmarks/sasg.py                                  # tiny random model, fresh synthetic data
    python benchmarks/sasg.py --model runs/default/sft/model --clip runs/default/clip --data data/synth

All three decode the same test samples (``--per-task`` of each of the 4 tasks) in batches of
``--batch-size`` with the predict defaults for ``max_new_tokens``. Rounds are interleaved (greedy, beam,
SASG, greedy, …). Each round records the process CPU time (all threads; what the method costs, and
robust to other processes on a shared machine, with one thread: spinning OpenMP threads would count) and
the wall time. The table gives medians, the ratios
of CPU time to greedy and to beam-3 top-1, and the share of SASG's CPU time spent in CLIP embeddings
(the rest: one ``generate`` per batch with log-probs, crops, choice). Goal: SASG ≤ 1.25 × beam-3 top-1.

Without ``--model`` the tiny model has random weights, so every answer runs to ``max_new_tokens``:
the worst case for generation. Without ``--clip`` a CLIP of the ``clip.*`` default size is initialised
(one training step): scoring costs the same whatever the weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clinkd.batching import PromptCollator
from clinkd.config import ClipTrainConfig, ModelConfig, PredictConfig, SelectConfig
from clinkd.data.medgrit import load_test_split
from clinkd.engine.generate import generate_responses
from clinkd.model.loading import load_checkpoint
from clinkd.recipes.inputs import build_tiny_from
from clinkd.sasg import SasgSelector, load_scorer, sample_pairs, train_clip
from clinkd.synth import generate


def prepare(args: argparse.Namespace, scratch: Path):
    """(model, processor, tests by task, CLIP directory)."""
    data = args.data
    if data is None:
        data = scratch / "synth"
        generate(data, seed=0, images=64, test_per_cell=max(1, -(-args.per_task // 8)))
    tests = {task: samples[: args.per_task] for task, samples in load_test_split(data, data / "images").items()}
    if args.model is not None:
        model, processor = load_checkpoint(args.model)
    else:
        corpus = [
            text
            for samples in tests.values()
            for s in samples
            for turn in s.turns
            for text in (turn.question, turn.answer)
        ]
        model, processor = build_tiny_from(ModelConfig(size=args.size, tokenizer_vocab=512), corpus * 4, seed=0)
    clip = args.clip
    if clip is None:
        clip = scratch / "clip"
        train_clip(
            sample_pairs([s for samples in tests.values() for s in samples]),
            processor.tokenizer,
            ClipTrainConfig(steps=1),
            clip,
        )
    return model.eval(), processor, tests, clip


class TimedScorer:
    """A scorer that adds the CPU time spent in ``score_pairs`` (the CLIP embeddings) to ``seconds``."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.seconds = 0.0

    def score_pairs(self, images, texts):
        started = time.process_time()
        scores = self.scorer.score_pairs(images, texts)
        self.seconds += time.process_time() - started
        return scores


def batches(tests, batch_size):
    for task, samples in tests.items():
        for start in range(0, len(samples), batch_size):
            yield task, samples[start : start + batch_size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a trained checkpoint (default: a random tiny model)")
    parser.add_argument("--clip", type=Path, help="a clip-train directory (default: a fresh default-size CLIP)")
    parser.add_argument("--data", type=Path, help="a dataset folder with test_*.json (default: a fresh synthetic one)")
    parser.add_argument("--size", choices=["xs", "s", "m"], default="s", help="tiny model size without --model")
    parser.add_argument("--per-task", type=int, default=32, help="test samples per task")
    parser.add_argument("--batch-size", type=int, default=PredictConfig().batch_size)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument(
        "--threads", type=int, default=1, help="1 keeps CPU time honest: idle OpenMP threads spin, and count"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    max_new = PredictConfig().max_new_tokens
    select_cfg = SelectConfig(method="sasg", num_beams=3, num_return_sequences=3)
    crop_margin = ClipTrainConfig().crop_margin

    with tempfile.TemporaryDirectory(prefix="clinkd-sasg-bench-") as scratch:
        model, processor, tests, clip = prepare(args, Path(scratch))
        collator = PromptCollator(processor)
        scorer = TimedScorer(load_scorer("hf", clip))
        selector = SasgSelector(scorer, select_cfg, crop_margin)

        def greedy():
            for task, chunk in batches(tests, args.batch_size):
                generate_responses(model, processor, collator, chunk, max_new[task], 1)

        def beam3():
            for task, chunk in batches(tests, args.batch_size):
                generate_responses(model, processor, collator, chunk, max_new[task], 3)

        def sasg():
            for task, chunk in batches(tests, args.batch_size):
                selector.selections(model, processor, collator, task, chunk, max_new[task])

        methods = {"greedy": greedy, "beam-3 top-1": beam3, "SASG (beam 3, N=3, CLIP)": sasg}
        cpu = {name: [] for name in methods}
        wall = {name: [] for name in methods}
        sasg()  # warm-up: first-call allocations, lazy imports
        clip_seconds = []
        for _ in range(args.repeats):
            for name, run in methods.items():
                scorer.seconds = 0.0
                started_cpu, started_wall = time.process_time(), time.perf_counter()
                run()
                cpu[name].append(time.process_time() - started_cpu)
                wall[name].append(time.perf_counter() - started_wall)
            clip_seconds.append(scorer.seconds)

    samples = sum(len(s) for s in tests.values())
    median = {name: statistics.median(values) for name, values in cpu.items()}
    median_wall = {name: statistics.median(values) for name, values in wall.items()}
    print(
        f"SASG cost: {samples} test samples ({args.per_task} per task), batch {args.batch_size}, "
        f"{'model ' + str(args.model) if args.model else 'random tiny-' + args.size}, torch threads "
        f"{torch.get_num_threads()}, "
        f"median of {args.repeats} interleaved rounds"
    )
    header = f"{'method':<28}{'CPU s':>8}{'CPU ms/sample':>15}{'× greedy':>10}{'× beam-3':>10}{'wall s':>9}"
    print(header)
    print("-" * len(header))
    for name, seconds in median.items():
        print(
            f"{name:<28}{seconds:>8.2f}{1000 * seconds / samples:>15.1f}{seconds / median['greedy']:>10.2f}"
            f"{seconds / median['beam-3 top-1']:>10.2f}{median_wall[name]:>9.2f}"
        )
    sasg_seconds = median["SASG (beam 3, N=3, CLIP)"]
    clip_median = statistics.median(clip_seconds)
    print(
        f"SASG split: CLIP embedding {clip_median:.2f} CPU s ({clip_median / sasg_seconds:.0%}); candidates, crops and "
        "choice the rest"
    )
    ratio = sasg_seconds / median["beam-3 top-1"]
    print(f"goal SASG ≤ 1.25 × beam-3 top-1 (CPU time): {ratio:.2f} × → {'met' if ratio <= 1.25 else 'NOT met'}")


if __name__ == "__main__":
    main()
