"""Markdown views of :func:`clinkd.metrics.protocol.score_predictions` results.

All scores are shown ×100 with 2 decimals as in the paper (CIDEr too, the COCO convention); ``–``
marks a task without predictions or a modality without data.
"""

from __future__ import annotations

from collections.abc import Sequence

from clinkd.data.records import MODALITIES, MODALITY_NAMES, TASKS
from clinkd.markdown import table

MISSING = "–"


def percent(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.2f}"


def render_markdown(metrics: dict, title: str) -> str:
    """Summary (Table 1 style), the task × modality tables (Tables 3/4 style), counts and backends."""
    tasks = metrics["tasks"]
    sections = [
        f"# {title}",
        _protocol_note(metrics["protocol"]),
        "## Summary\n\n" + _summary_table(tasks, metrics.get("overall")),
        "## Headline per modality\n\n" + _modality_table(tasks, _headline_rows(tasks), with_average=True),
        "## All metrics per modality\n\n" + _modality_table(tasks, _all_metric_rows(tasks), with_average=False),
        "## Responses\n\n" + _counts_table(tasks),
        "## Backends\n\n" + _backends_table(metrics["backends"], tasks),
    ]
    return "\n\n".join(sections)


def render_comparison(named: dict[str, dict]) -> str:
    """One row per label with each task's headline (``–`` where the label lacks the task).

    A column is named after the first label's headline metric; a cell whose metric differs says so.
    """
    columns = {task: _column_metric(named, task) for task in TASKS}
    header = ["", *(f"{task} ({columns[task] or MISSING})" for task in TASKS), "Average"]
    rows = []
    for label, metrics in named.items():
        cells = [label]
        for task in TASKS:
            headline = _headline(metrics, task)
            if headline is None:
                cells.append(MISSING)
            else:
                note = "" if headline["metric"] == columns[task] else f" ({headline['metric']})"
                cells.append(percent(headline["value"]) + note)
        overall = metrics.get("overall")
        cells.append(percent(overall["value"]) if overall else MISSING)
        rows.append(cells)
    return table(header, rows, "lr")


# ---- sections -----------------------------------------------------------------------------------
def _protocol_note(protocol: dict) -> str:
    mode = "BiRD-exact" if protocol["bird_exact"] else "clinkd (BiRD rules + end-of-turn pre-step, Qwen2-VL box tags)"
    return (
        f"Protocol: {mode}; clean-up: {protocol['cleanup']}. Scores ×100. "
        f"**Mean (8)**: {protocol['macro']}. **Mean (present)**: {protocol['macro_present']}. "
        "Caption metrics: per-modality corpus scores, rounded to "
        f"{protocol['caption_decimals']} decimals before averaging (BiRD)."
    )


def _summary_table(tasks: dict, overall: dict | None) -> str:
    header, cells = [], []
    for task in TASKS:
        summary = tasks[task]["summary"] if task in tasks else []
        if not summary:
            header.append(f"{task}")
            cells.append(MISSING)
        for item in summary:
            header.append(f"{task} {item['metric']}")
            cells.append(percent(item["value"]))
    header.append("Average")
    cells.append(percent(overall["value"]) if overall else MISSING)
    text = table(header, [cells], "r")
    if overall:
        used = ", ".join(f"{task} {metric}" for task, metric in overall["headlines"].items())
        text += f"\n\nAverage = mean of the task headlines ({used})."
        if overall["headlines"]["RC"] != "SPICE" or overall["headlines"]["MIA"] != "mBMR":
            text += " Not comparable with the paper's average, which uses RC SPICE and MIA mBMR."
    return text


def _headline_rows(tasks: dict) -> list[tuple[str, str | None]]:
    return [
        (task, tasks[task]["headline"]["metric"] if task in tasks and tasks[task]["headline"] else None)
        for task in TASKS
    ]


def _all_metric_rows(tasks: dict) -> list[tuple[str, str | None]]:
    rows: list[tuple[str, str | None]] = []
    for task in TASKS:
        metric_names = tasks[task]["metrics"] if task in tasks else [None]
        rows.extend((task, metric) for metric in metric_names)
    return rows


def _modality_table(tasks: dict, rows: Sequence[tuple[str, str | None]], with_average: bool) -> str:
    """Rows ``(task, metric)`` × the 8 modalities, Mean (8) and Mean (present)."""
    header = ["Task", "Metric", *(MODALITY_NAMES[m] for m in MODALITIES), "Mean (8)", "Mean (present)"]
    body = []
    per_modality_headlines: dict[str, list[float]] = {m: [] for m in MODALITIES}
    for task, metric in rows:
        result = tasks.get(task)
        if result is None or metric is None:
            body.append([task, MISSING, *([MISSING] * (len(MODALITIES) + 2))])
            continue
        cells = [task, metric]
        for modality in MODALITIES:
            if modality in result["empty_modalities"]:
                cells.append(MISSING)
            else:
                value = result["per_modality"][modality][metric]
                per_modality_headlines[modality].append(value)
                cells.append(percent(value))
        cells += [percent(result["macro"][metric]), percent(result["macro_present"][metric])]
        body.append(cells)
    if with_average:
        # The paper's "Average" row: per modality, the mean over the tasks that have data there.
        averages = [_mean_or_none(per_modality_headlines[m]) for m in MODALITIES]
        body.append(["Average", "", *(percent(value) for value in averages), "", ""])
    return table(header, body, "llr")


def _counts_table(tasks: dict) -> str:
    header = ["Task", "Count", *(MODALITY_NAMES[m] for m in MODALITIES), "All"]
    body = []
    for task in TASKS:
        if task not in tasks:
            body.append([task, MISSING, *([MISSING] * (len(MODALITIES) + 1))])
            continue
        for name, values in tasks[task]["counts"].items():
            body.append([task, name.replace("_", " "), *(str(values[m]) for m in MODALITIES), str(values["all"])])
    legend = (
        "\n\n*empty responses*: empty after clean-up; *unparseable* (VG): a GT box but no box in the response; "
        "*skipped no gt* (VG): no GT box, not scored (BiRD); *malformed boxes* (VG): box strings that are not "
        "four numbers (IoU 0)."
    )
    return table(header, body, "llr") + legend


def _backends_table(backends: dict[str, str], tasks: dict) -> str:
    shown = {"cleanup", "tokenizer"} | {metric for result in tasks.values() for metric in result["metrics"]}
    return table(["Metric", "Backend"], [[name, backend] for name, backend in backends.items() if name in shown], "l")


# ---- helpers ------------------------------------------------------------------------------------
def _headline(metrics: dict, task: str) -> dict | None:
    result = metrics["tasks"].get(task)
    return result["headline"] if result else None


def _column_metric(named: dict[str, dict], task: str) -> str | None:
    for metrics in named.values():
        headline = _headline(metrics, task)
        if headline is not None:
            return headline["metric"]
    return None


def _mean_or_none(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
