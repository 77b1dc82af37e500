"""The reflective-correction section of a report: rounds, corrections per round and task, scores before and after."""

from __future__ import annotations

from clinkd.data.records import TASKS


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}" if percent else f"{value:.3f}"


def render_report(doc: dict) -> str:
    """The report section: per-round counts, corrections per round and task, and scores before and after."""
    settings, rounds, after = doc["settings"], doc["rounds"], doc["after"]
    lines = [
        "## Reflective correction",
        "",
        f"{len(rounds)} round(s); corrector `{settings.get('corrector')}`, similarity `{settings.get('similarity')}`; "
        f"weak = similarity < {settings.get('threshold')} or a box with IoU ≤ {settings.get('iou_threshold')}; "
        f"{settings.get('generated_per_round')} training turns generated per round; at most {settings.get('budget') or 'all weak'} "
        f"corrections per round; replies accepted at similarity ≥ {settings.get('accept_threshold')} with every box kept.",
        "",
        "| round | mean similarity | grounded % | weak | sent | accepted | rejected | failed | train examples | steps | s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        s, c = r["scores"]["all"], r["corrections"]["all"]
        lines.append(
            f"| {r['round']} | {_fmt(s['similarity'])} | {_fmt(s['grounded'], True)} | {r['weak']} | {c['sent']} | {c['accepted']} | "
            f"{c['rejected']} | {c['failed']} | {r['train_examples']} | {r['steps'] if r['steps'] is not None else '–'} | {r['seconds']:.0f} |"
        )
    lines += ["", "### Corrections per round and task", "", "| round | task | weak | sent | accepted | rejected | failed | reasons |", "|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rounds:
        for task in [t for t in TASKS if t in r["scores"]]:
            c = r["corrections"].get(task, {"sent": 0, "accepted": 0, "rejected": 0, "failed": 0, "reasons": {}})
            reasons = ", ".join(f"{k} {v}" for k, v in c["reasons"].items()) or "–"
            lines.append(
                f"| {r['round']} | {task} | {r['scores'][task]['weak']} | {c['sent']} | {c['accepted']} | {c['rejected']} | {c['failed']} | {reasons} |"
            )
    columns = [(f"round {r['round']}" + (" (before)" if r["round"] == 1 else ""), r["scores"]) for r in rounds]
    if after is not None:
        columns.append(("after", after))
    if columns:
        lines += [
            "",
            "### Scores before and after",
            "",
            "Mean similarity (grounded % for VG) of the model's outputs on the same training turns: each round's "
            "column is the model entering that round, `after` the final model.",
            "",
            "| task | " + " | ".join(name for name, _ in columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        for task in [t for t in (*TASKS, "all") if t in columns[0][1]]:
            cells = []
            for _, scores in columns:
                s = scores.get(task)
                cells.append("–" if s is None else _fmt(s["similarity"]) + (f" ({_fmt(s['grounded'], True)}%)" if s["grounded"] is not None else ""))
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
