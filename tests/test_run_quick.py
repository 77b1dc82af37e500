"""The main job end to end on the CI-sized preset: every stage runs and the report covers 4 tasks × 8 modalities."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from clinkd.cli import app
from clinkd.data.records import MODALITIES, MODALITY_NAMES, TASKS

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_writes_a_complete_report(tmp_path):
    args = ["run", str(ROOT / "configs/default.yaml"), "--preset", "quick", f"output_dir={tmp_path / 'runs'}", f"data.dir={tmp_path / 'synth'}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "quick"
    for name in ("config.resolved.yaml", "data_issues.txt", "metrics.json", "report.md", "stage_times.json"):
        assert (run_dir / name).is_file(), name
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
