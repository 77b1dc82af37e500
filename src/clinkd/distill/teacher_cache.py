"""The cached teacher: its top-k log-probabilities per answer token, in sharded safetensors with a manifest.

Layout of a cache folder::

    manifest.json              {"format", "spec", "complete", "shards": [...], "n_rows"}
    shard-00000.safetensors    examples [0, S): indices int32 [R, k], logprobs float32 [R, k], offsets int64 [S + 1]
    shard-00001.safetensors    examples [S, 2S) ...

Row ``r`` of a shard is one answer token: ``indices[r]`` are the teacher's k most likely ids (sliced to
the student's vocabulary) and ``logprobs[r]`` their log softmax(z_t / T) at the KD temperature, sorted
by decreasing probability (``clinkd.losses.topk_logprobs``). Example ``i`` of the shard owns rows
``offsets[i] : offsets[i + 1]``, in sequence order. The answer tokens are the rows the KD loss scores
(``clinkd.losses.answer_mask`` with the cache's ``shift_labels`` and ``ignore_index``).

The manifest's ``spec`` (:class:`CacheSpec`) ties the numbers to what produced them: the examples, the
tokenizer, the teacher weights, the student vocabulary, k, the KD temperature and row rule, and the
position strategy. A cache whose spec differs from the run's is refused (:class:`CacheMismatchError`),
never silently reused or overwritten. Shards are written atomically and recorded in the manifest one
by one, so an interrupted teacher pass resumes at the first missing shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from clinkd.batching import ChatExample, InputFormat, TrainCollator
from clinkd.distill.batches import batch_position_ids, model_inputs
from clinkd.io import atomic_write_json, match_umask
from clinkd.losses import KDLossConfig, answer_mask, topk_logprobs
from clinkd.model.box_convention import BoxCoordinates
from clinkd.model.positions import RopeStrategy

FORMAT = 1
MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


class CacheMismatchError(ValueError):
    """A teacher cache written for other inputs, another teacher or another configuration."""


@dataclass(frozen=True)
class CacheSpec:
    """Everything the cached numbers depend on; two runs may share a cache only if their specs are equal."""

    dataset_sha256: str
    n_examples: int
    tokenizer_sha256: str
    teacher_sha256: str
    vocab_size: int  # the student's: teacher logits are sliced to it before the softmax
    top_k: int
    temperature: float
    shift_labels: bool
    ignore_index: int
    positions: dict  # the RopeStrategy (model_dump) the teacher's position ids were built with


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dataset_fingerprint(
    examples: Sequence[ChatExample], input_format: InputFormat, image_size: dict, boxes: BoxCoordinates
) -> str:
    """sha256 of what fixes the teacher's inputs and targets.

    Per example, in order: the image file name and byte size and every turn's (question, answer);
    then the box markup, the square resample, the image processor's pixel budget (``image_size``,
    e.g. ``{"shortest_edge": 12544, "longest_edge": 12544}``) and the model's box convention (``boxes``).
    """
    rows = [
        [example.image.name, example.image.stat().st_size, [[turn.question, turn.answer] for turn in example.turns]]
        for example in examples
    ]
    settings = {
        "box_style": input_format.box_style,
        "square_size": input_format.square_size,
        "image_size": dict(image_size),
        "boxes": repr(boxes),
    }
    return sha256_text(json.dumps([rows, settings], ensure_ascii=False))


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's serialised vocabulary, merges, special tokens and chat template.

    The backend's ``padding`` and ``truncation`` entries are left out: they are call-time state that
    batching sets, not part of the token-id mapping.
    """
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    mapping = {key: value for key, value in backend.items() if key not in ("padding", "truncation")}
    return sha256_text(json.dumps([mapping, tokenizer.chat_template], sort_keys=True, ensure_ascii=False))


