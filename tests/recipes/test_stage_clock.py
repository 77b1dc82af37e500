"""The run report's stage times add up over invocations on one run folder, so a resumed run keeps its cost."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from clinkd.recipes.stage_clock import StageClock


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


def test_a_failed_stage_keeps_its_time(tmp_path):
    path = tmp_path / "stage_times.json"

    def fail():
        time.sleep(0.05)
        raise KeyboardInterrupt  # Ctrl+C

    with pytest.raises(KeyboardInterrupt):
        StageClock(path).time("distill", fail)
    assert json.loads(path.read_text())["distill"] >= 0.05


def test_a_killed_stage_keeps_its_time_up_to_the_last_save(tmp_path):
    path = tmp_path / "stage_times.json"
    script = (
        "import pathlib, time; from clinkd.recipes.stage_clock import StageClock; "
        f"StageClock(pathlib.Path({str(path)!r}), save_every=0.1).time('train', lambda: time.sleep(60))"
    )
    stage = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        while (
            not (path.is_file() and json.loads(path.read_text()).get("train", 0) >= 0.3) and time.monotonic() < deadline
        ):
            time.sleep(0.05)
    finally:
        stage.send_signal(signal.SIGKILL)
        stage.wait()
    assert json.loads(path.read_text())["train"] >= 0.3


def test_a_resumed_trainer_stage_says_from_which_checkpoint(tmp_path, capsys):
    from clinkd.engine.sft import resume_point

    assert resume_point(tmp_path / "checkpoints", "student") is None
    for step in (20, 140):
        (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    assert resume_point(tmp_path / "checkpoints", "student") == str(tmp_path / "checkpoints" / "checkpoint-140")
    assert "student: resuming from checkpoint 140 (" in " ".join(capsys.readouterr().err.split())


def test_a_stage_terminated_before_its_first_save_keeps_its_time(tmp_path):
    path = tmp_path / "stage_times.json"
    script = (
        "import pathlib, time; from clinkd.recipes.stage_clock import StageClock; "
        f"StageClock(pathlib.Path({str(path)!r}), save_every=600).time('train', lambda: print('started', flush=True) "
        "or time.sleep(60))"
    )
    stage = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert stage.stdout.readline() == "started\n"
        time.sleep(0.5)
        stage.send_signal(signal.SIGTERM)
        assert stage.wait(timeout=30) == -signal.SIGTERM  # still ended by the signal, as before
    finally:
        stage.kill()
    assert json.loads(path.read_text())["train"] >= 0.5
