"""Per-digit cross-entropy of VG boxes: the grounding diagnostic (clinkd.metrics.digits, docs/benchmarks.md).

    python benchmarks/digit_ce.py --model runs/default/sft/model --data data/synth --limit 100 --threads 1
    python benchmarks/digit_ce.py --model A --model B --data data/synth --limit 100 --blind --json /tmp/digits.json
    python benchmarks/digit_ce.py --checkpoints runs/default/sft --data data/synth --limit 100   # the learning curve

Each model reads the VG test records of ``--data`` (a Med-GRIT folder, first ``--limit`` records) teacher-forced,
batched by clinkd's own training collator (same chat template, box markup and labels as training; Qwen2.5-VL
models get their pixel boxes, so their places are pixel digits). The table has one row per model: the mean CE of
each digit place (1st, 2nd, 3rd from the left) of ``x1, y1, x2, y2`` and of all first digits pooled, against
``uniform = ln 10 = 2.303``. The first digit is where grounding shows; the second stays near uniform; the third
is nearly fixed by the first two.

``--checkpoints STAGE_DIR`` reads the Trainer checkpoints ``STAGE_DIR/checkpoints/checkpoint-N`` (or
``STAGE_DIR/checkpoint-N``) in step order. They hold weights only, so the processor comes from ``--processor``
(default ``STAGE_DIR/model``, written when the stage finished). ``--blind`` adds a row per model that sees a
constant grey image of each image's size instead: the same model, image-blind.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModelForImageTextToText

from clinkd.batching import IGNORE_INDEX, ChatExample, InputFormat, TrainCollator
from clinkd.data.medgrit import load_test_split
from clinkd.metrics.digits import COORDINATES, PLACES, UNIFORM_DIGIT_CE, DigitCE
from clinkd.model.box_convention import box_coordinates
from clinkd.model.loading import DTYPES, checked_from_pretrained, load_checkpoint
from clinkd.model.processor import load_processor

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
GREY = (128, 128, 128)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", default=[], help="a checkpoint folder (repeatable)")
    parser.add_argument(
        "--checkpoints", type=Path, help="a stage folder whose checkpoint-N subfolders are read in step order"
    )
    parser.add_argument("--processor", type=Path, help="the processor for --checkpoints (default STAGE_DIR/model)")
    parser.add_argument("--data", type=Path, required=True, help="a Med-GRIT folder with test_VG.json and images/")
    parser.add_argument("--limit", type=int, help="the first N VG test records (default: all)")
    parser.add_argument("--blind", action="store_true", help="also read every model on constant grey images")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--box-style", default="qwen2-vl", choices=["qwen2-vl", "qwen-vl"], help="the models' training markup"
    )
    parser.add_argument("--square-size", type=int, help="resample images to N×N, as model.square_size did in training")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    if not args.model and args.checkpoints is None:
        parser.error("give --model and/or --checkpoints")
    return args


def checkpoint_dirs(stage: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of the Trainer checkpoints in ``stage/checkpoints`` (or ``stage``), in step order."""
    root = stage / "checkpoints" if (stage / "checkpoints").is_dir() else stage
    found = [
        (int(m.group(1)), path) for path in root.iterdir() if (m := _CHECKPOINT.fullmatch(path.name)) and path.is_dir()
    ]
    if not found:
        raise FileNotFoundError(f"no checkpoint-N folders in {root}")
    return sorted(found)


def models_to_read(args: argparse.Namespace) -> list[tuple[str, Path, Path | None]]:
    """``(label, weights folder, processor folder or None = the same)`` for every row, in table order."""
    rows = [(str(path), path, None) for path in args.model]
    if args.checkpoints is not None:
        processor = args.processor or args.checkpoints / "model"
        rows += [(f"step {step}", path, processor) for step, path in checkpoint_dirs(args.checkpoints)]
    return rows


