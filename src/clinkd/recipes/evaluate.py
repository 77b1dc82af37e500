"""Recipe: score prediction JSONL files with the BiRD/ClinKD protocol and write the report.

``out_dir`` gets ``metrics.json``, ``report.md`` (which embeds the figures and names every backend),
``tables/summary.csv`` (Table 1: model and baselines) and ``tables/per_modality.csv`` (Tables 3/4), and
``figures/modalities.png`` (Figure 3) and ``figures/loss.png`` (when ``run_dir`` holds training logs). Rows a served
model answered (``clinkd predict --endpoint``) add how their boxes were read, the ambiguous ones counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from clinkd.config import EvaluateConfig
from clinkd.data.records import Prediction, Sample, canonical_task
from clinkd.data.validation import DataError
from clinkd.engine.served import served_row_totals
from clinkd.io import atomic_write_json, atomic_write_text, numbered_jsonl
from clinkd.markdown import table
from clinkd.metrics.backends import BackendChoice, caption_scorers
from clinkd.metrics.baselines import FITTED_ON, baseline_predictions
from clinkd.metrics.captions import CaptionScorer
from clinkd.metrics.fidelity import FIDELITY_LABELS, modality_classes, question_fidelity
from clinkd.metrics.protocol import check_prediction, score_predictions
from clinkd.metrics.report import render_comparison, render_markdown
from clinkd.metrics.tables import write_tables


def read_predictions(paths: Iterable[Path], bird_exact: bool = False) -> list[tuple[str, Prediction]]:
    """``(file:line, row)`` for every row of the prediction files. Evaluation never resumes, so nothing is dropped: a
    torn or malformed line, a row without the schema, an unknown task or modality, a VG ground-truth box that does not
    parse, a second row for one task and id, or a file without rows raises DataError naming file:line."""
    located = []
    for path in paths:
        rows = [
            (f"{path}:{number}", prediction_of(row, f"{path}:{number}", bird_exact))
            for number, row in numbered_jsonl(path, allow_torn_tail=False)
        ]
        if not rows:
            raise DataError(f"{path}: no prediction rows")
        located += rows
    first_row_of: dict[tuple[str, str], str] = {}
    for where, prediction in located:
        key = (canonical_task(prediction.task), prediction.id)
        if key in first_row_of:  # a record scored twice weighs twice: 200 copies of one answer are not 200 answers
            raise DataError(
                f"{where}: a second {key[0]} row for id {prediction.id!r} (the first is {first_row_of[key]}); each "
                "record is scored once"
            )
        first_row_of[key] = where
    return located


def prediction_of(row, where: str, bird_exact: bool = False) -> Prediction:
    """The :class:`Prediction` of one JSONL row, or DataError starting with ``where``."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a prediction row must be a JSON object, got {type(row).__name__}")
    try:
        prediction = Prediction.from_json(row)
        check_prediction(prediction, bird_exact)  # checked here, where the line is known
    except (KeyError, ValueError) as error:
        raise DataError(f"{where}: {error.args[0]}") from None
    return prediction


def check_coverage(
    located: list[tuple[str, Prediction]], tests: dict[str, list[Sample]], partial: bool = False
) -> dict[str, dict]:
    """``{task: {records, scored, missing}}`` for every task the rows cover, after checking that each row answers one
    test record of its task (DataError naming the first row that does not). A test record without a row is a DataError
    too, naming the first, unless ``partial`` (then it is counted as missing)."""
    test_ids = {task: {sample.id for sample in samples} for task, samples in tests.items()}
    answered: dict[str, set[str]] = {}
    for where, prediction in located:
        task = canonical_task(prediction.task)
        if prediction.id not in test_ids.get(task, ()):
            raise DataError(
                f"{where}: id {prediction.id!r} is not a {task} test record "
                f"({_test_file(tests.get(task)) or f'no {task} test file'})"
            )
        answered.setdefault(task, set()).add(prediction.id)
    coverage = {}
    for task, ids in answered.items():
        missing = [sample for sample in tests[task] if sample.id not in ids]
        if missing and not partial:
            raise DataError(
                f"{len(missing)} of {len(tests[task])} {task} test records have no prediction row, the first id "
                f"{missing[0].id!r} "
                f"({missing[0].source}); --partial scores the rows there are and counts the missing ones"
            )
        coverage[task] = {"records": len(tests[task]), "scored": len(ids), "missing": len(missing)}
    return coverage


