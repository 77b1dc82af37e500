"""Recipe: ``clinkd compare RUN_A RUN_B ...``: side-by-side tables of evaluated runs (the paper's Table 2).

Each argument is a run folder holding ``metrics.json`` (as ``clinkd run``/``clinkd evaluate`` write it)
or the ``metrics.json`` file itself; the run's model metrics are used (its trivial baselines are not).
The first run is the reference row: the others carry ``↑``/``↓`` against it, as the paper's ablation
table does against BiRD. Runs scored with different metric backends (e.g. METEOR from the jar in one
and from NLTK in the other) are not comparable on those metrics, and the output says so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from clinkd.io import atomic_write_text
from clinkd.metrics.tables import markdown, metric_rows, summary_rows, to_csv

METRICS_FILE = "metrics.json"


def load_run_metrics(path: Path) -> dict:
    """The model metrics of a run folder or ``metrics.json`` (a bare ``score_predictions`` result works too)."""
    path = Path(path)
    file = path / METRICS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no {METRICS_FILE} (evaluate the run first: clinkd evaluate / clinkd run)")
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: not JSON ({error})") from None
    metrics = document.get("model", document)
    if "tasks" not in metrics:
        raise ValueError(f"{file}: no 'tasks' (not a clinkd metrics.json)")
    return metrics


def run_labels(paths: Sequence[Path], labels: Sequence[str] | None = None) -> list[str]:
    """``labels`` as given, else each run's folder name (made unique with its parent where names repeat)."""
    if labels:
        if len(labels) != len(paths):
            raise ValueError(f"{len(labels)} labels for {len(paths)} runs")
        return list(labels)
    names = [(Path(p) if Path(p).is_dir() else Path(p).parent).resolve() for p in paths]
    short = [name.name for name in names]
    return [f"{name.parent.name}/{name.name}" if short.count(name.name) > 1 else name.name for name in names]


def backend_differences(named: dict[str, dict]) -> list[str]:
    """One line per metric whose backend differs between runs."""
    metrics = dict.fromkeys(key for m in named.values() for key in m.get("backends", {}))
    lines = []
    for metric in metrics:
        used = {label: m.get("backends", {}).get(metric) for label, m in named.items()}
        if len({backend for backend in used.values() if backend is not None}) > 1:
            lines.append(f"- **{metric}**: " + "; ".join(f"{label}: {backend}" for label, backend in used.items()))
    return lines


def render_compare(named: dict[str, dict]) -> str:
    """Table 2 (headlines, arrows against the first run), then every metric's Mean (8), then backend warnings."""
    sections = [
        "# Comparison",
        f"Reference row: **{next(iter(named))}** (↑/↓: higher/lower than it). Scores ×100; Mean (8) over modalities.",
        "## Headlines (Table 2)\n\n" + markdown(*summary_rows(named), arrows=True),
        "## Every metric\n\n" + markdown(*metric_rows(named), arrows=True),
    ]
    differences = backend_differences(named)
    if differences:
        sections.append("## Backends differ: these metrics are not comparable across runs\n\n" + "\n".join(differences))
    return "\n\n".join(sections) + "\n"


def run_compare(paths: Sequence[Path], out_dir: Path | None = None, labels: Sequence[str] | None = None) -> str:
    """The comparison Markdown; with ``out_dir`` also ``comparison.md``, ``comparison.csv`` (Table 2) and
    ``comparison_metrics.csv`` (every metric)."""
    if len(paths) < 1:
        raise ValueError("compare needs at least one run")
    names = run_labels(paths, labels)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate run labels: {', '.join(names)}; pass --label for each run")
    named = {label: load_run_metrics(path) for label, path in zip(names, paths)}
    text = render_compare(named)
    if out_dir is not None:
        atomic_write_text(out_dir / "comparison.md", text)
        atomic_write_text(out_dir / "comparison.csv", to_csv(*summary_rows(named)))
        atomic_write_text(out_dir / "comparison_metrics.csv", to_csv(*metric_rows(named)))
    return text
