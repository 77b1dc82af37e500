"""Multi-process runs: rank helpers, sharded prediction with a deterministic merge, saving and teacher placement.

Every launcher clinkd supports (``torchrun``, ``accelerate launch``, ``deepspeed``) starts one process
per device and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; transformers' Trainer then runs DDP,
DeepSpeed ZeRO or FSDP. The helpers here cover what happens outside the Trainer:

* data and output written once (:func:`main_process_first`, :func:`is_main_process`);
* prediction split by index over the ranks and merged into one file ordered by index
  (:func:`write_predictions_sharded`), identical to a single-process run's rows;
* the trained weights gathered from ZeRO-3/FSDP shards and written once (:func:`save_trained`);
* a distillation teacher placed like the student: partitioned under ZeRO-3, never a silent full copy
  per rank when the student itself is sharded (:func:`prepare_teacher`).

With one process every helper reduces to the plain single-process behaviour.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from clinkd.batching import InputFormat
from clinkd.engine.generate import predictions_complete, write_predictions
from clinkd.io import atomic_write_jsonl, read_jsonl

T = TypeVar("T")


# ---- rank and world ---------------------------------------------------------------------------------
def rank() -> int:
    """Global rank: the process group's when it is up, else the launcher's ``RANK`` (0 when not launched)."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return rank() == 0


