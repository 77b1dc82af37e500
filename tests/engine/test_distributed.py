"""Distributed helpers: sharding and merging, teacher config, gathered weights; multi-process runs (slow).

The multi-process tests launch ``torchrun --nproc_per_node 2`` (gloo on CPU) and compare the per-step
losses of ``clinkd train`` / ``clinkd distill`` with a single-process run at the same global batch
(8 = 1 × 8 = 2 × 4). Measured on the 2-core CI machine: DDP, ZeRO-2 and ZeRO-3 SFT and DDP distillation
agree with single-process training to < 1e-6 over 4 steps; the tests allow ``LOSS_TOLERANCE``.
The first DeepSpeed run JIT-compiles DeepSpeed's CPU communication op (about a CPU-minute, cached in
``~/.cache/torch_extensions``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clinkd.config import PredictConfig, load_config
from clinkd.engine import distributed
from clinkd.engine.distributed import (
    merge_shards,
    shard,
    shard_dir,
    teacher_deepspeed_config,
    with_full_weights,
    write_predictions_sharded,
)

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-5  # the largest difference of any weight after the STEPS steps: the same model, up to rounding
STEPS = 4


# ---- sharding and merging -----------------------------------------------------------------------
@pytest.mark.parametrize("total,shards", [(10, 3), (7, 2), (2, 4), (0, 2)])
def test_shards_cover_every_index_once_and_differ_in_size_by_at_most_one(total, shards):
    parts = [shard(range(total), r, shards) for r in range(shards)]
    assert sorted(i for part in parts for i in part) == list(range(total))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert all(part[j] == r + shards * j for r, part in enumerate(parts) for j in range(len(part)))


def test_shard_rank_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        shard([1, 2], 2, 2)


def _write_shard(out: Path, task: str, rank: int, shards: int, local_indices, order=None):
    path = shard_dir(out, rank, shards) / f"{task}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"x{rank}-{j}", "response": f"r{rank + shards * j}", "index": j} for j in local_indices]
    path.write_text("".join(json.dumps(row) + "\n" for row in (rows if order is None else [rows[k] for k in order])))


def test_merge_orders_rows_by_global_index_whatever_the_shard_row_order(tmp_path):
    for name, order in (("a", None), ("b", [2, 0, 1])):
        out = tmp_path / name
        _write_shard(out, "VG", 0, 2, [0, 1, 2], order)
        _write_shard(out, "VG", 1, 2, [0, 1])
        merge_shards(out, "VG", 5, 2)
    merged = (tmp_path / "a" / "VG.jsonl").read_text()
    assert merged == (tmp_path / "b" / "VG.jsonl").read_text()
    rows = [json.loads(line) for line in merged.splitlines()]
    assert [row["index"] for row in rows] == [0, 1, 2, 3, 4]
    assert [row["response"] for row in rows] == [f"r{i}" for i in range(5)]


def test_incomplete_or_duplicated_shards_never_replace_the_output(tmp_path):
    _write_shard(tmp_path, "VG", 0, 2, [0, 1, 2])
    _write_shard(tmp_path, "VG", 1, 2, [0])  # globals 0, 2, 4 and 1: 3 is missing
    with pytest.raises(ValueError, match=r"missing indices \[3\]"):
        merge_shards(tmp_path, "VG", 5, 2)
    assert not (tmp_path / "VG.jsonl").exists()
    _write_shard(tmp_path, "VG", 1, 2, [0, 1, 1])
    with pytest.raises(ValueError, match="written twice"):
        merge_shards(tmp_path, "VG", 5, 2)


def _synth(tmp_path_factory):
    from clinkd.synth import generate

    data = tmp_path_factory.mktemp("synth")
    generate(data, seed=0, images=16, test_per_cell=1)
    return data


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    return _synth(tmp_path_factory)


def test_sharded_prediction_equals_single_process_prediction(
    tmp_path, synth_data, tiny_model, tiny_processor, monkeypatch
):
    """Two ranks simulated in turn (rank 1 finishes first); the merge must equal the single-process file."""
    from clinkd.data.medgrit import load_test_split

    tests = {
        task: samples[:3]
        for task, samples in load_test_split(synth_data, synth_data / "images").items()
        if task in ("VG", "RC")
    }
    predict_cfg = PredictConfig(batch_size=2, max_new_tokens={"VG": 4, "RC": 4})
    single = write_predictions_sharded(tiny_model, tiny_processor, tests, tmp_path / "single", predict_cfg)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for rank in (1, 0):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        sharded = write_predictions_sharded(tiny_model, tiny_processor, tests, tmp_path / "sharded", predict_cfg)
    for task in tests:
        assert sharded[task].read_text() == single[task].read_text()
    assert sorted(p.name for p in (tmp_path / "sharded" / "shards").iterdir()) == ["000-of-002", "001-of-002"]


# ---- teacher placement and gathered weights ---------------------------------------------------------
def test_teacher_config_drops_the_optimizer_and_keeps_zero3_partitioning():
    student = {
        "optimizer": {"type": "AdamW"},
        "scheduler": {"type": "WarmupLR"},
        "train_micro_batch_size_per_gpu": 2,
        "zero_optimization": {
            "stage": 3,
            "offload_optimizer": {"device": "cpu"},
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": 1000,
            "stage3_param_persistence_threshold": "auto",
        },
    }
    config = teacher_deepspeed_config(student, hidden_size=10)
    assert "optimizer" not in config and "scheduler" not in config
    assert config["zero_optimization"] == {
        "stage": 3,
        "reduce_bucket_size": 100,
        "stage3_prefetch_bucket_size": 1000,
        "stage3_param_persistence_threshold": 100,
    }
    assert student["zero_optimization"]["reduce_bucket_size"] == "auto"  # the student's config is not modified
    assert teacher_deepspeed_config({"zero_optimization": {"stage": 2, "overlap_comm": True}}, 10)[
        "zero_optimization"
    ] == {"stage": 0}


def test_full_weights_copy_matches_the_model(tiny_model):
    state = {name: tensor.clone() + 1.0 for name, tensor in tiny_model.state_dict().items()}
    copy = with_full_weights(tiny_model, state)
    for name, tensor in copy.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert copy.lm_head.weight.data_ptr() == copy.model.language_model.embed_tokens.weight.data_ptr()  # tied again
    missing = dict(state)
    missing.pop("model.language_model.norm.weight")
    with pytest.raises(ValueError, match="lacks 1 parameters"):
        with_full_weights(tiny_model, missing)


def test_training_arguments_turn_on_non_reentrant_checkpointing(tmp_path):
    from clinkd.engine.sft import SftSettings, training_arguments

    args = training_arguments(SftSettings.of(load_config(None, ["train.gradient_checkpointing=true"])), tmp_path)
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert not training_arguments(SftSettings.of(load_config(None)), tmp_path).activation_checkpointing
    assert args.deepspeed is None


def test_rank_and_world_come_from_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (3, 4, 1)
    assert not distributed.is_main_process()


# ---- multi-process runs ------------------------------------------------------------------------------------
def _recipe(tmp_path: Path, data: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'runs'}\n"
        f"data: {{dir: {data}, synth: {{enabled: false}}}}\n"
        "model: {init: scratch, size: xs, tokenizer_vocab: 400}\n"
        f"train: {{max_steps: {STEPS}, logging_steps: 1, save_steps: 1000, lr: 1.0e-3, warmup_ratio: 0.0, "
        "retrieval_loss: 0}\n"
    )
    return path


def _torchrun(args: list[str], cwd: Path, timeout: int = 900) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def _losses(train_log: Path) -> list[float]:
    history = json.loads(train_log.read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


DISTILL = ["distill.targets=ground_truth", "distill.mode=online"]  # a given teacher, online: only the KD trainer runs


@pytest.fixture(scope="module")
def single_process_runs(synth_data, tmp_path_factory):
    """The references, in this process at global batch 8: `clinkd train`'s code path, then `clinkd distill`'s
    with that model as the teacher. Returns (SFT losses, KD losses, teacher dir = the SFT model, KD student dir)."""
    from clinkd.batching import training_examples
    from clinkd.engine.sft import SftSettings, run_sft
    from clinkd.recipes.distill import run_distill
    from clinkd.recipes.inputs import initial_model, load_dataset

    tmp = tmp_path_factory.mktemp("single")
    cfg = load_config(_recipe(tmp, synth_data), ["name=single", "train.batch_size=8"])
    dataset = load_dataset(cfg)
    model, processor = initial_model(cfg, dataset.train)
    run_sft(
        SftSettings.of(cfg),
        model,
        processor,
        training_examples(dataset.train, cfg.data.train_turns),
        cfg.run_dir / "sft",
    )
    teacher = cfg.run_dir / "sft" / "model"
    kd = load_config(
        _recipe(tmp, synth_data), ["name=single-kd", "train.batch_size=8", f"distill.teacher={teacher}", *DISTILL]
    )
    run_distill(kd, dataset.train, kd.run_dir, lambda recipe: initial_model(recipe, dataset.train))
    student = kd.run_dir / "distill" / "student"
    return (
        _losses(cfg.run_dir / "sft" / "train_log.json"),
        _losses(student / "train_log.json"),
        teacher,
        student / "model",
    )


def _deepspeed(engine: str) -> list[str]:
    if engine == "ddp":
        return []
    pytest.importorskip("deepspeed")
    return [f"train.deepspeed={ROOT / 'configs' / 'deepspeed' / f'{engine}.json'}"]


def _assert_same_weights(model_dir: Path, reference_dir: Path) -> None:
    """Every weight of the saved model equals the reference's (names, shapes and values, up to rounding)."""
    from safetensors.torch import load_file

    weights, reference = load_file(model_dir / "model.safetensors"), load_file(reference_dir / "model.safetensors")
    assert weights.keys() == reference.keys()
    assert all(weights[name].shape == reference[name].shape for name in reference)
    worst = max(reference, key=lambda name: (weights[name].float() - reference[name].float()).abs().max().item())
    difference = (weights[worst].float() - reference[worst].float()).abs().max().item()
    assert difference < WEIGHT_TOLERANCE, f"{worst} differs by {difference}"


