"""Recipe: score prediction JSONL files with the BiRD/ClinKD protocol and write the report."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from clinkd.data.records import Prediction, Sample
from clinkd.io import atomic_write_json, atomic_write_text, read_jsonl
from clinkd.metrics.baselines import baseline_predictions
from clinkd.metrics.protocol import score_predictions
from clinkd.metrics.report import render_comparison, render_markdown


def read_predictions(paths: Iterable[Path]) -> list[Prediction]:
    predictions = []
    for path in paths:
        for number, row in enumerate(read_jsonl(path), start=1):
            try:
                predictions.append(Prediction.from_json(row))
            except KeyError as error:
                raise ValueError(f"{path}:{number}: {error.args[0]}") from None
    return predictions


def score_baselines(tests: dict[str, list[Sample]]) -> dict[str, dict]:
    """Metrics of every trivial baseline on the same test set."""
    samples = [sample for task_samples in tests.values() for sample in task_samples]
    return {name: score_predictions(rows) for name, rows in baseline_predictions(samples).items()}


def run_evaluate(
    prediction_paths: Iterable[Path],
    out_dir: Path,
    *,
    title: str = "clinkd evaluation",
    tests: dict[str, list[Sample]] | None = None,
    label: str = "model",
    extra_sections: Iterable[str] = (),
) -> dict:
    """Write ``metrics.json`` and ``report.md`` into ``out_dir``; returns the metrics.

    With ``tests``, the trivial baselines are scored on the same test set and shown beside the model.
    """
    metrics = score_predictions(read_predictions(prediction_paths))
    document = {"model": metrics}
    sections = [render_markdown(metrics, title)]
    if tests is not None:
        baselines = score_baselines(tests)
        document["baselines"] = baselines
        sections.append("## Model vs trivial baselines\n\n" + render_comparison({label: metrics, **baselines}))
    sections.extend(extra_sections)
    atomic_write_json(out_dir / "metrics.json", document)
    atomic_write_text(out_dir / "report.md", "\n\n".join(sections) + "\n")
    return document
