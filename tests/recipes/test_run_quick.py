"""The main job end to end on the CI-sized preset: every stage runs and the report covers 4 tasks × 8 modalities."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from clinkd.cli import app
from clinkd.config import load_config
from clinkd.data.records import MODALITIES, MODALITY_NAMES, TASKS
from clinkd.recipes.inputs import ensure_synth
from clinkd.recipes.run import slug


def add_a_4000x10_training_image(cfg) -> str:
    """One more training record, whose image the processor cannot take (aspect ratio 400); returns its file name."""
    ensure_synth(cfg)
    name = "ct_wide--strip"
    Image.new("L", (4000, 10), 80).save(cfg.data.images_dir / f"{name}.png")
    train_file = cfg.data.dir / cfg.data.train_file
    records = json.loads(train_file.read_text(encoding="utf-8"))
    records.append(
        {
            "id": name,
            "conversations": [
                [
                    f"Picture 1: <img>{name}.png</img>\nWhere is the <ref>liver</ref>?",
                    "<ref>liver</ref><box>(1,2),(3,4)</box>",
                ]
            ],
        }
    )
    train_file.write_text(json.dumps(records), encoding="utf-8")
    return f"{name}.png"


def test_quick_run_from_an_empty_folder_writes_a_complete_clinkd_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the recipe and its quick preset come from the code
    wide = add_a_4000x10_training_image(load_config(None, preset="quick"))
    result = CliRunner().invoke(app, ["run", "--preset", "quick", "report.greedy=true", "report.sft_baseline=true"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "quick"
    for name in ("config.resolved.yaml", "data_issues.txt", "metrics.json", "report.md", "stage_times.json"):
        assert (run_dir / name).is_file(), name
    assert (
        "[unusable_image] data/synth-quick/train.json record 64 (id 'ct_wide--strip'): image "
        f"data/synth-quick/images/{wide} cannot be fed"
        in (run_dir / "data_issues.txt").read_text(encoding="utf-8")
    )
    for task in TASKS:
        assert sum(1 for _ in (run_dir / "predictions" / f"{task}.jsonl").open()) > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["model"]["tasks"]) == set(TASKS)
    for task in TASKS:
        assert set(metrics["model"]["tasks"][task]["per_modality"]) == set(MODALITIES)
    report = (run_dir / "report.md").read_text()
    for name in MODALITY_NAMES.values():
        assert f"| {name} " in report
    assert "mcg" in report  # the report names the RoPE strategy
    assert "| training | distillation (teacher → pseudo labels → student) |" in report
    assert "## Reflective correction" in report and "`sasg` (N = 3" in report
    assert "| teacher |" in report and "| student (distilled) |" in report and "| ClinKD, greedy |" in report
    assert sorted(path.name for path in (run_dir / "comparisons").iterdir()) == [
        "clinkd-greedy",
        "plain-sft",
        "student-distilled",
        "teacher",
    ]
    sft_steps = json.loads((run_dir / "sft/train_log.json").read_text())["log_history"][-1]["step"]
    assert (
        sft_steps == json.loads((run_dir / "distill/info.json").read_text())["student"]["steps"]
    )  # equal optimiser steps
    greedy = [json.loads(line) for line in (run_dir / "comparisons" / "clinkd-greedy" / "VG.jsonl").open()]
    selected = [json.loads(line) for line in (run_dir / "predictions" / "VG.jsonl").open()]
    assert [row["id"] for row in greedy] == [row["id"] for row in selected]  # the same model on the same test turns
    assert "candidates" in selected[0] and "candidates" not in greedy[0]


def test_a_comparison_row_folder_is_named_by_its_whole_label():
    assert [slug(label) for label in ("teacher", "student (distilled)", "plain SFT")] == [
        "teacher",
        "student-distilled",
        "plain-sft",
    ]