def local_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` on a GPU node, else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def init_distributed() -> None:
    """Start the process group when launched with ``WORLD_SIZE > 1`` (NCCL on GPUs, gloo on CPUs); no-op otherwise.

    Goes through accelerate's ``PartialState``, the same state the Trainer later uses, so the group is
    created once whichever comes first.
    """
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())


def deepspeed_cpu_state():
    """The process state for DeepSpeed on CPUs (tests, laptops): gloo group, real ranks, DeepSpeed mode.

    accelerate only starts a DeepSpeed run on an accelerator device; on a CPU-only host it would give
    every rank ``process_index 0`` of 1. This builds the CPU multi-process state (what ``use_cpu`` gives)
    and marks it DeepSpeed; ``TrainingArguments(accelerator_config={"use_configured_state": True})``
    then adopts it. DeepSpeed's communication layer is started on the same gloo group, as accelerate
    does on GPUs, so ``zero.Init`` (ZeRO-3 partitioning at load time) sees the real world size.
    """
    import deepspeed
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=True)
    state.distributed_type = DistributedType.DEEPSPEED
    deepspeed.init_distributed(dist_backend="gloo")
    return state


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the body first (e.g. generating or converting data), then the other ranks run it.

    Bodies that skip work already done (``ensure_synth``) thus do it exactly once, with no rank
    reading a half-written file.
    """
    init_distributed()
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


# ---- sharded prediction -------------------------------------------------------------------------------
def shard(items: Sequence[T], shard_rank: int, shards: int) -> list[T]:
    """Rank ``r`` of ``w`` takes items ``r, r + w, r + 2w, …``: global index ``g = r + w·j`` for its ``j``-th item.

    Strided rather than contiguous so every rank gets a similar mix when the test file is sorted by
    modality, and the shard sizes differ by at most one.
    """
    if not 0 <= shard_rank < shards:
        raise ValueError(f"shard rank {shard_rank} is outside 0..{shards - 1}")
    return list(items[shard_rank::shards])


def shard_dir(out_dir: Path, shard_rank: int, shards: int) -> Path:
    """Where rank ``r`` of ``w`` writes: the world size is in the name, so a rerun with another world size
    never mixes its local indices with these."""
    return out_dir / "shards" / f"{shard_rank:03d}-of-{shards:03d}"


def merge_shards(out_dir: Path, task: str, total: int, shards: int) -> Path:
    """Merge ``<out_dir>/shards/*-of-<shards>/<task>.jsonl`` into ``<out_dir>/<task>.jsonl``, ordered by index.

    A shard row's ``index`` is local (``j``); the merged row gets the global ``index = r + shards·j`` (see
    :func:`shard`). Raises ``ValueError`` naming the file and indices when a global index is missing or
    written twice, so an incomplete merge never replaces the output. The merged text depends only on the
    rows, not on which rank finished first.
    """
    rows: dict[int, dict] = {}
    for shard_rank in range(shards):
        path = shard_dir(out_dir, shard_rank, shards) / f"{task}.jsonl"
        if not path.is_file():
            continue
        for row in read_jsonl(path):
            global_index = shard_rank + shards * row["index"]
            if global_index in rows:
                raise ValueError(f"{path}: index {row['index']} (global {global_index}) is written twice")
            rows[global_index] = {**row, "index": global_index}
    missing = sorted(set(range(total)) - set(rows))
    extra = sorted(set(rows) - set(range(total)))
    if missing or extra:
        problems = [f"missing indices {missing[:10]}"] if missing else []
        problems += [f"unexpected indices {extra[:10]}"] if extra else []
        raise ValueError(f"{task}: merging {shards} shards under {out_dir / 'shards'}: {', '.join(problems)}")
    merged = out_dir / f"{task}.jsonl"
    atomic_write_jsonl(merged, (rows[index] for index in range(total)))
    return merged


def write_predictions_sharded(
    model,
    processor,
    tests: dict[str, list],
    out_dir: Path,
    predict_cfg,
    input_format: InputFormat = InputFormat(),
    selector=None,
) -> dict[str, Path]:
    """:func:`clinkd.engine.generate.write_predictions` over all ranks: each predicts its :func:`shard` of every task
    (resumable, in its own folder), then rank 0 writes ``<out_dir>/<TASK>.jsonl`` with all rows in index order.

    Every rank must call it; every rank returns the merged paths. With one process it is ``write_predictions``.
    A task whose merged file already has every index is not predicted again.
    """
    shards, me = world_size(), rank()
    if shards == 1:
        return write_predictions(model, processor, tests, out_dir, predict_cfg, input_format, selector)
    model.to(local_device())
    pending = {
        task: samples
        for task, samples in tests.items()
        if not predictions_complete(out_dir / f"{task}.jsonl", len(samples), exact=True)
    }
    write_predictions(
        model,
        processor,
        {task: shard(samples, me, shards) for task, samples in pending.items()},
        shard_dir(out_dir, me, shards),
        predict_cfg,
        input_format,
        selector,
    )
    barrier()
    if me == 0:
        for task, samples in pending.items():
            merge_shards(out_dir, task, len(samples), shards)
    barrier()
    return {task: out_dir / f"{task}.jsonl" for task in tests}


# ---- saving ------------------------------------------------------------------------------------------
def is_sharded(accelerator) -> bool:
    """Whether the parameters are split over ranks (ZeRO-3 or FSDP), so a rank's module holds no full weights."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.state.deepspeed_plugin.zero_stage == 3
    return accelerator.distributed_type == DistributedType.FSDP


def save_trained(trainer, processor, path: Path, merge_lora: bool = True, adapter_path: Path | None = None) -> None:
    """Write the trained model to ``path`` once, from rank 0; every rank must call it.

    Under ZeRO-3/FSDP the full weights are first gathered (a collective: rank 0 receives the
    consolidated state dict, 16-bit under ZeRO-3, which needs ``stage3_gather_16bit_weights_on_model_save``)
    and loaded into a copy of the model built on the meta device, so no rank ever holds two copies.
    A peft model writes its adapter to ``adapter_path`` and, with ``merge_lora``, the merged model to ``path``.
    """
    from clinkd.model.loading import save_checkpoint
    from clinkd.model.lora import export_lora, is_lora

    accelerator = trainer.accelerator
    state_dict = accelerator.get_state_dict(trainer.model_wrapped) if is_sharded(accelerator) else None
    if trainer.is_world_process_zero():
        model = accelerator.unwrap_model(trainer.model)
        if state_dict is not None:
            model = with_full_weights(model, state_dict)
        if is_lora(model):
            export_lora(model, processor, path, adapter_path, merge=merge_lora)
        else:
            save_checkpoint(model, processor, path)
    accelerator.wait_for_everyone()


def with_full_weights(model, state_dict: dict[str, torch.Tensor]):
    """A copy of ``model`` (plain or peft) built on the meta device whose parameters are ``state_dict``'s tensors
    and whose non-persistent buffers are copies of ``model``'s; a working model on the CPU.

    Raises ``ValueError`` naming the parameters the state dict does not provide.
    """
    from transformers.modeling_utils import set_zero3_state

    from clinkd.model.lora import is_lora

    # set_zero3_state: no zero.Init here, its partitioning collectives would wait for the other ranks forever.
    with torch.device("meta"), set_zero3_state():
        if is_lora(model):
            from peft import get_peft_model

            base = model.get_base_model()
            fresh = get_peft_model(type(base)(base.config), copy.deepcopy(model.peft_config[model.active_adapter]))
        else:
            fresh = type(model)(model.config)
    fresh.load_state_dict(state_dict, strict=False, assign=True)
    fresh.tie_weights()
    missing = [name for name, param in fresh.named_parameters() if param.is_meta]
    if missing:
        raise ValueError(f"the gathered state dict lacks {len(missing)} parameters, e.g. {missing[:3]}")
    # Buffers outside the state dict (rotary inv_freq) are never partitioned: copy them from the original.
    originals = dict(model.named_buffers())
    for name, buffer in list(fresh.named_buffers()):
        if buffer.is_meta:
            owner_name, _, buffer_name = name.rpartition(".")
            owner = fresh.get_submodule(owner_name)
            persistent = buffer_name not in owner._non_persistent_buffers_set
            owner.register_buffer(buffer_name, originals[name].detach().to("cpu", copy=True), persistent=persistent)
    return fresh


# ---- distillation teacher --------------------------------------------------------------------------------
def prepare_teacher(teacher, accelerator):
    """Place a frozen teacher for inference next to a student trained by ``accelerator`` (``trainer.accelerator``).

    * DeepSpeed ZeRO-3: the teacher is wrapped by ``deepspeed.initialize`` with the student's ZeRO-3
      config minus optimizer and scheduler, so its parameters are partitioned over the ranks like the
      student's (each rank stores 1/world of them; they are gathered layer by layer in the forward pass).
      The returned engine is called like the model.
    * DeepSpeed ZeRO-0/1/2: parameters are never partitioned in these stages, so the teacher is replicated
      on every rank's device by design (stage 0 engine: no optimizer).
    * FSDP: wrapped by the accelerator in evaluation mode, so it is sharded like the student.
    * DDP or one process: moved to the rank's device (a full copy per rank, as the student).

    The teacher is set to ``eval()`` with ``requires_grad=False`` in every case.
    """
    from accelerate.utils import DistributedType

    teacher.eval().requires_grad_(False)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        import deepspeed

        config = teacher_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config, _hidden_size(teacher))
        engine, *_ = deepspeed.initialize(model=teacher, config=config)
        engine.eval()
        return engine
    if accelerator.distributed_type == DistributedType.FSDP:
        return accelerator.prepare_model(teacher, evaluation_mode=True)
    return teacher.to(accelerator.device)


def teacher_deepspeed_config(student_config: dict, hidden_size: int | None) -> dict:
    """The student's (resolved) DeepSpeed config for an inference-only teacher.

    No optimizer or scheduler; ZeRO-3 keeps stage 3 (partitioned teacher) with the ``"auto"`` bucket sizes
    resolved from the teacher's hidden size ``h`` as transformers does for the student (reduce bucket h²,
    prefetch bucket 0.9·h², persistence threshold 10·h); any other stage becomes stage 0 (replicated,
    no partitioned optimizer state to hold).
    """
    config = copy.deepcopy(student_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage", 0) != 3:
        config["zero_optimization"] = {"stage": 0}
        return config
    zero.pop("offload_optimizer", None)
    if hidden_size is not None:
        defaults = {
            "reduce_bucket_size": hidden_size * hidden_size,
            "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            "stage3_param_persistence_threshold": 10 * hidden_size,
        }
        for key, value in defaults.items():
            if zero.get(key, "auto") == "auto":
                zero[key] = value
    return config


def _hidden_size(model) -> int | None:
    config = model.config
    text = getattr(config, "text_config", None)
    return getattr(text, "hidden_size", None) or getattr(config, "hidden_size", None)
