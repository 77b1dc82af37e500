"""LoRA and QLoRA through peft: wrap, merge, export.

A LoRA layer replaces ``y = W x`` by ``y = W x + (alpha / r) · B A x`` with ``A ∈ R^{r×d_in}`` (random
init) and ``B ∈ R^{d_out×r}`` (zero init, so the wrapped model starts exactly at the base model); only
``A`` and ``B`` train. Merging writes ``W' = W + (alpha / r) · B A`` into the base layer, after which the
plain model computes the same function with no adapter (up to floating-point rounding).

Which layers get adapters: the ``nn.Linear`` modules whose last name component is in
``lora.target_modules`` and which lie in a part the ``train.freeze_*`` knobs leave trainable (vision
tower, merger, LLM: :func:`model_parts`; the recipe's ``TrainConfig.frozen_parts``). The paper set-up freezes the
vision tower and merger, so
the default targets the LLM's attention and MLP projections.

QLoRA (``lora.quantize: 4bit|8bit``) loads the base through bitsandbytes (CUDA only) with
:func:`quantization_config`; its adapters are merged offline into a 16-bit base with
:func:`merge_adapter_checkpoint` (merging into quantised weights would round them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

ADAPTER_DIR = "adapter"
# The positions an adapter was trained with: a hub base has none recorded, and merging must not fall back to stock.
ADAPTER_POSITIONS_FILE = "clinkd_rope.json"


def is_lora(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _require_peft():
    try:
        import peft
    except ImportError as error:
        raise ImportError("train.lora needs peft: pip install 'clinkd[lora]'") from error
    return peft


def model_parts(model) -> dict[str, list[nn.Module]]:
    """The modules of each part the ``train.freeze_*`` knobs name: the vision tower, the merger (with Qwen3-VL's
    DeepStack mergers, which also project vision features into the LLM) and the LLM (without ``lm_head``)."""
    visual = model.model.visual
    mergers = [visual.merger, *getattr(visual, "deepstack_merger_list", ())]
    merger = [module for merger in mergers for module in merger.modules()]
    in_merger = {id(module) for module in merger}
    return {
        "vision_tower": [module for module in visual.modules() if id(module) not in in_merger],
        "merger": merger,
        "llm": list(model.model.language_model.modules()),
    }


def lora_targets(model, target_modules: Sequence[str], frozen: Mapping[str, bool]) -> list[str]:
    """Full module names of the ``nn.Linear`` layers named in ``target_modules`` that lie in a part of
    :func:`model_parts` that ``frozen`` leaves trainable (see the module docstring).

    Raises ``ValueError`` when no layer qualifies, naming the targets and the frozen parts.
    """
    parts = {part: ({id(module) for module in modules}, frozen[part]) for part, modules in model_parts(model).items()}
    allowed = set().union(*(ids for ids, frozen in parts.values() if not frozen))
    wanted = set(target_modules)
    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in wanted and id(module) in allowed
    ]
    if not targets:
        frozen = [part for part, (_, is_frozen) in parts.items() if is_frozen]
        raise ValueError(
            f"train.lora.target_modules {sorted(wanted)}: no nn.Linear layer of that name in the unfrozen parts "
            f"(frozen: {', '.join(frozen) or 'none'})"
        )
    return targets


def apply_lora(
    model,
    target_modules: Sequence[str],
    frozen: Mapping[str, bool],
    *,
    rank: int,
    alpha: float,
    dropout: float,
    gradient_checkpointing: bool = False,
):
    """Wrap ``model`` in a peft ``PeftModel`` with adapters of ``rank`` (scale ``alpha / rank``, ``dropout``) on
    :func:`lora_targets`; only the adapters train.

    The base model is modified in place (its target layers become LoRA layers), so a caller holding
    ``model`` sees the adapters too. A bitsandbytes-quantised base is first prepared for k-bit
    training (layer norms in fp32, input gradients on, ``gradient_checkpointing`` as training uses it).
    """
    peft = _require_peft()
    if getattr(model, "is_quantized", False):
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_targets(model, target_modules, frozen),
        bias="none",
    )
    return peft.get_peft_model(model, config)


def trainable_parameters(model) -> int:
    return sum(param.numel() for param in model.parameters() if param.requires_grad)


def quantization_config(quantize: str, compute_dtype: torch.dtype = torch.bfloat16):
    """The ``BitsAndBytesConfig`` for QLoRA's ``quantize`` (``none``, ``4bit``, ``8bit``; pass it as
    ``quantization_config=`` to ``from_pretrained``); None for ``none``. ValueError without a CUDA GPU.

    4 bit is QLoRA's recipe: NF4 with double quantisation, compute in ``compute_dtype``. The vision
    tower (``visual``) and ``lm_head`` stay in 16 bit.
    """
    if quantize == "none":
        return None
    if not torch.cuda.is_available():
        raise ValueError(f"{quantize} quantisation (bitsandbytes) needs a CUDA GPU")
    from transformers import BitsAndBytesConfig

    skip = ["visual", "lm_head"]
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip,
    )


def merge_lora(model):
    """The base model with every adapter merged into its layers (``W' = W + (alpha/r)·B A``), adapters removed."""
    return model.merge_and_unload()


def export_lora(model, processor, path: Path, adapter_path: Path | None = None, merge: bool = True) -> None:
    """Save a trained peft model: the adapter (+ processor) to ``adapter_path``; with ``merge``, the merged
    model to ``path`` as a plain checkpoint that :func:`clinkd.model.loading.load_checkpoint` reads.

    Merging modifies ``model``'s base layers in place (no second copy of the weights).
    """
    from clinkd.io import atomic_write_json
    from clinkd.model.loading import save_checkpoint
    from clinkd.model.processor import save_processor
    from clinkd.model.rope import rope_strategy_of

    if adapter_path is not None:
        model.save_pretrained(str(adapter_path))
        save_processor(processor, adapter_path, model.config.model_type)
        atomic_write_json(Path(adapter_path) / ADAPTER_POSITIONS_FILE, rope_strategy_of(model.config).to_dict())
    if merge:
        save_checkpoint(merge_lora(model), processor, path)


def load_lora(base_model, adapter_dir: str | Path, trainable: bool = False):
    """``base_model`` with the adapter saved in ``adapter_dir`` attached."""
    peft = _require_peft()
    return peft.PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=trainable)


def merge_adapter_checkpoint(
    base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, dtype: str = "bfloat16"
) -> Path:
    """Offline export: load the 16-bit base checkpoint, attach the adapter, merge, save to ``out_dir``.

    The route for QLoRA adapters and for adapters trained under ZeRO-3/FSDP when only the adapter was kept.
    The processor is the adapter's when saved with it, else the base's; the positions are the ones the
    adapter was trained with (:data:`ADAPTER_POSITIONS_FILE`), else the base's.
    """
    from clinkd.model.loading import load_checkpoint, save_checkpoint
    from clinkd.model.positions import RopeStrategy
    from clinkd.model.processor import load_processor

    adapter_dir = Path(adapter_dir)
    positions = adapter_dir / ADAPTER_POSITIONS_FILE
    rope = RopeStrategy.from_dict(json.loads(positions.read_text(encoding="utf-8"))) if positions.is_file() else None
    base, processor = load_checkpoint(base_dir, dtype, rope=rope)
    if any((adapter_dir / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        processor = load_processor(adapter_dir)
    save_checkpoint(merge_lora(load_lora(base, adapter_dir)), processor, Path(out_dir))
    return Path(out_dir)
