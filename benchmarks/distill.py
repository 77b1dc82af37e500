"""Cached vs online teacher: one student epoch of KD training, time and peak memory side by side
(with plain SFT of the same student on the same examples as the reference cost).

    python benchmarks/distill.py                              # teacher s, student xs, 64 synthetic images
    python benchmarks/distill.py --student-size s --repeats 3 --threads 2

The parent process generates the synthetic data, builds a tiny teacher (saved as a checkpoint; its
weights are random, which changes nothing in the cost) and runs the one teacher pass that writes the
top-k cache. Then each variant trains a freshly initialised student for one epoch, in a fresh
subprocess so that its peak is its own: ``online`` and ``cached`` through ``clinkd.distill.train_student``,
``sft`` through ``clinkd.engine.sft.run_sft``. The variants alternate ``--repeats`` times so that a
shared CPU's load hits them alike, and medians are reported.

- time: the Trainer's ``train_runtime`` for the epoch (the online teacher forward is inside it), and the
  process's CPU time (user + system) over the same training, which a shared CPU's load inflates far less;
- ratios: of the medians, and the median of the per-repeat ratios (each pair ran back to back);
- peak RSS: the process's resident high-water mark (``ru_maxrss``, Linux), in total and as the growth
  during training over the mark reached once data and models are loaded.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from clinkd.batching import TrainCollator, training_examples
from clinkd.boxes import convert_markup
from clinkd.config import RecipeConfig
from clinkd.data.medgrit import load_medgrit
from clinkd.distill import TeacherCache, train_student, write_teacher_cache
from clinkd.engine.sft import run_sft
from clinkd.model.loading import load_checkpoint, save_checkpoint
from clinkd.recipes.distill import cache_spec
from clinkd.recipes.inputs import build_tiny_from

VARIANTS = ("online", "cached", "sft")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def recipe(args: argparse.Namespace, size: str) -> RecipeConfig:
    return RecipeConfig.model_validate(
        {
            "name": "bench",
            "output_dir": str(args.workdir / "runs"),
            "model": {"size": size, "tokenizer_vocab": args.vocab},
            "train": {
                "epochs": 1,
                "batch_size": args.batch_size,
                "logging_steps": 10_000,
                "save_steps": 10_000,
                "threads": args.threads,
            },
            "predict": {"batch_size": args.batch_size},
            "distill": {"top_k": args.top_k},
        }
    )


def load_inputs(args: argparse.Namespace, size: str):
    """(recipe, examples, freshly initialised model, processor): the same in parent and children."""
    data = args.workdir / "data"
    train = load_medgrit(data / "train.json", data / "images")
    corpus = [
        convert_markup(text, "qwen2-vl") for s in train for turn in s.turns for text in (turn.question, turn.answer)
    ]
    cfg = recipe(args, size)
    model, processor = build_tiny_from(cfg.model, corpus, cfg.seed, cfg.rope)
    return cfg, training_examples(train, "split"), model, processor


def run_variant(args: argparse.Namespace) -> dict:
    """One student epoch with the online teacher, the cached teacher or no teacher (plain SFT), in this process."""
    torch.set_num_threads(args.threads)
    cfg, examples, student, processor = load_inputs(args, args.student_size)
    kd = cfg.distill.loss
    teacher_dir = args.workdir / "teacher"
    source = {}
    if args.variant == "online":
        source["teacher"], _ = load_checkpoint(teacher_dir)
    elif args.variant == "cached":
        source["teacher_cache"] = TeacherCache(
            args.workdir / "cache", cache_spec(cfg, examples, student, processor, teacher_dir, kd)
        )
    loaded_mb, cpu_start = peak_rss_mb(), cpu_seconds()
    stage = args.workdir / "runs" / f"{args.variant}-{args.repeat}"
    if args.variant == "sft":
        run_sft(cfg, student, processor, examples, stage)
    else:
        train_student(cfg, student, processor, examples, stage, kd, **source)
    history = json.loads((stage / "train_log.json").read_text())["log_history"]
    runtime = next(entry["train_runtime"] for entry in history if "train_runtime" in entry)
    return {
        "time_s": runtime,
        "cpu_s": cpu_seconds() - cpu_start,
        "peak_rss_mb": peak_rss_mb(),
        "train_growth_mb": peak_rss_mb() - loaded_mb,
    }


def prepare(args: argparse.Namespace) -> dict:
    """Data, the teacher checkpoint and the cache (one teacher pass, timed)."""
    from clinkd.synth import generate

    torch.set_num_threads(args.threads)
    generate(args.workdir / "data", seed=0, images=args.images, test_per_cell=1)
    cfg, examples, student, processor = load_inputs(args, args.student_size)
    _, _, teacher, _ = load_inputs(args, args.teacher_size)
    save_checkpoint(teacher, processor, args.workdir / "teacher")
    kd = cfg.distill.loss
    spec = cache_spec(cfg, examples, student, processor, args.workdir / "teacher", kd)
    started = time.perf_counter()
    manifest = write_teacher_cache(
        teacher,
        TrainCollator(processor),
        examples,
        spec,
        args.workdir / "cache",
        kd,
        batch_size=args.batch_size,
        shard_examples=1024,
    )
    cache_mb = sum(p.stat().st_size for p in (args.workdir / "cache").glob("shard-*.safetensors")) / 2**20
    return {
        "examples": len(examples),
        "rows": manifest["n_rows"],
        "cache_s": time.perf_counter() - started,
        "cache_mb": cache_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="synthetic training images (4 QA turns each)")
    parser.add_argument("--teacher-size", default="s", choices=["xs", "s", "m"])
    parser.add_argument("--student-size", default="xs", choices=["xs", "s", "m"])
    parser.add_argument("--vocab", type=int, default=1024, help="tokenizer vocabulary of the tiny models")
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per variant")
    parser.add_argument("--repeats", type=int, default=2, help="epochs per variant, alternating online/cached/sft")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clinkd-distill-bench-"))
    prepared = prepare(args)
    forwarded = [a for a in sys.argv[1:] if not a.startswith("--workdir")]
    runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    for repeat in range(args.repeats):
        for variant in VARIANTS:
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    *forwarded,
                    "--workdir",
                    str(args.workdir),
                    "--variant",
                    variant,
                    "--repeat",
                    str(repeat),
                ],
                capture_output=True,
                text=True,
            )
            if child.returncode != 0:
                sys.exit(f"variant {variant} (repeat {repeat}) failed:\n{child.stderr[-3000:]}")
            runs[variant].append(json.loads(child.stdout.strip().splitlines()[-1]))
    median = {
        variant: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for variant, results in runs.items()
    }
    online, cached, sft = median["online"], median["cached"], median["sft"]

    print(
        f"KD student epoch: teacher {args.teacher_size}, student {args.student_size}, {prepared['examples']} examples "
        f"({prepared['rows']} answer tokens), batch {args.batch_size}, top-k {args.top_k}, vocab {args.vocab}, "
        f"{args.threads} torch thread(s), median of {args.repeats} alternating runs"
    )

    def ratio(a, b):
        return f"{a / b:.2f}" if b > 0 else "n/a"

    def paired(key, a, b):
        return statistics.median(x[key] / y[key] for x, y in zip(runs[a], runs[b]) if y[key] > 0)

    header = f"{'':<26}{'online':>9}{'cached':>9}{'sft':>9}{'online/cached':>15}{'cached/sft':>12}"
    print(header)
    print("-" * len(header))
    rows = (
        ("time_s", "epoch time s"),
        ("cpu_s", "epoch CPU time s"),
        ("peak_rss_mb", "peak RSS MB"),
        ("train_growth_mb", "RSS growth in training MB"),
    )
    for key, label in rows:
        print(
            f"{label:<26}{online[key]:>9.1f}{cached[key]:>9.1f}{sft[key]:>9.1f}"
            f"{ratio(online[key], cached[key]):>15}{ratio(cached[key], sft[key]):>12}"
        )
    for key, label in (("time_s", "epoch time"), ("cpu_s", "epoch CPU time")):
        print(
            f"{'paired ' + label:<26}{'':>27}"
            f"{paired(key, 'online', 'cached'):>15.2f}{paired(key, 'cached', 'sft'):>12.2f}"
        )
    print("per-run epoch times s: " + ", ".join(f"{v} {[round(r['time_s'], 1) for r in runs[v]]}" for v in VARIANTS))
    saved = online["time_s"] - cached["time_s"]
    payback = (
        f"pays for itself after {prepared['cache_s'] / saved:.2f} student epochs" if saved > 0 else "saves no time"
    )
    print(f"cache: one teacher pass {prepared['cache_s']:.1f} s, {prepared['cache_mb']:.1f} MB on disk; it {payback}")


if __name__ == "__main__":
    main()
