"""The reflect stage end to end on a tiny model (two rounds, resume after a kill), its report, config, command and
docs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clinkd.config import ConfigError, load_config
from clinkd.reflect.correctors import (
    FRAMINGS,
    TemplateCorrector,
    tagged_boxes,
)
from clinkd.reflect.report import render_report

# ---- the stage, end to end on a tiny model --------------------------------------------------------


def _stage_config(tmp_path, synth_dir, **reflect):
    overrides = [
        f"output_dir={tmp_path / 'runs'}",
        f"data.dir={synth_dir}",
        "model.init=scratch",
        "model.size=xs",
        "model.tokenizer_vocab=400",
        "model.min_pixels=3136",
        "model.max_pixels=3136",
        "train.batch_size=16",
        "train.threads=1",
        "train.save_steps=1",
        "predict.batch_size=16",
        "predict.max_new_tokens={VG: 6, ROC: 4, RC: 6, MIA: 6}",
        "reflect.rounds=2",
        "reflect.generate_samples=12",
        "reflect.budget=5",
        "reflect.lr=1e-3",
    ] + [f"reflect.{key}={value}" for key, value in reflect.items()]
    return load_config(overrides=overrides)


def test_run_reflect_two_rounds_then_resume_after_a_kill(tmp_path, synth_dir, monkeypatch):
    import torch

    from clinkd.engine import generate as generate_module
    from clinkd.recipes import reflect as reflect_module
    from clinkd.recipes.inputs import initial_model, load_dataset

    torch.set_num_threads(1)
    cfg = _stage_config(tmp_path, synth_dir)
    train = load_dataset(cfg).train
    model, processor = initial_model(cfg, train)
    stage = cfg.run_dir / "reflect"

    class Template(TemplateCorrector):
        calls: list = []
        kill_at: int | None = None

        def correct(self, requests):
            for request, reply in super().correct(requests):
                if len(Template.calls) == Template.kill_at:
                    raise KeyboardInterrupt
                Template.calls.append((request.round, request.key))
                yield request, reply

    Template.kill_at = 7  # round 1 sends 5, so the kill comes mid round 2
    with pytest.raises(KeyboardInterrupt):
        reflect_module.run_reflect(cfg, model, processor, train, stage, corrector=Template())
    assert (stage / "round-1" / "summary.json").is_file() and not (stage / "round-2" / "summary.json").is_file()
    assert len((stage / "round-2" / "corrections.jsonl").read_text().splitlines()) == 2

    generated = []
    real_generate = generate_module.generate_responses
    monkeypatch.setattr(
        generate_module, "generate_responses", lambda *a, **k: generated.append(len(a[3])) or real_generate(*a, **k)
    )
    Template.kill_at = None
    calls_before = list(Template.calls)
    fresh, fresh_processor = initial_model(cfg, train)  # a new process would start from the input model again
    result = reflect_module.run_reflect(cfg, fresh, fresh_processor, train, stage, corrector=Template())

    round2 = [json.loads(line) for line in (stage / "round-2" / "corrections.jsonl").read_text().splitlines()]
    assert len({row["key"] for row in round2}) == len(round2) == 5
    assert [key for _, key in Template.calls[len(calls_before) :]] == [row["key"] for row in round2[2:]]
    assert sum(generated) == 12  # round 2's outputs were complete: only the `after` pass generated
    assert [r["round"] for r in result.rounds] == [1, 2] and result.model_dir == stage / "round-2" / "model"
    assert result.rounds[1]["corrections_in_mix"] == 10  # accepted corrections accumulate over rounds
    assert result.rounds[1]["train_examples"] == len(train) * 4 + 10
    assert all(r["steps"] == -(-r["train_examples"] // 16) for r in result.rounds)  # one epoch at batch 16
    for round_dir in ("round-1", "round-2"):
        rows = [json.loads(line) for line in (stage / round_dir / "corrections.jsonl").read_text().splitlines()]
        assert all(row["status"] == "accepted" and row["corrector"] == "template" for row in rows)
        assert all(tagged_boxes(row["correction"]) == tagged_boxes(row["ground_truth"]) for row in rows)
    scores = [json.loads(line) for line in (stage / "round-1" / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 12 and all(set(row) >= {"key", "output", "similarity", "grounded", "weak"} for row in scores)
    report = (stage / "report.md").read_text()
    assert "## Reflective correction" in report and "| round 1 (before) | round 2 | after |" in report
    assert "### Corrections per round and task" in report and "### Scores before and after" in report
    assert result.after is not None and result.after["all"]["n"] == 12

    # Everything finished: a third call does no work at all.
    generated.clear()
    again = reflect_module.run_reflect(cfg, fresh, fresh_processor, train, stage, corrector=Template())
    assert generated == [] and again.rounds == result.rounds


def test_render_report_shows_rounds_tasks_and_before_after():
    scores = {
        "VG": {"n": 2, "similarity": 0.5, "grounded": 0.5, "weak": 1},
        "all": {"n": 2, "similarity": 0.5, "grounded": 0.5, "weak": 1},
    }
    corrections = {
        "VG": {
            "sent": 1,
            "accepted": 0,
            "rejected": 1,
            "failed": 0,
            "reasons": {"boxes differ from the ground truth": 1},
        },
        "all": {"sent": 1, "accepted": 0, "rejected": 1, "failed": 0, "reasons": {}},
    }
    doc = {
        "settings": {
            "corrector": "openai",
            "similarity": "lexical",
            "threshold": 0.8,
            "iou_threshold": 0.5,
            "generated_per_round": 2,
            "budget": 1,
            "accept_threshold": 0.8,
        },
        "rounds": [
            {
                "round": 1,
                "scores": scores,
                "weak": 1,
                "corrections": corrections,
                "train_examples": 10,
                "steps": 1,
                "seconds": 3.0,
            }
        ],
        "after": {
            "VG": {"n": 2, "similarity": 1.0, "grounded": 1.0, "weak": 0},
            "all": {"n": 2, "similarity": 1.0, "grounded": 1.0, "weak": 0},
        },
    }
    report = render_report(doc)
    assert "| 1 | VG | 1 | 1 | 0 | 1 | 0 | boxes differ from the ground truth 1 |" in report
    assert "| VG | 0.500 (50.0%) | 1.000 (100.0%) |" in report
    assert "| round 1 (before) | after |" in report


def test_reflect_config_defaults_and_errors():
    cfg = load_config()
    assert (cfg.reflect.rounds, cfg.reflect.threshold, cfg.reflect.corrector, cfg.reflect.similarity.kind) == (
        2,
        0.8,
        "template",
        "lexical",
    )
    with pytest.raises(ConfigError, match="reflect.bogus: unknown key"):
        load_config(overrides=["reflect.bogus=1"])
    with pytest.raises(ConfigError, match="reflect.corrector"):
        load_config(overrides=["reflect.corrector=gpt"])


def test_cli_reflect_needs_an_existing_model(tmp_path, small_data):
    from typer.testing import CliRunner

    from clinkd.cli import app

    result = CliRunner().invoke(
        app,
        [
            "reflect",
            "--model",
            str(tmp_path / "none"),
            f"data.dir={small_data}",
            "data.synth.enabled=false",
            f"output_dir={tmp_path}",
        ],
    )
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())


def test_docs_show_the_prompt_the_framings_and_the_neutral_words_in_use():
    from clinkd.reflect.correctors import SYSTEM_PROMPT, USER_PROMPT
    from clinkd.reflect.similarity import NEUTRAL_WORDS

    docs = " ".join((Path(__file__).parents[2] / "docs" / "reflect.md").read_text(encoding="utf-8").split())
    assert " ".join(SYSTEM_PROMPT.split()) in docs
    assert all(line.split("{")[0] in docs for line in USER_PROMPT.splitlines())
    assert all(f"`{framing}`" in docs for framings in FRAMINGS.values() for framing in framings)
    assert f"`{' '.join(sorted(NEUTRAL_WORDS))}`" in docs
