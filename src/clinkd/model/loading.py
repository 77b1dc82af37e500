"""One entry point for models: a tiny one built from a config, or a local checkpoint from disk.

Both return the same pair (model, processor), so every stage runs the same code on the
embedded default and on a real Qwen2-VL, Qwen2.5-VL, Qwen3-VL or Qwen3.5 checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import AutoModelForImageTextToText

from clinkd.io import match_umask, unreachable_reason
from clinkd.model.positions import STOCK, RopeStrategy
from clinkd.model.processor import build_processor, load_processor, save_processor
from clinkd.model.rope import MODEL_CLASSES, load_model_class, set_rope_strategy
from clinkd.model.tiny import tiny_config
from clinkd.model.tokenizer import train_tokenizer

# AutoModelForImageTextToText.from_pretrained(a clinkd checkpoint) returns the clinkd class (not done in
# rope.py: as an export's remote code it must not take over stock Qwen2-VL loads in the user's process).
for _model_class in MODEL_CLASSES.values():
    AutoModelForImageTextToText.register(_model_class.config_class, _model_class, exist_ok=True)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHECKPOINT_FILES = ("config.json",)


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds a model (a complete saved stage, a downloaded checkpoint): its ``config.json``."""
    return all((Path(path) / name).is_file() for name in CHECKPOINT_FILES)


class CheckpointError(ValueError):
    """A model directory that is not a clinkd or Qwen2-VL checkpoint."""


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")  # weights and Trainer state (torch.save writes a zip)
ZIP_MAGIC = b"PK"  # a legacy (pre-zip) torch pickle starts otherwise and is not checked


def damage(path: Path) -> str | None:
    """Why a weight, Trainer-state or JSON file does not open (truncated, overwritten), or ``None``: the header of a
    safetensors file, the central directory of a torch zip (at its end, so a cut shows), a JSON file's text. Cheap:
    no tensor is read."""
    from safetensors import safe_open

    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt"):
                pass
        elif path.suffix in WEIGHT_SUFFIXES:
            with path.open("rb") as handle:
                if handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC:
                    zipfile.ZipFile(path).close()
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except Exception as error:  # SafetensorError, BadZipFile, JSONDecodeError, UnicodeDecodeError, OSError
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else 'unreadable'}"
    return None


class Damage(NamedTuple):
    """A file that does not open, and why; its text is the one-line report."""

    path: Path
    why: str

    def __str__(self) -> str:
        return f"{self.path} is damaged ({self.why})"


def first_damaged(paths: Iterable[Path]) -> Damage | None:
    """The first of ``paths`` that does not open (:func:`damage`), or ``None``."""
    for path in paths:
        why = damage(path)
        if why is not None:
            return Damage(path, why)
    return None


def folder_damage(folder: str | Path) -> Damage | None:
    """The first damaged file of a model or checkpoint folder (not its subfolders), or ``None``."""
    return first_damaged(sorted(path for path in Path(folder).iterdir() if path.is_file()))


def check_files(folder: str | Path) -> None:
    """:class:`CheckpointError` naming the first damaged file of a model or checkpoint folder
    (:func:`folder_damage`)."""
    damaged = folder_damage(folder)
    if damaged is not None:
        raise CheckpointError(str(damaged))


def model_class_for(config):
    """The clinkd class (stock positions unless the config records a strategy) for a config of a supported family."""
    try:
        return load_model_class(config)
    except ValueError as error:
        raise CheckpointError(str(error)) from None


def build_tiny(
    texts: Iterable[str],
    size: str,
    *,
    vocab: int,
    min_pixels: int,
    max_pixels: int,
    seed: int,
    rope: RopeStrategy = STOCK,
):
    """Train a tokenizer of ``vocab`` ids on ``texts`` and build a freshly initialised tiny model of ``size`` (seeded)
    using ``rope``, its processor resizing images into ``[min_pixels, max_pixels]``."""
    tokenizer = train_tokenizer(texts, vocab_size=vocab)
    processor = build_processor(tokenizer, min_pixels, max_pixels)
    config = tiny_config(tokenizer, size)
    set_rope_strategy(config, rope)
    torch.manual_seed(seed)
    model = model_class_for(config)(config)
    return model, processor


