"""Files clinkd writes get the process umask's mode, as a plain write would (mkstemp alone gives 0600)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

UMASK = 0o027  # not the usual 022, so a hard-coded 0644 would fail too


@pytest.fixture
def umask():
    previous = os.umask(UMASK)
    yield
    os.umask(previous)


def modes(root):
    """``{relative path: permission bits}`` of every file and folder under ``root``."""
    return {str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode) for path in [root, *root.rglob("*")]}


def test_atomic_writes_get_the_umask_mode(tmp_path, umask):
    from clinkd.io import atomic_write_json, atomic_write_text

    atomic_write_text(tmp_path / "report.md", "text")
    atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o640


def test_teacher_cache_shards_get_the_umask_mode(tmp_path, umask):
    from clinkd.distill.teacher_cache import save_shard

    save_shard(
        tmp_path / "shard-00000.safetensors",
        torch.zeros(2, 1, dtype=torch.int32),
        torch.zeros(2, 1),
        torch.tensor([0, 2]),
    )
    assert stat.S_IMODE((tmp_path / "shard-00000.safetensors").stat().st_mode) == 0o640


def test_trainer_checkpoints_get_the_umask_mode(tmp_path, tiny_model, tiny_processor, overfit_image, umask):
    from clinkd.batching import ChatExample
    from clinkd.config import RecipeConfig
    from clinkd.data.records import Turn
    from clinkd.engine.sft import SftSettings, run_sft

    cfg = RecipeConfig(output_dir=tmp_path, train={"max_steps": 1, "save_steps": 1, "batch_size": 1, "threads": 1})
    run_sft(
        SftSettings.of(cfg),
        tiny_model,
        tiny_processor,
        [ChatExample(overfit_image, (Turn("Where?", "Here."),))],
        tmp_path / "sft",
    )
    found = modes(tmp_path / "sft" / "checkpoints")
    assert "checkpoint-1/model.safetensors" in found
    assert set(found.values()) <= {0o640, 0o750}, found


def test_saved_models_get_the_umask_mode(tmp_path, tiny_model, tiny_processor, umask):
    from clinkd.model.loading import save_checkpoint

    save_checkpoint(tiny_model, tiny_processor, tmp_path / "model")
    found = modes(tmp_path / "model")
    assert set(found.values()) <= {0o640, 0o750}, found