def _test_file(records: list[Sample] | None) -> str | None:
    """The test file ``records`` come from (their ``source`` is ``file#index``)."""
    return records[0].source.rsplit("#", 1)[0] if records else None


def coverage_section(coverage: dict[str, dict]) -> str:
    """The report's note on the test records left unscored (``--partial``), task by task."""
    lines = [
        f"- {task}: {counts['scored']} of {counts['records']} test records scored, {counts['missing']} without a "
        "prediction row"
        for task, counts in coverage.items()
        if counts["missing"]
    ]
    return (
        "## Coverage\n\nScored the rows there are (`--partial`); each task's metrics cover its scored records only.\n\n"
        + "\n".join(lines)
    )


def score_baselines(
    tests: dict[str, list[Sample]],
    train: Sequence[Sample] = (),
    *,
    scorers: Sequence[CaptionScorer] | None = None,
    bird_exact: bool = False,
) -> dict[str, dict]:
    """Metrics of every trivial baseline (fitted on ``train``) on the same test set, with the model's backends."""
    samples = [sample for task_samples in tests.values() for sample in task_samples]
    return {
        name: score_predictions(rows, scorers=scorers, bird_exact=bird_exact)
        for name, rows in baseline_predictions(samples, train).items()
    }


def fidelity_section(fidelity: dict[str, dict]) -> str:
    """Per row: the shares of answers that address what was asked (:mod:`clinkd.metrics.fidelity`)."""
    header = ["", *(f"{text} (%)" for text in FIDELITY_LABELS.values())]
    rows = [[label, *(_share(shares[name]) for name in FIDELITY_LABELS)] for label, shares in fidelity.items()]
    return (
        "## Question fidelity\n\nDoes the answer address what was asked? Shares of the answers each applies to "
        "(n in brackets); ROC classes are the training split's.\n\n" + table(header, rows, "lr")
    )


def _share(share: dict) -> str:
    return "–" if share["value"] is None else f"{100 * share['value']:.1f} ({share['n']})"


def baselines_section(baselines: dict[str, dict]) -> str:
    """Where each scored baseline was fitted (none reads a test label)."""
    rows = [(name, FITTED_ON[name]) for name in baselines]
    return "### Trivial baselines\n\n" + table(["baseline", "fitted on"], rows, "l")


def evaluation_scorers(evaluation: EvaluateConfig) -> list[CaptionScorer]:
    """The caption backends the recipe's ``evaluate:`` block names (:func:`clinkd.metrics.backends.caption_scorers`:
    ValueError or BackendUnavailable when one it asks for cannot run here)."""
    return caption_scorers(BackendChoice(evaluation.meteor, evaluation.spice, evaluation.corenlp_dir))


