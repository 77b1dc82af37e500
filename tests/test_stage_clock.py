"""The run report's stage times add up over invocations on one run folder, so a resumed run keeps its cost."""

from __future__ import annotations

import json
import time

from clinkd.recipes.run import StageClock


def test_a_second_invocation_adds_to_the_recorded_seconds(tmp_path):
    path = tmp_path / "stage_times.json"
    first = StageClock(path)
    assert first.time("distill", lambda: time.sleep(0.05) or "model") == "model"
    recorded = json.loads(path.read_text())["distill"]
    assert recorded >= 0.05

    second = StageClock(path)  # a rerun: distill reused (no time), predict new
    second.time("distill", lambda: None)
    second.time("predict", lambda: None)
    saved = json.loads(path.read_text())
    assert list(saved) == ["distill", "predict"]
    assert recorded <= saved["distill"] < recorded + 0.05
    table = second.markdown()
    assert f"| distill | {saved['distill']:.1f} |" in table and "stage_times.json" in table


def test_unreadable_record_starts_from_zero_and_no_path_keeps_nothing(tmp_path):
    path = tmp_path / "stage_times.json"
    path.write_text("{not json")
    clock = StageClock(path)
    assert clock.seconds == {}
    clock.time("data", lambda: None)
    assert set(json.loads(path.read_text())) == {"data"}

    in_memory = StageClock()
    in_memory.time("data", lambda: None)
    assert set(in_memory.seconds) == {"data"}
    assert [entry.name for entry in tmp_path.iterdir()] == ["stage_times.json"]
