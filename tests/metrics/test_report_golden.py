"""The paper-style tables against golden files (tests/metrics/golden/).

A layout change is deliberate only if the golden files change with it: regenerate them with
``CLINKD_UPDATE_GOLDEN=1 python -m pytest tests/metrics/test_report_golden.py`` and review the diff. A missing golden
file is a failure, also when updating: a new table's file is created by hand (empty), then filled by the update.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from clinkd.data.records import MODALITIES, Prediction
from clinkd.metrics.captions import BUILTIN_SCORERS
from clinkd.metrics.protocol import score_predictions
from clinkd.metrics.spice import SpiceApprox
from clinkd.metrics.tables import markdown, metric_rows, modality_rows, summary_rows, to_csv
from clinkd.recipes.compare import render_compare

GOLDEN = Path(__file__).parent / "golden"


@dataclass(frozen=True)
class ExactMatchMeteor:
    """A deterministic METEOR stand-in (share of candidates equal to their first reference), so MIA has mBMR."""

    metrics: tuple = ("METEOR",)
    backend: str = "exact-match stand-in (test)"

    def score(self, candidates, references):
        return {"METEOR": sum(c == refs[0] for c, refs in zip(candidates, references)) / len(candidates)}


ANSWERS = {
    "VG": "<ref>liver</ref><box>(100,100),(500,500)</box>",
    "ROC": "right kidney",
    "RC": "A small dark round cyst in the upper left region.",
    "MIA": "CT image of the abdomen showing the liver and kidney, with a small bright mass in the left region.",
}
RESPONSES = {  # per level of skill: the response for each task; modality index i picks a variant
    "weak": ("<box>(0,0),(90,90)</box>", "kidney", "A cyst.", "CT image of the chest."),
    "better": ("<box>(100,100),(520,480)</box>", "the right kidney", "A small round cyst in the left region.",
               "CT image of the abdomen showing the liver, with a mass."),
    "best": ("<|box_start|>(100,100),(500,500)<|box_end|>", "right kidney", ANSWERS["RC"], ANSWERS["MIA"]),
}


def predictions(level: str) -> list[Prediction]:
    """Two rows per task and modality for 6 of the 8 modalities (PET and Fundus have none, as ROC in the paper)."""
    rows = []
    for i, modality in enumerate(m for m in MODALITIES if m not in ("pet", "fundus")):
        for k, task in enumerate(ANSWERS):
            for copy in range(2):
                weak = (i + copy) % 3 == 0  # every level misses some rows, differently per modality
                response = RESPONSES["weak" if weak else level][k]
                rows.append(
                    Prediction(
                        f"{modality}_{task}_{copy}",
                        "x.png",
                        task,
                        modality,
                        "q",
                        ANSWERS[task],
                        response + "<|im_end|>",
                    )
                )
    return rows


@pytest.fixture(scope="module")
def named():
    scorers = [*BUILTIN_SCORERS, ExactMatchMeteor(), SpiceApprox(use_wordnet=False)]
    return {level: score_predictions(predictions(level), scorers=scorers) for level in ("weak", "better", "best")}


def check(name: str, text: str) -> None:
    """``text`` equals the golden file ``name``; with ``CLINKD_UPDATE_GOLDEN`` set, an existing golden file is rewritten
    first. A missing one fails: the test never makes a golden file (create it, then update it and review the diff)."""
    path = GOLDEN / name
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: golden files are reviewed, never made by the test (see this module's docstring)"
        )
    if os.environ.get("CLINKD_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{path} differs (see this module's docstring)"


def test_a_missing_golden_file_fails_and_is_not_written(monkeypatch):
    monkeypatch.setenv("CLINKD_UPDATE_GOLDEN", "1")
    with pytest.raises(pytest.fail.Exception, match="no-such-table.md is missing"):
        check("no-such-table.md", "| a |\n")
    assert not (GOLDEN / "no-such-table.md").exists()


def test_table_2_layout(named):
    check("table2.md", markdown(*summary_rows(named), arrows=True) + "\n")
    check("table2.csv", to_csv(*summary_rows(named)))


def test_tables_3_4_layout(named):
    check("tables34_headlines.md", markdown(*modality_rows(named["best"], headline_only=True), left=2) + "\n")
    check("tables34_all.csv", to_csv(*modality_rows(named["best"]), left=2))


def test_every_metric_and_comparison_layout(named):
    check("metrics.csv", to_csv(*metric_rows(named)))
    check("comparison.md", render_compare(named))


def test_golden_numbers_are_the_papers_conventions(named):
    header, rows = summary_rows(named)
    assert header == ["Model", "VG (Recall@0.5)", "ROC (Recall)", "RC (SPICE-approx)", "MIA (mBMR)", "Average"]
    assert [row[0] for row in rows] == ["weak", "better", "best"]
    # The headline is Mean (8): PET and Fundus have no rows and count 0, as in BiRD's scripts.
    best_vg = named["best"]["tasks"]["VG"]
    assert (
        rows[2][1]
        == best_vg["macro"]["Recall@0.5"]
        == pytest.approx(sum(best_vg["per_modality"][m]["Recall@0.5"] for m in MODALITIES) / 8)
    )