def run_evaluate(
    prediction_paths: Iterable[Path],
    out_dir: Path,
    *,
    title: str = "clinkd evaluation",
    tests: dict[str, list[Sample]] | None = None,
    train: Sequence[Sample] = (),
    label: str = "model",
    others: dict[str, Iterable[Path]] | None = None,
    extra_sections: Iterable[str] = (),
    scorers: Sequence[CaptionScorer] | None = None,
    bird_exact: bool = False,
    figures: bool = True,
    run_dir: Path | None = None,
    partial: bool = False,
) -> dict:
    """Write the files of the module docstring into ``out_dir``; returns the ``metrics.json`` document.

    With ``tests``, every row must answer one test record of its task and every record of a task the rows cover must
    have a row (:func:`check_coverage`; ``partial`` counts the missing ones instead, in ``metrics.json``'s ``coverage``
    and the report), and the trivial baselines (fitted on the ``train`` records) are scored on the same test set and
    shown beside the model;
    ``others`` maps more labels (teacher, plain SFT, ...) to their prediction files, checked and scored the same way.
    ``scorers`` are the caption backends (default: the registered ones, see
    :func:`clinkd.metrics.backends.caption_scorers` for METEOR and SPICE); ``run_dir`` (default
    ``out_dir``) is searched for ``train_log.json`` files for the loss figure.
    """
    located = read_predictions(prediction_paths, bird_exact)
    others_located = {other: read_predictions(paths, bird_exact) for other, paths in (others or {}).items()}
    coverage = None
    if tests is not None:  # every file is checked before any is scored
        coverage = check_coverage(located, tests, partial)
        for pairs in others_located.values():
            check_coverage(pairs, tests)
    rows = {label: [row for _, row in located]} | {
        other: [row for _, row in pairs] for other, pairs in others_located.items()
    }
    named = {
        row_label: score_predictions(predictions, scorers=scorers, bird_exact=bird_exact)
        for row_label, predictions in rows.items()
    }
    metrics, predictions = named[label], rows[label]
    classes = modality_classes(train)
    fidelity = {row_label: question_fidelity(row_predictions, classes) for row_label, row_predictions in rows.items()}
    document = {"model": metrics, "others": {other: named[other] for other in others or {}}, "fidelity": fidelity}
    sections = [render_markdown(metrics, title)]
    if coverage is not None:
        document["coverage"] = coverage
        sections += [coverage_section(coverage)] if any(counts["missing"] for counts in coverage.values()) else []
    served = [prediction.extra for prediction in predictions if "box_scale" in prediction.extra]
    if served:
        document["served"] = served_row_totals(served)
        sections.append(_served_section(document["served"]))
    if tests is not None:
        baselines = score_baselines(tests, train, scorers=scorers, bird_exact=bird_exact)
        document["baselines"] = baselines
        named.update(baselines)
    if len(named) > 1:
        sections.append("## Model vs comparisons and trivial baselines\n\n" + render_comparison(named))
    sections.append(fidelity_section(fidelity))
    if tests is not None:
        sections.append(baselines_section(document["baselines"]))
    if figures:
        sections.append(_figure_section(named, out_dir, run_dir or out_dir))
    sections.extend(extra_sections)
    write_tables(named, out_dir / "tables")
    atomic_write_json(out_dir / "metrics.json", document)
    atomic_write_text(out_dir / "report.md", "\n\n".join(sections) + "\n")
    return document


def _served_section(totals: dict) -> str:
    """How a served model's answers' boxes were read (docs/served.md), the ambiguous ones counted."""
    rows = [[reading, str(count)] for reading, count in totals["box_readings"].items()]
    return (
        "## Served answers: how their boxes were read\n\n"
        + table(["written as, on the scale", "answers"], rows, "lr")
        + f"\n\n{totals['ambiguous']} answer(s) fitted both 0–1000 and the pixels of the image the server resized "
        "(`--boxes auto`) and were read on 0–1000, without looking at the ground truth; name `--boxes` to settle them."
    )


def _figure_section(named: dict[str, dict], out_dir: Path, run_dir: Path) -> str:
    """Write the figures; their Markdown section with paths relative to ``out_dir``."""
    from clinkd.metrics.figures import loss_figure, modality_figure  # matplotlib loads only when drawing

    lines = ["## Figures", ""]
    modality_figure(named, out_dir / "figures" / "modalities.png")
    lines.append("![Scores per modality (task headlines, ×100)](figures/modalities.png)")
    if loss_figure(run_dir, out_dir / "figures" / "loss.png") is not None:
        lines += ["", "![Training loss](figures/loss.png)"]
    lines += ["", "Tables as CSV: `tables/summary.csv` (Table 1), `tables/per_modality.csv` (Tables 3/4)."]
    return "\n".join(lines)
