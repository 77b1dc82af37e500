"""Chunked vs plain KD loss: peak memory and wall time of forward + backward, side by side.

    python benchmarks/kd_chunked.py                      # 4096 answer tokens x 32000 vocab, bf16 logits
    python benchmarks/kd_chunked.py --dtype float32 --chunk-size 1024 --device cuda

Each variant runs in a fresh subprocess so that its peak is its own. Memory is the growth of the peak
over the inputs during the first forward + backward: on CPU the resident set (``ru_maxrss``, Linux),
on CUDA ``torch.cuda.max_memory_allocated``. Next to it the analytic size of the largest fp32
intermediate ([rows x V] x 4 bytes, rows = N plain or chunk_size chunked). Time is the median of
``--repeats`` warm forward + backward passes. Both variants must give the same loss and gradient,
which the table checks.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from clinkd.losses import KDLossConfig, distillation_loss

PROMPT_TOKENS = 256  # unscored positions per sequence, so row selection does real work
SEQUENCES = 4


def make_inputs(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[SEQUENCES, L, V] student/teacher logits whose shifted labels select exactly ``args.tokens`` rows."""
    answer = args.tokens // SEQUENCES
    length = PROMPT_TOKENS + answer + 1  # +1: the last logit predicts nothing under the shift
    generator = torch.Generator(args.device).manual_seed(0)
    # Drawn in the target dtype and scaled in place: no bigger temporary raises the baseline peak.
    shape, dtype = (SEQUENCES, length, args.vocab), getattr(torch, args.dtype)
    student = torch.randn(shape, generator=generator, dtype=dtype, device=args.device).mul_(3)
    teacher = torch.randn(shape, generator=generator, dtype=dtype, device=args.device).mul_(3)
    labels = torch.full((SEQUENCES, length), -100, dtype=torch.long)
    labels[:, PROMPT_TOKENS + 1 :] = torch.randint(0, args.vocab, (SEQUENCES, answer))
    return student.requires_grad_(True), teacher, labels.to(args.device)


def start_peak_measurement(device: torch.device) -> int:
    """Reset what can be reset and return the baseline the peak is compared with."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # high-water mark so far; Linux: KiB


def peak_since_start(device: torch.device, baseline: int) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() - baseline
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline


def forward_backward(student, teacher, labels, cfg) -> float:
    student.grad = None
    loss = distillation_loss(student, labels, None, cfg, teacher_logits=teacher)["loss"]
    loss.backward()
    if student.device.type == "cuda":
        torch.cuda.synchronize()
    return loss.item()


def run_variant(args: argparse.Namespace) -> dict:
    """One variant in this process: peak growth of the first pass, then warm timings."""
    student, teacher, labels = make_inputs(args)
    cfg = KDLossConfig(use_ce=False, chunk_size=args.chunk_size if args.variant == "chunked" else None)
    baseline = start_peak_measurement(student.device)
    loss = forward_backward(student, teacher, labels, cfg)
    peak_growth = peak_since_start(student.device, baseline)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        forward_backward(student, teacher, labels, cfg)
        times.append(time.perf_counter() - start)
    rows = args.tokens if cfg.chunk_size is None else min(cfg.chunk_size, args.tokens)
    return {
        "variant": args.variant,
        "loss": loss,
        "grad_abs_sum": student.grad.double().abs().sum().item(),
        "peak_growth_mb": peak_growth / 2**20,
        "largest_fp32_mb": rows * args.vocab * 4 / 2**20,
        "time_s": statistics.median(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096, help="answer tokens N (a multiple of 4)")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes after the measured first one")
    parser.add_argument("--variant", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    results = {}
    for variant in ("plain", "chunked"):
        child = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--variant", variant], capture_output=True, text=True, check=True
        )
        results[variant] = json.loads(child.stdout.strip().splitlines()[-1])
    plain, chunked = results["plain"], results["chunked"]
    print(
        f"KD forward+backward, {args.tokens} answer tokens x {args.vocab} vocab, {args.dtype} logits, "
        f"device {args.device}, chunk_size {args.chunk_size}, torch threads {torch.get_num_threads()}"
    )
    header = f"{'':<18}{'plain':>12}{'chunked':>12}{'chunked/plain':>15}"
    print(header)
    print("-" * len(header))
    rows = (("peak_growth_mb", "peak memory MB"), ("largest_fp32_mb", "largest fp32 MB"), ("time_s", "time s"))
    for key, label in rows:
        print(f"{label:<18}{plain[key]:>12.1f}{chunked[key]:>12.1f}{chunked[key] / plain[key]:>15.3f}")
    loss_gap = abs(chunked["loss"] - plain["loss"]) / abs(plain["loss"])
    grad_gap = abs(chunked["grad_abs_sum"] - plain["grad_abs_sum"]) / plain["grad_abs_sum"]
    print(f"same result: loss rel. diff {loss_gap:.1e}, sum|grad| rel. diff {grad_gap:.1e}")


if __name__ == "__main__":
    main()