def _assert_close(losses: list[float], reference: list[float]) -> None:
    assert len(losses) == len(reference) == STEPS
    assert max(abs(a - b) for a, b in zip(losses, reference)) < LOSS_TOLERANCE, (losses, reference)


# Plain DDP (gloo) runs in the default suite; the DeepSpeed engines are slow (and skip without deepspeed).
DEEPSPEED_SLOW = [pytest.param(engine, marks=pytest.mark.slow) for engine in ("zero2", "zero3")]


@pytest.mark.parametrize("engine", ["ddp", *DEEPSPEED_SLOW])
def test_two_process_training_matches_single_process_losses(engine, synth_data, single_process_runs, tmp_path):
    """`clinkd train` under torchrun: 2 ranks × batch 4 (gloo); ZeRO-2/3 through DeepSpeed's CPU accelerator."""
    _torchrun(
        [
            "-m",
            "clinkd.cli",
            "train",
            str(_recipe(tmp_path, synth_data)),
            "name=two",
            "train.batch_size=4",
            *_deepspeed(engine),
        ],
        cwd=tmp_path,
    )
    _assert_close(_losses(tmp_path / "runs" / "two" / "sft" / "train_log.json"), single_process_runs[0])
    # Written once, with full tensors (gathered from the shards under ZeRO-3).
    _assert_same_weights(tmp_path / "runs" / "two" / "sft" / "model", single_process_runs[2])


