"""Grounding learning curves on the benchmark itself: per checkpoint, does the model name what was asked, find it, and
how much do its first box digits know (docs/benchmarks.md, "Grounding").

    python benchmarks/learning_curve.py --checkpoints runs/default/sft --data data/synth --limit 100 --threads 1
    python benchmarks/learning_curve.py --model A --model B --data data/synth --json /tmp/curve.json

For every model (``--model``) or Trainer checkpoint of a stage (``--checkpoints``, read in step order with the
stage's processor, as ``benchmarks/digit_ce.py`` reads them), on the first ``--limit`` VG test records of ``--data``:

* ``names_asked``: the share of greedy answers that name the asked structure
(:func:`clinkd.metrics.fidelity.names_asked`);
* ``recall``: BiRD's Recall@0.5 of the greedy answers (:func:`clinkd.metrics.rules.score_grounding`);
* ``centre_in``: the share of answers whose first box has its centre inside the ground-truth box (the right object,
  coarsely, whatever the IoU);
* ``first_digit``: the teacher-forced CE of the boxes' first digits (nats; uniform 2.303), image-blind reading
  with ``--blind``.

Greedy answers are generated as ``clinkd predict`` does (``clinkd.engine.generate.generate_responses``, the model's
box convention, ``--max-new-tokens``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digit_ce  # noqa: E402 (the sibling script: checkpoint reading and the per-digit CE)

from clinkd.batching import ChatExample, InputFormat, PromptCollator, collator_for  # noqa: E402
from clinkd.boxes import BoxError, parse_boxes  # noqa: E402
from clinkd.data.medgrit import load_test_split  # noqa: E402
from clinkd.data.records import Sample  # noqa: E402
from clinkd.engine.generate import generate_responses  # noqa: E402
from clinkd.metrics.fidelity import names_asked  # noqa: E402
from clinkd.metrics.rules import score_grounding  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", default=[], help="a checkpoint folder (repeatable)")
    parser.add_argument(
        "--checkpoints", type=Path, help="a stage folder whose checkpoint-N subfolders are read in step order"
    )
    parser.add_argument("--processor", type=Path, help="the processor for --checkpoints (default STAGE_DIR/model)")
    parser.add_argument("--data", type=Path, required=True, help="a Med-GRIT folder with test_VG.json and images/")
    parser.add_argument("--limit", type=int, help="the first N VG test records (default: all)")
    parser.add_argument("--blind", action="store_true", help="also the first-digit CE on constant grey images")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--box-style", default="qwen2-vl", choices=["qwen2-vl", "qwen-vl"], help="the models' training markup"
    )
    parser.add_argument("--square-size", type=int)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if not args.model and args.checkpoints is None:
        parser.error("give --model and/or --checkpoints")
    return args


def answer_scores(samples: Sequence[Sample], answers: Sequence[str]) -> dict[str, float]:
    """``names_asked``, ``recall`` and ``centre_in`` of greedy ``answers`` to one-turn VG ``samples`` (shares in
    0–1)."""
    named = hits = centred = 0
    for sample, answer in zip(samples, answers):
        turn = sample.turns[0]
        named += bool(names_asked(turn.question, answer))
        hits += score_grounding(turn.answer, answer).hits > 0
        centred += _centre_inside(answer, parse_boxes(turn.answer)[0])
    count = max(len(samples), 1)
    return {"names_asked": named / count, "recall": hits / count, "centre_in": centred / count}


def _centre_inside(answer: str, truth) -> bool:
    try:
        boxes = parse_boxes(answer)
    except BoxError:
        return False
    if not boxes:
        return False
    x, y = (boxes[0].x1 + boxes[0].x2) / 2, (boxes[0].y1 + boxes[0].y2) / 2
    return truth.x1 <= x <= truth.x2 and truth.y1 <= y <= truth.y2


def greedy_answers(model, processor, samples: Sequence[Sample], args: argparse.Namespace) -> list[str]:
    collator = collator_for(PromptCollator, model, processor, InputFormat(args.box_style, args.square_size))
    answers = []
    for start in range(0, len(samples), args.batch_size):
        answers += generate_responses(
            model, processor, collator, samples[start : start + args.batch_size], args.max_new_tokens
        )
    return answers


def evaluate(args: argparse.Namespace) -> list[dict]:
    """One row per model: label, records, the three answer shares and the first-digit CE (and its blind reading)."""
    samples = load_test_split(args.data, tasks=["VG"])["VG"][: args.limit]
    examples = [ChatExample(sample.image, sample.turns[:1]) for sample in samples]
    rows = []
    with tempfile.TemporaryDirectory() as grey_dir:
        blind = digit_ce.blind_examples(examples, Path(grey_dir)) if args.blind else None
        for label, path, processor_dir in digit_ce.models_to_read(args):
            model, processor = digit_ce.load(path, processor_dir, args.dtype)
            model.to(args.device).eval()
            row = {"model": label, "path": str(path), "records": len(samples)}
            row |= answer_scores(samples, greedy_answers(model, processor, samples, args))
            row["first_digit"] = digit_ce.read_digits(model, processor, examples, args).as_dict()["first_digit"]
            if blind is not None:
                row["first_digit_blind"] = digit_ce.read_digits(model, processor, blind, args).as_dict()["first_digit"]
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    blind = any("first_digit_blind" in row for row in rows)
    header = "| model | records | names asked % | Recall@0.5 % | centre in box % | 1st-digit CE |" + (
        " blind |" if blind else ""
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|" + ("---:|" if blind else "")]
    for row in rows:
        cells = [
            row["model"],
            str(row["records"]),
            *(f"{100 * row[key]:.1f}" for key in ("names_asked", "recall", "centre_in")),
            digit_ce._nats(row["first_digit"]),
        ]
        if blind:
            cells.append(digit_ce._nats(row.get("first_digit_blind")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    return digit_ce.run(parse_args(argv), evaluate, table)


if __name__ == "__main__":
    main()
