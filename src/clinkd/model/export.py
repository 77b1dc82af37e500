"""``clinkd export``: a trained model as a folder that loads without clinkd installed.

* Stock positions (``rope.name: qwen2vl``, no paper frequencies): a plain ``Qwen2VLForConditionalGeneration``
  (or ``Qwen2_5_VL…``, ``Qwen3VL…``, ``Qwen3_5…``) checkpoint: ``architectures`` names the stock class (the
  processor files name the stock processors, as every saved model's do) and no clinkd key is left in
  ``config.json``. A Qwen3.5 export keeps its MTP layer (``mtp.*``), which stock transformers skips on load and
  serving engines use for speculative decoding.
* Any other strategy (MCG-RoPE, the released patch, paper frequencies): the same weights plus clinkd's
  own modeling file and position maths as remote code (``modeling_clinkd.py`` = :mod:`clinkd.model.rope`,
  ``positions.py`` = :mod:`clinkd.model.positions`, copied as they are) and an ``auto_map``, so
  ``AutoModelForImageTextToText.from_pretrained(dir, trust_remote_code=True)`` rebuilds the same positions.
  The text ``rope_type`` is guarded (:data:`clinkd.model.rope.GUARDED_ROPE_TYPE`): stock transformers
  refuses the folder instead of silently running stock positions.

Either way the processor files are a stock checkpoint's (:func:`clinkd.model.loading.save_checkpoint` writes them
for every saved model), so ``AutoProcessor.from_pretrained(dir)`` resolves the stock processor and video processor.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from clinkd.model import positions, rope
from clinkd.model.loading import CheckpointError, is_checkpoint, load_checkpoint, save_checkpoint
from clinkd.model.positions import STOCK

REMOTE_MODELING = "modeling_clinkd"
STOCK_MODELS = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_5": "Qwen3_5ForConditionalGeneration",
}


@dataclass(frozen=True)
class Export:
    source: Path
    out: Path
    remote_code: bool  # False: a plain stock checkpoint
    strategy: dict


def final_model_dir(run_or_model: Path) -> Path:
    """A checkpoint folder as given, or the final model of a ``clinkd run`` folder: the last reflective
    round's, else the distilled student, else plain SFT's."""
    run_or_model = Path(run_or_model)
    if is_checkpoint(run_or_model):
        return run_or_model
    summary = run_or_model / "reflect" / "summary.json"
    reflected = json.loads(summary.read_text(encoding="utf-8")).get("model_dir") if summary.is_file() else None
    candidates = [Path(reflected)] if reflected else []
    candidates += [run_or_model / "distill" / "student" / "model", run_or_model / "sft" / "model"]
    for candidate in candidates:
        if is_checkpoint(candidate):
            return candidate
    raise CheckpointError(
        f"{run_or_model}: neither a checkpoint (no config.json) nor a clinkd run folder with a final model"
    )


def export_model(run_or_model: str | Path, out: str | Path) -> Export:
    """Write the final model of ``run_or_model`` to ``out`` (atomically) in the form stock tools load."""
    source = final_model_dir(Path(run_or_model))
    model, processor = load_checkpoint(source)
    strategy = rope.rope_strategy_of(model.config)
    remote_code = strategy != STOCK

    def as_exported(config: dict) -> None:
        if remote_code:
            _as_remote_code(config, type(model).__name__, type(model.model).__name__)
        else:
            config.pop(rope.ROPE_CONFIG_KEY, None)
            config["architectures"] = [STOCK_MODELS[model.config.model_type]]

    def rewrite(staging: Path) -> None:
        if remote_code:  # clinkd's own files, copied unchanged, are the remote code
            shutil.copyfile(rope.__file__, staging / f"{REMOTE_MODELING}.py")
            shutil.copyfile(positions.__file__, staging / "positions.py")
        _edit_json(staging / "config.json", as_exported)

    save_checkpoint(model, processor, out, before_publish=rewrite)
    return Export(source, Path(out), remote_code, strategy.to_dict())


def _as_remote_code(config: dict, class_name: str, base_class_name: str) -> None:
    """``auto_map`` to clinkd's classes in the copied modeling file, and the guarded rope type."""
    config["architectures"] = [class_name]
    config["auto_map"] = {
        "AutoModel": f"{REMOTE_MODELING}.{base_class_name}",
        "AutoModelForImageTextToText": f"{REMOTE_MODELING}.{class_name}",
    }
    config["text_config"]["rope_parameters"]["rope_type"] = rope.GUARDED_ROPE_TYPE


def _edit_json(path: Path, edit) -> None:
    """Rewrite a saved JSON file after ``edit(document)`` changed it in place."""
    document = json.loads(path.read_text(encoding="utf-8"))
    edit(document)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
