"""benchmarks/real_scale.py runs end to end at reduced size on CPU and reports every measurement (no timing
asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
MEASUREMENTS = (
    "train_step_s",
    "train_tokens_per_s",
    "train_tflops_per_s",
    "kd_online_peak_mib",
    "kd_cached_peak_mib",
    "kd_cached_over_online",
    "sasg_s",
    "greedy_s",
    "sasg_over_greedy",
    "generate_tokens_per_s",
)


def test_reduced_run_reports_every_measurement(tmp_path):
    out = tmp_path / "out.json"
    command = [
        sys.executable,
        "benchmarks/real_scale.py",
        "--shape",
        "reduced",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--image-size",
        "56",
        "--new-tokens",
        "4",
        "--json",
        str(out),
    ]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    report = json.loads(out.read_text())
    for key in MEASUREMENTS:
        value = report[key]
        assert isinstance(value, float) and value > 0, (key, value)
    assert report["kd_online_peak_mib"] > 0 and report["kd_cached_peak_mib"] > 0
    mfu = report["train_mfu"]
    if torch.cuda.is_available():  # a known card in bf16 gives a fraction, any other device "n/a"
        assert mfu == "n/a" or 0 < mfu < 1, mfu
    else:
        assert mfu == "n/a"
    assert report["shape"] == "reduced" and report["dtype"] == "bfloat16" and report["device"]
    assert "KD cached/online peak memory" in run.stdout and "SASG/greedy" in run.stdout