def teacher_fingerprint(model_dir: str | Path) -> str:
    """sha256 over ``config.json`` and every ``*.safetensors`` weight file of a checkpoint, in name order."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    for path in [model_dir / "config.json", *sorted(model_dir.glob("*.safetensors"))]:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def spec_differences(cached: dict, expected: dict) -> list[str]:
    """``"key: cache X, run Y"`` for every spec key whose values differ (missing keys included)."""
    keys = sorted(set(cached) | set(expected))
    return [
        f"{key}: cache {cached.get(key)!r}, run {expected.get(key)!r}"
        for key in keys
        if cached.get(key) != expected.get(key)
    ]


def read_manifest(cache_dir: str | Path, spec: CacheSpec) -> dict | None:
    """The manifest of ``cache_dir`` (None when there is none), after checking it was written for ``spec``.

    Raises :class:`CacheMismatchError` naming every differing key when the format or spec differ.
    """
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    differences = (
        [] if manifest.get("format") == FORMAT else [f"format: cache {manifest.get('format')!r}, run {FORMAT}"]
    )
    differences += spec_differences(manifest.get("spec", {}), asdict(spec))
    if differences:
        raise CacheMismatchError(
            f"teacher cache {path} was written for a different run ({'; '.join(differences)}); "
            "delete that folder or set distill.cache_dir to a new one"
        )
    return manifest


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


def save_shard(path: Path, indices: torch.Tensor, logprobs: torch.Tensor, offsets: torch.Tensor) -> None:
    """Write one shard through a temporary file and an atomic rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({"indices": indices.contiguous(), "logprobs": logprobs.contiguous(), "offsets": offsets}, tmp)
        match_umask(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@torch.no_grad()
def teacher_topk_rows(
    teacher,
    collator: TrainCollator,
    examples: Sequence[ChatExample],
    spec: CacheSpec,
    kd_config: KDLossConfig,
    strategy: RopeStrategy,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(indices int32 [R, k], logprobs fp32 [R, k], counts int64 [n])`` for ``examples``, in order.

    ``counts[i]`` is the number of answer rows of example ``i``; its rows follow those of example ``i-1``.
    The teacher runs on exactly the student's collated batches, with position ids built with ``strategy``.
    """
    merge_size = collator.processor.image_processor.merge_size
    all_indices, all_logprobs, all_counts = [], [], []
    for start in range(0, len(examples), batch_size):
        batch = {key: value.to(teacher.device) for key, value in collator(examples[start : start + batch_size]).items()}
        position_ids = batch_position_ids(batch, strategy, merge_size)
        logits = teacher(**model_inputs(batch), position_ids=position_ids).logits
        indices, logprobs = topk_logprobs(
            logits, batch["labels"], spec.top_k, kd_config, student_vocab_size=spec.vocab_size
        )
        all_indices.append(indices.to("cpu", torch.int32))
        all_logprobs.append(logprobs.cpu())
        all_counts.append(answer_mask(batch["labels"], kd_config).sum(dim=1).cpu())
    return torch.cat(all_indices), torch.cat(all_logprobs), torch.cat(all_counts)


def write_teacher_cache(
    teacher,
    collator: TrainCollator,
    examples: Sequence[ChatExample],
    spec: CacheSpec,
    cache_dir: str | Path,
    kd_config: KDLossConfig,
    *,
    batch_size: int,
    shard_examples: int,
) -> dict:
    """Run the teacher once over ``examples`` and write the cache; return the complete manifest.

    ``kd_config`` must agree with ``spec`` (temperature, shift_labels, ignore_index). Shards already
    recorded in a matching manifest are kept (with the shard size it started with); a manifest for another
    spec raises :class:`CacheMismatchError`.
    """
    expected = {
        "temperature": kd_config.temperature,
        "shift_labels": kd_config.shift_labels,
        "ignore_index": kd_config.ignore_index,
    }
    if any(getattr(spec, key) != value for key, value in expected.items()):
        raise ValueError(f"write_teacher_cache: kd_config {expected} disagrees with the cache spec {asdict(spec)}")
    if len(examples) != spec.n_examples:
        raise ValueError(f"write_teacher_cache: {len(examples)} examples but the spec says {spec.n_examples}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(cache_dir, spec) or {
        "format": FORMAT,
        "spec": asdict(spec),
        "complete": False,
        "shard_examples": shard_examples,
        "shards": [],
    }
    if manifest["complete"]:
        return manifest
    strategy = RopeStrategy.from_dict(spec.positions)
    shard_examples = manifest["shard_examples"]  # a resumed pass keeps the layout it started with
    done = {shard["first_example"] for shard in manifest["shards"]}
    for number, first in enumerate(range(0, len(examples), shard_examples)):
        if first in done:
            continue
        chunk = examples[first : first + shard_examples]
        indices, logprobs, counts = teacher_topk_rows(teacher, collator, chunk, spec, kd_config, strategy, batch_size)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        save_shard(cache_dir / shard_name(number), indices, logprobs, offsets)
        manifest["shards"].append(
            {"file": shard_name(number), "first_example": first, "n_examples": len(chunk), "n_rows": int(offsets[-1])}
        )
        atomic_write_json(cache_dir / MANIFEST, manifest)
        log.info("teacher cache: shard %d (%d examples, %d rows) written", number, len(chunk), int(offsets[-1]))
    manifest["shards"].sort(key=lambda shard: shard["first_example"])
    manifest["n_rows"] = sum(shard["n_rows"] for shard in manifest["shards"])
    manifest["complete"] = True
    atomic_write_json(cache_dir / MANIFEST, manifest)
    return manifest


class TeacherCache:
    """Read access to a complete cache written for ``spec``; shards are memory-mapped, rows read on demand."""

    def __init__(self, cache_dir: str | Path, spec: CacheSpec):
        self.cache_dir = Path(cache_dir)
        self.spec = spec
        manifest = read_manifest(self.cache_dir, spec)
        if manifest is None or not manifest["complete"]:
            state = "has no manifest" if manifest is None else "is incomplete (its teacher pass was interrupted)"
            raise CacheMismatchError(f"teacher cache {self.cache_dir} {state}; rerun the distill stage to write it")
        self.shards = manifest["shards"]
        self.shard_examples = manifest["shard_examples"]
        self._handles: dict[int, object] = {}
        self._offsets: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.spec.n_examples

    def _shard(self, example: int) -> tuple[object, torch.Tensor, int]:
        """(open shard, its row offsets, the example's position in it) for a global example index."""
        if not 0 <= example < self.spec.n_examples:
            raise IndexError(
                f"teacher cache {self.cache_dir}: example {example} is outside [0, {self.spec.n_examples})"
            )
        number = example // self.shard_examples
        if number not in self._handles:
            handle = safe_open(str(self.cache_dir / self.shards[number]["file"]), framework="pt")
            self._handles[number] = handle
            self._offsets[number] = handle.get_tensor("offsets")
        return self._handles[number], self._offsets[number], example - self.shards[number]["first_example"]

    def row_count(self, example: int) -> int:
        """The number of answer rows cached for a global example index."""
        _, offsets, local = self._shard(example)
        return int(offsets[local + 1] - offsets[local])

    def rows(self, examples: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices int64 [N, k], logprobs fp32 [N, k])``: the rows of ``examples`` concatenated in that order.

        This is the (b, t) row-major order in which ``sparse_kd_divergence`` scores a batch of those examples.
        """
        indices, logprobs = [], []
        for example in examples:
            handle, offsets, local = self._shard(example)
            start, stop = int(offsets[local]), int(offsets[local + 1])
            indices.append(handle.get_slice("indices")[start:stop])
            logprobs.append(handle.get_slice("logprobs")[start:stop])
        return torch.cat(indices).long(), torch.cat(logprobs)
