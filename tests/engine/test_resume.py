"""A Trainer stage killed after a checkpoint and rerun ends with the weights of a run that was never stopped.

transformers 5 resumes with a non-strict ``load_state_dict`` of the checkpoint's file names, which are the hub's
(``save_pretrained`` writes them) and match none of the model's own: without clinkd's override the rerun trains on
from the initial weights with the checkpoint's optimiser state, and nothing says so.
"""

from __future__ import annotations

import pytest
import torch

from clinkd.batching import training_examples
from clinkd.config import RecipeConfig
from clinkd.data.medgrit import load_medgrit
from clinkd.engine.sft import ClinKDTrainer, SftSettings, run_sft
from clinkd.model.loading import load_checkpoint, model_class_for
from clinkd.model.tiny import tiny_config


class KilledAtStep2(ClinKDTrainer):
    def training_step(self, *args, **kwargs):
        if self.state.global_step >= 2:
            raise RuntimeError("killed")
        return super().training_step(*args, **kwargs)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    from clinkd.synth import generate

    data = tmp_path_factory.mktemp("synth")
    generate(data, seed=0, images=8, test_per_cell=1, image_size=56)
    return training_examples(load_medgrit(data / "train.json", data / "images"))[:8]


def fresh_model(processor):
    torch.manual_seed(0)
    config = tiny_config(processor.tokenizer, "xs")
    return model_class_for(config)(config)


def settings(tmp_path, lora=None, save_steps=2) -> SftSettings:
    return SftSettings.of(
        RecipeConfig.model_validate(
            {
                "output_dir": str(tmp_path / "runs"),
                "model": {"min_pixels": 56 * 56, "max_pixels": 56 * 56},
                "train": {
                    "max_steps": 4,
                    "save_steps": save_steps,
                    "batch_size": 4,
                    "lr": 2e-2,
                    "warmup_ratio": 0.0,
                    "threads": 1,
                    "lora": lora,
                },
            }
        )
    )


def train_straight_and_killed(processor, examples, tmp_path, sft: SftSettings) -> None:
    """``straight/``: four steps in one go; ``killed/``: stopped after step 2, its checkpoints on disk."""
    run_sft(sft, fresh_model(processor), processor, examples, tmp_path / "straight")
    with pytest.raises(RuntimeError, match="killed"):
        run_sft(sft, fresh_model(processor), processor, examples, tmp_path / "killed", make_trainer=KilledAtStep2)
    assert (tmp_path / "killed" / "checkpoints" / "checkpoint-2").is_dir()


def assert_same_weights(tmp_path) -> None:
    straight = load_checkpoint(tmp_path / "straight" / "model")[0].state_dict()
    resumed = load_checkpoint(tmp_path / "killed" / "model")[0].state_dict()
    assert all(torch.allclose(resumed[name], weight, atol=1e-6, rtol=0) for name, weight in straight.items())


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8, "dropout": 0.0}], ids=["full", "lora"])
def test_a_resumed_stage_ends_with_the_weights_of_an_uninterrupted_one(tiny_processor, examples, tmp_path, lora):
    sft = settings(tmp_path, lora)
    train_straight_and_killed(tiny_processor, examples, tmp_path, sft)
    run_sft(sft, fresh_model(tiny_processor), tiny_processor, examples, tmp_path / "killed")  # the rerun resumes
    assert_same_weights(tmp_path)


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_resumed(
    tiny_processor, examples, tmp_path, capsys
):
    sft = settings(tmp_path, save_steps=1)
    train_straight_and_killed(tiny_processor, examples, tmp_path, sft)
    checkpoints = tmp_path / "killed" / "checkpoints"
    weights = checkpoints / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # cut mid-save
    capsys.readouterr()
    run_sft(sft, fresh_model(tiny_processor), tiny_processor, examples, tmp_path / "killed")
    said = " ".join(capsys.readouterr().err.split())
    assert f"killed: {weights} is damaged (SafetensorError: " in said
    assert f"set aside as {checkpoints / 'damaged-checkpoint-2'}, falling back to the previous checkpoint" in said
    assert "killed: resuming from checkpoint 1 (" in said
    assert (checkpoints / "damaged-checkpoint-2" / "model.safetensors").is_file()
    assert_same_weights(tmp_path)


def test_train_warmup_ratio_is_the_share_of_steps_the_trainer_warms_up(tmp_path):
    from clinkd.config import load_config
    from clinkd.engine.sft import training_arguments

    for ratio, total, warm in ((0.03, 100, 3), (0.1, 95, 10), (0.0, 50, 0)):
        args = training_arguments(SftSettings.of(load_config(None, [f"train.warmup_ratio={ratio}"])), tmp_path)
        assert args.get_warmup_steps(total) == warm
