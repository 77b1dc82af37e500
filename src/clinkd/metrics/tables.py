"""The paper's tables as rows, Markdown and CSV, from :func:`clinkd.metrics.protocol.score_predictions` results.

* **Table 1 / Table 2** (:func:`summary_rows`): one row per model (or ablation run), the four task
  headlines and their average, ×100. For Table 2 every row after the first carries ``↑``/``↓`` against
  the first (the reference row, as the paper's BiRD row).
* **Tables 3/4** (:func:`modality_rows`): task × metric rows over the 8 modalities, then Mean (8) and
  Mean (present); ``–`` (Markdown) or an empty cell (CSV) marks a modality without data.
* :func:`metric_rows`: every metric's Mean (8) per model, for side-by-side ablations.

Markdown cells are ×100 with 2 decimals as in the paper; CSV cells are ×100 with 4 decimals.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from clinkd.data.records import MODALITIES, MODALITY_NAMES, TASKS
from clinkd.io import atomic_write_text
from clinkd.markdown import table
from clinkd.metrics.report import MISSING

Cell = float | str | None


def headline_metric(named: dict[str, dict], task: str) -> str | None:
    """The headline metric of ``task`` in the first result that has one (the column's name)."""
    for metrics in named.values():
        result = metrics["tasks"].get(task)
        if result and result["headline"]:
            return result["headline"]["metric"]
    return None


def summary_rows(named: dict[str, dict]) -> tuple[list[str], list[list[Cell]]]:
    """Table 1/2: header and one row per label: label, the 4 task headlines (None where absent), average."""
    header = ["Model", *(f"{task} ({headline_metric(named, task) or MISSING})" for task in TASKS), "Average"]
    rows = []
    for label, metrics in named.items():
        cells: list[Cell] = [label]
        for task in TASKS:
            result = metrics["tasks"].get(task)
            cells.append(result["headline"]["value"] if result and result["headline"] else None)
        overall = metrics.get("overall")
        cells.append(overall["value"] if overall else None)
        rows.append(cells)
    return header, rows


def modality_rows(metrics: dict, headline_only: bool = False) -> tuple[list[str], list[list[Cell]]]:
    """Tables 3/4: ``Task, Metric, <8 modalities>, Mean (8), Mean (present)``; None = no data."""
    header = ["Task", "Metric", *(MODALITY_NAMES[m] for m in MODALITIES), "Mean (8)", "Mean (present)"]
    rows = []
    for task in TASKS:
        result = metrics["tasks"].get(task)
        if result is None:
            continue
        names = [result["headline"]["metric"]] if headline_only and result["headline"] else result["metrics"]
        for metric in names:
            cells: list[Cell] = [task, metric]
            for modality in MODALITIES:
                empty = modality in result["empty_modalities"]
                cells.append(None if empty else result["per_modality"][modality][metric])
            cells += [result["macro"][metric], result["macro_present"][metric]]
            rows.append(cells)
    return header, rows


def metric_rows(named: dict[str, dict]) -> tuple[list[str], list[list[Cell]]]:
    """Every (task, metric) Mean (8) per label: ``Model`` then one column per task/metric seen."""
    columns: list[tuple[str, str]] = []
    for metrics in named.values():
        for task in TASKS:
            result = metrics["tasks"].get(task)
            for metric in result["metrics"] if result else []:
                if (task, metric) not in columns:
                    columns.append((task, metric))
    header = ["Model", *(f"{task} {metric}" for task, metric in columns)]
    rows = []
    for label, metrics in named.items():
        cells: list[Cell] = [label]
        for task, metric in columns:
            result = metrics["tasks"].get(task)
            cells.append(result["macro"].get(metric) if result else None)
        rows.append(cells)
    return header, rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[Cell]], *, left: int = 1, arrows: bool = False) -> str:
    """A Markdown table (numbers ×100, 2 decimals; ``–`` for None). With ``arrows`` every row after the
    first gets ``↑``/``↓`` on the numbers that are higher/lower than the first row's."""
    texts = []
    for number, row in enumerate(rows):
        cells = []
        for column, cell in enumerate(row):
            text = _percent(cell, 2) if column >= left else str(cell)
            if arrows and number > 0 and column >= left:
                text += _arrow(cell, rows[0][column])
            cells.append(text)
        texts.append(cells)
    return table(header, texts, "l" * left + "r")


def to_csv(header: Sequence[str], rows: Sequence[Sequence[Cell]], *, left: int = 1) -> str:
    """CSV text: numbers ×100 with 4 decimals, empty cells for None."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_percent(cell, 4, "") if column >= left else cell for column, cell in enumerate(row)])
    return buffer.getvalue()


def write_tables(named: dict[str, dict], out_dir: Path) -> list[Path]:
    """``summary.csv`` (Table 1, every label), and for the first label ``per_modality.csv`` (Tables 3/4,
    every metric) into ``out_dir``; returns the paths."""
    first = next(iter(named.values()))
    files = {"summary.csv": to_csv(*summary_rows(named)), "per_modality.csv": to_csv(*modality_rows(first), left=2)}
    for name, text in files.items():
        atomic_write_text(out_dir / name, text)
    return [out_dir / name for name in files]


def _percent(value: Cell, decimals: int, missing: str = MISSING) -> str:
    if value is None:
        return missing
    if isinstance(value, str):
        return value
    return f"{100 * value:.{decimals}f}"


def _arrow(value: Cell, reference: Cell) -> str:
    if not isinstance(value, float | int) or not isinstance(reference, float | int):
        return ""
    if round(100 * value, 2) > round(100 * reference, 2):
        return " ↑"
    if round(100 * value, 2) < round(100 * reference, 2):
        return " ↓"
    return ""
