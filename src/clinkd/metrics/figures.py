"""PNG figures of an evaluation (matplotlib, Agg canvas: no display, no global pyplot state).

* :func:`modality_figure` (the paper's Figure 3): left, each task's headline score per modality for
  the first model; right, per modality the mean of the task headlines over the tasks with data there
  (the paper's "average scores of 4 tasks arranged by types of data"), one bar per model. Scores ×100;
  a modality without data for a task has no bar.
* :func:`loss_figure`: training loss against step for every ``train_log.json`` under a run folder
  (``{"log_history": [...]}`` of transformers' Trainer): ``loss`` solid, ``eval_loss`` dashed with
  markers, other logged loss terms (e.g. distillation ``kd``/``ce``) dotted.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clinkd.data.records import MODALITIES, MODALITY_NAMES, TASKS

# Numeric log keys that are not losses (Trainer bookkeeping and end-of-training summaries).
NOT_LOSSES = frozenset(["grad_norm", "learning_rate", "epoch", "step", "total_flos", "num_input_tokens_seen"])
DPI = 120


def modality_scores(metrics: dict) -> dict[str, dict[str, float | None]]:
    """task → modality → headline value (None for a modality without data)."""
    scores: dict[str, dict[str, float | None]] = {}
    for task in TASKS:
        result = metrics["tasks"].get(task)
        if result is None or result["headline"] is None:
            continue
        metric = result["headline"]["metric"]
        scores[task] = {
            m: None if m in result["empty_modalities"] else result["per_modality"][m][metric] for m in MODALITIES
        }
    return scores


def modality_averages(metrics: dict) -> dict[str, float | None]:
    """modality → mean of the task headlines with data there (None when no task has data)."""
    scores = modality_scores(metrics)
    averages = {}
    for modality in MODALITIES:
        values = [per[modality] for per in scores.values() if per[modality] is not None]
        averages[modality] = sum(values) / len(values) if values else None
    return averages


def modality_figure(named: dict[str, dict], path: Path) -> Path:
    """Write the Figure-3-style chart for ``{label: metrics}`` (first label on the left panel)."""
    figure = Figure(figsize=(13, 4.2), dpi=DPI)
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    label, first = next(iter(named.items()))
    scores = modality_scores(first)
    _grouped_bars(
        left,
        {f"{task} ({first['tasks'][task]['headline']['metric']})": per for task, per in scores.items()},
        f"{label}: task headline per modality",
    )
    _grouped_bars(
        right, {name: modality_averages(metrics) for name, metrics in named.items()}, "Mean over tasks per modality"
    )
    figure.tight_layout()
    return _save(figure, path)


def _grouped_bars(axes, series: dict[str, dict[str, float | None]], title: str) -> None:
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i, m in enumerate(MODALITIES) if values[m] is not None]
        heights = [100 * values[m] for m in MODALITIES if values[m] is not None]
        axes.bar(xs, heights, width=width, label=name)
    axes.set_xticks(range(len(MODALITIES)), [MODALITY_NAMES[m] for m in MODALITIES], rotation=30, ha="right")
    axes.set_ylabel("score ×100")
    axes.set_ylim(0, 118)  # room above 100 for the legend row
    axes.set_title(title, fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    if series:
        axes.legend(fontsize=8, loc="upper center", ncol=min(4, len(series)), frameon=False)


def train_logs(run_dir: Path) -> dict[str, list[dict]]:
    """Stage name (the log's folder relative to ``run_dir``) → Trainer ``log_history``; checkpoints skipped."""
    logs = {}
    for path in sorted(Path(run_dir).glob("**/train_log.json")):
        relative = path.parent.relative_to(run_dir)
        if any(part.startswith("checkpoint") for part in relative.parts):
            continue
        try:
            history = json.loads(path.read_text(encoding="utf-8"))["log_history"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a Trainer log ({error})") from None
        logs[str(relative) if str(relative) != "." else Path(run_dir).name] = history
    return logs


def loss_series(history: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """Loss key → (steps, values) from a ``log_history``; the end-of-training summary row is left out."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in history:
        if "step" not in row or "train_runtime" in row:
            continue
        for key, value in row.items():
            if key in NOT_LOSSES or key.startswith("train_") or not isinstance(value, int | float):
                continue
            if key.startswith("eval_") and key != "eval_loss":
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(row["step"])
            values.append(float(value))
    return series


def loss_figure(run_dir: Path, path: Path) -> Path | None:
    """Write the loss curves of every training stage under ``run_dir``; None when there is no log with losses."""
    logs = {stage: loss_series(history) for stage, history in train_logs(run_dir).items()}
    logs = {stage: series for stage, series in logs.items() if series}
    if not logs:
        return None
    figure = Figure(figsize=(7, 4.2), dpi=DPI)
    axes = figure.subplots()
    for stage, series in logs.items():
        for key, (steps, values) in series.items():
            style = {"loss": {"linestyle": "-"}, "eval_loss": {"linestyle": "--", "marker": "o"}}.get(
                key, {"linestyle": ":"}
            )
            axes.plot(steps, values, label=f"{stage}: {key}", **style)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.set_title("Training loss", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure).print_png(str(path))
    return path