def load(path: Path, processor_dir: Path | None, dtype: str):
    """A full checkpoint through ``load_checkpoint``; a Trainer checkpoint (weights only) with ``processor_dir``'s
    processor."""
    if processor_dir is None:
        return load_checkpoint(path, dtype)
    # The Auto class resolves to clinkd's model class (registered by clinkd.model.loading); every weight must load.
    return checked_from_pretrained(AutoModelForImageTextToText, path, dtype=DTYPES[dtype]), load_processor(
        processor_dir
    )


def blind_examples(examples: list[ChatExample], folder: Path) -> list[ChatExample]:
    """The same turns on a constant grey image of each image's size (one PNG per size in ``folder``)."""
    blind = []
    for example in examples:
        with Image.open(example.image) as image:
            size = image.size
        grey = folder / f"grey-{size[0]}x{size[1]}.png"
        if not grey.exists():
            Image.new("RGB", size, GREY).save(grey)
        blind.append(ChatExample(grey, example.turns))
    return blind


def token_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``ce[b, i] = -log p(input_ids[b, i] | earlier tokens)``; 0 at ``i = 0``, which nothing predicts (never an answer
    token)."""
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), input_ids[:, 1:], reduction="none")
    return F.pad(ce, (1, 0))


@torch.no_grad()
def read_digits(model, processor, examples: list[ChatExample], args: argparse.Namespace) -> DigitCE:
    """Teacher-forced per-digit CE of ``examples``' answers (labels exactly as training makes them)."""
    collator = TrainCollator(
        processor, InputFormat(args.box_style, args.square_size), box_coordinates(model.config, processor)
    )
    digits = DigitCE()
    for start in range(0, len(examples), args.batch_size):
        batch = {
            key: value.to(args.device) for key, value in collator(examples[start : start + args.batch_size]).items()
        }
        labels = batch.pop("labels")
        ce = token_ce(model(**batch).logits, batch["input_ids"])
        for ids, row_labels, row_ce in zip(batch["input_ids"], labels, ce):
            tokens = processor.tokenizer.convert_ids_to_tokens(ids.tolist())
            digits.add(tokens, (row_labels != IGNORE_INDEX).tolist(), row_ce.tolist())
    return digits


def evaluate(args: argparse.Namespace) -> list[dict]:
    """One row per model (and per blind reading): label, folder, records and :meth:`DigitCE.as_dict`."""
    samples = load_test_split(args.data, tasks=["VG"])["VG"][: args.limit]
    examples = [ChatExample(sample.image, sample.turns[:1]) for sample in samples]
    rows = []
    with tempfile.TemporaryDirectory() as grey_dir:
        readings = [("", examples)] + ([(" (blind)", blind_examples(examples, Path(grey_dir)))] if args.blind else [])
        for label, path, processor_dir in models_to_read(args):
            model, processor = load(path, processor_dir, args.dtype)
            model.to(args.device).eval()
            for suffix, inputs in readings:
                digits = read_digits(model, processor, inputs, args)
                rows.append({"model": label + suffix, "path": str(path), "records": len(inputs), **digits.as_dict()})
    return rows


def table(rows: list[dict]) -> str:
    """A markdown table: mean CE (nats) per coordinate × place, and all first digits pooled."""
    places = [f"{c} {p}" for c in COORDINATES for p in PLACES]
    lines = [
        "| model | records | " + " | ".join(places) + " | 1st digits |",
        "|---|---:|" + "---:|" * (len(places) + 1),
    ]
    for row in rows:
        means = [row["ce"][c][p - 1] for c in COORDINATES for p in PLACES] + [row["first_digit"]]
        lines.append(f"| {row['model']} | {row['records']} | " + " | ".join(_nats(m) for m in means) + " |")
    lines.append(
        f"\nplaces counted from the left (1 = first digit); uniform over 10 digits = ln 10 = {UNIFORM_DIGIT_CE:.3f} "
        "nats"
    )
    return "\n".join(lines)


def _nats(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def run(args: argparse.Namespace, measure: Callable, render: Callable) -> list[dict]:
    """The scripts' shared driver: ``measure(args)`` rows, printed as ``render(rows)``, also written to ``--json``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args)
    print(render(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:
    return run(parse_args(argv), evaluate, table)


if __name__ == "__main__":
    main()