def load_checkpoint(
    path: str | Path,
    dtype: str = "float32",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    rope: RopeStrategy | None = None,
    quantization=None,
    allow_partial: Sequence[str] = (),
):
    """Load a model and its processor from a local directory (no hub access).

    ``rope=None`` keeps the strategy the checkpoint records (stock for a plain Qwen2-VL one);
    a strategy replaces it, e.g. to fine-tune a stock checkpoint with MCG-RoPE. ``quantization`` is a
    transformers quantisation config (QLoRA: :func:`clinkd.model.lora.quantization_config`).
    Every weight must load exactly (:func:`checked_from_pretrained`); ``allow_partial`` lists regexes
    of weight names that may be missing or unexpected (a deliberate partial load, e.g. a new head).
    A damaged file (truncated weights, a cut config) is a :class:`CheckpointError` naming it (:func:`check_files`).
    """
    from transformers import AutoConfig

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model directory {path} {unreachable_reason(path) or 'is not a directory'}")
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"{path} is not a clinkd or Qwen2-VL checkpoint: no {', '.join(missing)}")
    check_files(path)  # a truncated weight file: one line naming it, not the loader's nameless error
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if rope is not None:
        set_rope_strategy(config, rope)
    quantized = {} if quantization is None else {"quantization_config": quantization}
    model = checked_from_pretrained(
        model_class_for(config), path, allow_partial, config=config, dtype=DTYPES[dtype], **quantized
    )
    processor = load_processor(path)
    if min_pixels is not None and max_pixels is not None:
        set_pixel_budget(processor, min_pixels, max_pixels)
    return model, processor


def checked_from_pretrained(model_class, path: str | Path, allow_partial: Sequence[str] = (), **kwargs):
    """``model_class.from_pretrained(path)`` that fails instead of printing a load report: a missing,
    unexpected or mis-shaped weight (whose name matches none of the ``allow_partial`` regexes) raises
    :class:`CheckpointError` naming the folder and the weights. transformers would initialise a missing
    weight at random and carry on."""
    # ignore_mismatched_sizes: report mis-shaped weights in the loading info, so they are named (and opt-out-able) here.
    model, info = model_class.from_pretrained(
        str(path), output_loading_info=True, local_files_only=True, ignore_mismatched_sizes=True, **kwargs
    )
    problems = weight_problems(info, allow_partial)
    if problems:
        raise CheckpointError(
            f"{path}: the weights do not match {model_class.__name__}: {'; '.join(problems)} "
            "(a partial load on purpose: model.allow_partial, regexes of weight names)"
        )
    return model


def weight_problems(loading_info: dict, allow_partial: Sequence[str] = ()) -> list[str]:
    """One line per kind of problem in transformers' ``output_loading_info``, weight names grouped by layer."""
    allowed = [re.compile(pattern) for pattern in allow_partial]
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        names = [key[0] if isinstance(key, tuple) else key for key in loading_info.get(kind, ())]
        names = [name for name in names if not any(pattern.search(name) for pattern in allowed)]
        if names:
            problems.append(f"{kind.replace('_keys', '')} {len(names)}: {_grouped_names(names)}")
    problems += [f"error: {message}" for message in loading_info.get("error_msgs", ())]
    return problems


def _grouped_names(names: Iterable[str]) -> str:
    """``model.layers.*.mlp.up_proj.weight ×2, lm_head.weight``: layer numbers folded where several layers share a
    name, so the line stays readable."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(re.sub(r"\.\d+\.", ".*.", name), []).append(name)
    return ", ".join(
        f"{pattern} ×{len(members)}" if len(members) > 1 else members[0] for pattern, members in sorted(groups.items())
    )


def set_pixel_budget(processor, min_pixels: int, max_pixels: int) -> None:
    """Use the same resize budget at train and test time (written into the saved processor)."""
    # transformers 5 reads only ``size``; a min_pixels attribute would be passed on as a deprecated call argument.
    processor.image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}


def save_checkpoint(model, processor, path: str | Path, before_publish: Callable[[Path], None] | None = None) -> None:
    """Save into a temporary sibling, then rename: a crash never leaves a half-written model. The processor files are
    those of a stock checkpoint (:func:`clinkd.model.processor.save_processor`).
    ``before_publish(staging_dir)`` may rewrite the saved files before the rename (``clinkd export``)."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    save_processor(processor, staging, model.config.model_type)
    match_umask(staging)  # safetensors writes 0600: another user or container could not read the model
    if before_publish is not None:
        before_publish(staging)
    shutil.rmtree(path, ignore_errors=True)
    staging.rename(path)