@pytest.mark.parametrize("engine", ["ddp", DEEPSPEED_SLOW[1]])
def test_two_process_distillation_matches_single_process_losses(engine, synth_data, single_process_runs, tmp_path):
    """`clinkd distill` (online teacher) under torchrun, 2 ranks × batch 4, against the single-process KD losses."""
    teacher = single_process_runs[2]
    args = ["name=two", "train.batch_size=4", f"distill.teacher={teacher}", *DISTILL, *_deepspeed(engine)]
    _torchrun(["-m", "clinkd.cli", "distill", str(_recipe(tmp_path, synth_data)), *args], cwd=tmp_path)
    _assert_close(_losses(tmp_path / "runs" / "two" / "distill" / "student" / "train_log.json"), single_process_runs[1])
    _assert_same_weights(tmp_path / "runs" / "two" / "distill" / "student" / "model", single_process_runs[3])


@pytest.mark.slow
def test_two_process_prediction_merges_to_the_single_process_file(synth_data, tiny_model, tiny_processor, tmp_path):
    from clinkd.data.medgrit import load_test_split
    from clinkd.model.loading import save_checkpoint

    save_checkpoint(tiny_model, tiny_processor, tmp_path / "model")
    _torchrun([str(WORKER), "predict", str(synth_data), str(tmp_path / "model"), str(tmp_path / "two")], cwd=tmp_path)
    tests = load_test_split(synth_data, synth_data / "images")
    single = write_predictions_sharded(
        tiny_model,
        tiny_processor,
        tests,
        tmp_path / "one",
        PredictConfig(batch_size=3, max_new_tokens={t: 6 for t in tests}),
    )
    for task, path in single.items():
        assert (tmp_path / "two" / f"{task}.jsonl").read_text() == path.read_text()


@pytest.mark.slow
def test_zero3_teacher_is_partitioned_and_computes_the_same_logits(tiny_model, tiny_processor, tmp_path):
    pytest.importorskip("deepspeed")
    from clinkd.model.loading import save_checkpoint

    save_checkpoint(tiny_model, tiny_processor, tmp_path / "model")
    out = tmp_path / "teacher.json"
    _torchrun(
        [str(WORKER), "teacher", str(tmp_path / "model"), str(ROOT / "configs" / "deepspeed" / "zero3.json"), str(out)],
        cwd=tmp_path,
    )
    report = json.loads(out.read_text())
    assert report["world"] == 2 and not report["requires_grad"]
    # Each rank stores its half of every parameter (partitions are padded to a multiple of the world size).
    assert report["full_parameters"] / 2 <= report["local_partition"] < report["full_parameters"] / 2 + 1000
    assert report["max_logit_difference"] < 1e-5
