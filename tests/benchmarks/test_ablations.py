"""benchmarks/ablations.py: per-seed rows read from metrics.json, mean ± std, and paired differences."""

from __future__ import annotations

import pytest

from clinkd.data.records import TASKS

from conftest import load_benchmark

ablations = load_benchmark("ablations")


def metrics(model: dict[str, float], others: dict[str, dict[str, float]]) -> dict:
    """A metrics.json with only the task headlines set (as fractions, like the real file)."""

    def document(scores: dict[str, float]) -> dict:
        return {"tasks": {task: {"headline": {"value": scores[task] / 100}} for task in TASKS}}

    return {"model": document(model), "others": {label: document(scores) for label, scores in others.items()}}


def flat(value: float) -> dict[str, float]:
    return dict.fromkeys(TASKS, value)


def seed_documents(offset: float) -> dict[str, dict]:
    """One seed's two runs; every row is a constant, so the expected cells are plain arithmetic."""
    clinkd = metrics(
        flat(40 + offset),
        {
            "ClinKD, greedy": flat(30 + offset),
            "student (distilled)": flat(20 + offset),
            "plain SFT": flat(25),
            "teacher": flat(10),
        },
    )
    unfiltered = metrics(flat(18), {})  # stopped after the student: its answers are the run's own
    return {"clinkd": clinkd, "stock": metrics(flat(38), {}), "unfiltered": unfiltered}


def test_rows_are_mean_and_sample_std_over_seeds_and_comparisons_pair_by_seed():
    rows = ablations.seed_rows({0: seed_documents(0.0), 1: seed_documents(2.0), 2: seed_documents(4.0)})
    assert rows[("clinkd", "model")]["VG"] == pytest.approx([40.0, 42.0, 44.0])
    assert rows[("clinkd", "model")]["average"] == pytest.approx([40.0, 42.0, 44.0])
    scores = ablations.scores_table(rows)
    assert "| ClinKD (MCG-RoPE, KD, reflection, SASG) | 42.00 ± 2.00 |" in scores
    assert "| plain SFT, greedy | 25.00 ± 0.00 |" in scores
    differences = ablations.comparisons_table(rows).splitlines()
    by_name = {line.split(" | ")[0].lstrip("| "): line for line in differences[2:]}
    assert "| 4.00 ± 2.00 |" in by_name["MCG-RoPE vs stock positions"]  # 40−38, 42−38, 44−38
    assert "| -3.00 ± 2.00 |" in by_name["KD student vs plain SFT"]  # 20−25, 22−25, 24−25
    assert "| 10.00 ± 0.00 |" in by_name["reflective correction on vs off"]
    assert "| 10.00 ± 0.00 |" in by_name["SASG vs greedy"]
    assert "| 4.00 ± 2.00 |" in by_name["pseudo-label filter on vs off"]  # 20−18, 22−18, 24−18


def test_one_seed_has_no_spread():
    assert ablations.mean_std([3.0]) == "3.00 ± –"
    assert ablations.mean_std([-1e-9, 1e-9, -2e-9]) == "0.00 ± 0.00"


def test_the_unfiltered_run_starts_from_the_same_seeds_teacher_and_pseudo_labels(tmp_path):
    for part in ("distill/teacher/model", "distill/pseudo"):
        (tmp_path / "clinkd-s1" / part).mkdir(parents=True)
        (tmp_path / "clinkd-s1" / part / "file").write_text(part)
    ablations.share_stages(tmp_path, "unfiltered", 1)
    assert (tmp_path / "unfiltered-s1/distill/teacher/model/file").read_text() == "distill/teacher/model"
    assert (tmp_path / "unfiltered-s1/distill/pseudo/file").read_text() == "distill/pseudo"
    assert not (tmp_path / "unfiltered-s1/distill/cache").exists()  # the student's targets differ: its cache too
    ablations.share_stages(tmp_path, "stock", 1)  # stock positions train their own teacher
    assert not (tmp_path / "stock-s1").exists()
