"""The reflective-correction section of a report: rounds, corrections per round and task, scores before and after."""

from __future__ import annotations

from clinkd.data.records import TASKS
from clinkd.markdown import table


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}" if percent else f"{value:.3f}"


def render_report(doc: dict) -> str:
    """The report section: per-round counts, corrections per round and task, and scores before and after."""
    settings, rounds, after = doc["settings"], doc["rounds"], doc["after"]
    intro = (
        f"{len(rounds)} round(s); corrector `{settings.get('corrector')}`, similarity `{settings.get('similarity')}`; "
        f"weak = similarity < {settings.get('threshold')} or a box with IoU ≤ {settings.get('iou_threshold')}; "
        f"{settings.get('generated_per_round')} training turns generated per round; at most "
        f"{settings.get('budget') or 'all weak'} "
        f"corrections per round; replies accepted at similarity ≥ {settings.get('accept_threshold')} with every box "
        "kept."
    )
    parts = [
        "## Reflective correction",
        intro,
        _rounds_table(rounds),
        "### Corrections per round and task",
        _corrections_table(rounds),
    ]
    columns = [(f"round {r['round']}" + (" (before)" if r["round"] == 1 else ""), r["scores"]) for r in rounds]
    if after is not None:
        columns.append(("after", after))
    if columns:
        note = (
            "Mean similarity (grounded % for VG) of the model's outputs on the same training turns: each round's "
            "column is the model entering that round, `after` the final model."
        )
        parts += ["### Scores before and after", note, _scores_table(columns)]
    return "\n\n".join(parts)


def _rounds_table(rounds: list[dict]) -> str:
    header = [
        "round",
        "mean similarity",
        "grounded %",
        "weak",
        "sent",
        "accepted",
        "rejected",
        "failed",
        "train examples",
        "steps",
        "s",
    ]
    rows = []
    for r in rounds:
        s, c = r["scores"]["all"], r["corrections"]["all"]
        steps = "–" if r["steps"] is None else str(r["steps"])
        rows.append(
            [
                str(r["round"]),
                _fmt(s["similarity"]),
                _fmt(s["grounded"], True),
                str(r["weak"]),
                str(c["sent"]),
                str(c["accepted"]),
                str(c["rejected"]),
                str(c["failed"]),
                str(r["train_examples"]),
                steps,
                f"{r['seconds']:.0f}",
            ]
        )
    return table(header, rows, "r")


def _corrections_table(rounds: list[dict]) -> str:
    rows = []
    for r in rounds:
        for task in [t for t in TASKS if t in r["scores"]]:
            c = r["corrections"].get(task, {"sent": 0, "accepted": 0, "rejected": 0, "failed": 0, "reasons": {}})
            reasons = ", ".join(f"{k} {v}" for k, v in c["reasons"].items()) or "–"
            counts = [r["scores"][task]["weak"], c["sent"], c["accepted"], c["rejected"], c["failed"]]
            rows.append([str(r["round"]), task, *map(str, counts), reasons])
    return table(["round", "task", "weak", "sent", "accepted", "rejected", "failed", "reasons"], rows, "rlrrrrrl")


def _scores_table(columns: list[tuple[str, dict]]) -> str:
    rows = []
    for task in [t for t in (*TASKS, "all") if t in columns[0][1]]:
        cells = []
        for _, scores in columns:
            s = scores.get(task)
            cells.append(
                "–"
                if s is None
                else _fmt(s["similarity"]) + (f" ({_fmt(s['grounded'], True)}%)" if s["grounded"] is not None else "")
            )
        rows.append([task, *cells])
    return table(["task", *(name for name, _ in columns)], rows, "lr")
