"""Ship a pre-trained base into the package (``clinkd pretrain --ship-to``): bfloat16 weights, the base's
tokenizer and processor, its record with the weights' sha256, the recipe that rebuilds it and a model card."""

from __future__ import annotations

import json
from pathlib import Path

from clinkd.images import PATCH_SIZE
from clinkd.io import atomic_write_json, atomic_write_text
from clinkd.model.bases import RECORD_FILE, WEIGHTS_FILE, file_sha256
from clinkd.model.loading import load_checkpoint, save_checkpoint
from clinkd.model.processor import MERGE_SIZE

RECIPE_FILE = "pretrain.yaml"


def ship_base(pretrain_out: Path, dest: Path) -> dict:
    """Copy ``<pretrain_out>/model`` to ``dest`` as a shipped base; returns the record written to ``base.json``."""
    record = json.loads((pretrain_out / "pretrain.json").read_text(encoding="utf-8"))
    recipe = (pretrain_out / "config.resolved.yaml").read_text(encoding="utf-8")
    model, processor = load_checkpoint(pretrain_out / "model", "bfloat16")  # half the bytes in git; runs upcast on load
    size = processor.image_processor.size
    shipped: dict = {"pixels": {"min": size["shortest_edge"], "max": size["longest_edge"]}}

    def add_card(staging: Path) -> None:
        shipped.update(record, sha256=file_sha256(staging / WEIGHTS_FILE), dtype="bfloat16")
        atomic_write_json(staging / RECORD_FILE, shipped)
        atomic_write_text(staging / RECIPE_FILE, recipe)
        atomic_write_text(staging / "README.md", model_card(shipped, dest))

    save_checkpoint(model, processor, dest, before_publish=add_card)
    return shipped


CORPUS_LOOKS = {
    "colour": "generic grounding scenes: coloured shapes on a dim ground",
    "tissue": "generic grounding scenes: grey-level and texture objects in textured tissue",
    "scan": "grounding scenes on the benchmark's eight kinds of canvas, with objects of the corpus's own",
}
TOKENIZER_WORDS = {
    "colour": "the corpus texts and a generic word list",
    "tissue": "the corpus texts and a generic word list",
    "scan": "the corpus texts, a generic word list and clinkd's medical word list (covers the benchmark's words)",
}


def token_budget(pixels: dict) -> str:
    """The card's visual-token line: tokens per image at the base's pixel budget (one token per merged patch)."""
    low, high = (pixels[key] // (PATCH_SIZE * MERGE_SIZE) ** 2 for key in ("min", "max"))
    tokens = str(high) if low == high else f"{low}–{high}"
    return f"{tokens} per image (model.min_pixels {pixels['min']}, model.max_pixels {pixels['max']})"


def model_card(record: dict, dest: Path) -> str:
    """The base's model card: what it is, how it was made, what it scores, how to rebuild it."""
    settings, held_out, seconds = record["settings"], record["heldout"], record["seconds"]
    look, vocabulary = settings["look"], record["model"]["tokenizer_vocab"]
    by_objects = ", ".join(
        f"{count} object{'s' if count != '1' else ''} {recall:.1%}" for count, recall in held_out["by_objects"].items()
    )
    curve = " → ".join(f"{row['recall']:.1%} ({row['step']})" for row in record["heldout_curve"])
    hardware = record.get("hardware") or {"note": "not recorded"}
    rows = [
        (
            "model",
            f"tiny Qwen2-VL `{record['model']['size']}`, {record['model']['parameters']:,} parameters, positions "
            f"`{record['model']['rope']['name']}`",
        ),
        ("weights", f"`{WEIGHTS_FILE}`, bfloat16, sha256 `{record['sha256']}`"),
        ("visual tokens", token_budget(record["pixels"])),
        ("tokenizer", f"byte-level BPE of {vocabulary} tokens, trained on {TOKENIZER_WORDS[look]}"),
        (
            "corpus",
            f"{CORPUS_LOOKS[look]}, look `{look}` ({len(record['names'])} appearance × outline names; no benchmark "
            "object, answer or class name)",
        ),
        ("seed", str(record["seed"])),
        (
            "steps",
            f"dense vision {record['steps']['dense']}, language {record['steps']['language']} (batch "
            f"{settings['batch_size']}, lr {settings['lr']})",
        ),
        ("settings", ", ".join(f"{key} {value}" for key, value in settings.items() if key not in ("out", "seed"))),
        (
            "retrieval loss",
            ", ".join(f"{key} {value}" for key, value in record.get("retrieval_loss", {"loss": 0}).items()),
        ),
        ("hardware", ", ".join(f"{key} {value}" for key, value in hardware.items())),
        ("time", ", ".join(f"{stage} {value:.0f} s" for stage, value in seconds.items())),
        (
            "held-out grounding",
            f"Recall@0.5 {held_out['recall']:.1%} on {held_out['scenes']} scenes ({by_objects}); curve {curve}",
        ),
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    return f"""# clinkd tiny base `{record["model"]["size"]}`

The embedded default's pretrained starting point (`model.init: base`), made by `clinkd pretrain` on a
synthetic grounding corpus that holds none of the benchmark's objects or answers (docs/pretrain.md). Load it like any
clinkd checkpoint (`model.path=` this folder, or `model.init=base`); `base.json` holds the full record.

| | |
|---|---|
{table}

## Rebuild

```bash
clinkd pretrain {dest}/{RECIPE_FILE} pretrain.out=runs/base-{record["model"]["size"]} --ship-to {dest}
```
"""
