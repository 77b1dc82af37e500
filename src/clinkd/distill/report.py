"""The run report's distillation section: what the teacher's pseudo labels were worth, and which of them taught."""

from __future__ import annotations

from clinkd.distill.pseudo import DROP_REASONS
from clinkd.markdown import table
from clinkd.metrics.fidelity import FIDELITY_LABELS

DROP_TEXT = {
    "unusable": "unusable (empty, or a box that does not parse)",
    "wrong_structure": "name another structure than their turn",
    "no_box": "VG answers without a parseable box",
    "low_confidence": "below distill.min_margin",
}


def render_distill(info: dict) -> str:
    """Markdown of ``distill/info.json``: the pseudo labels' question fidelity and what became of them."""
    targets, pseudo = info.get("targets", {}), info.get("pseudo", {})
    parts = [
        "## Distillation",
        f"Student targets: `{targets.get('kind', '?')}`, {targets.get('examples', '?')} examples.",
    ]
    if not targets.get("pseudo_labelled"):
        return "\n\n".join(parts)
    fidelity = pseudo.get("fidelity", {})
    rows = [
        [
            text,
            "–"
            if fidelity.get(name, {}).get("value") is None
            else f"{100 * fidelity[name]['value']:.1f} ({fidelity[name]['n']})",
        ]
        for name, text in FIDELITY_LABELS.items()
    ]
    parts += [
        "### The teacher's pseudo labels",
        "Question fidelity, % of the labels each applies to (n):",
        table(["share", "%"], rows, "lr"),
    ]
    fate = [
        [f"dropped: {DROP_TEXT[reason]}", str(targets.get(f"pseudo_dropped_{reason}", 0))] for reason in DROP_REASONS
    ]
    fate += [
        ["equal to the ground truth (not added twice)", str(targets.get("pseudo_equal_gt", 0))],
        ["used as extra targets", str(targets.get("pseudo_used", 0))],
    ]
    parts += [f"Of {targets['pseudo_labelled']} pseudo-labelled turns:", table(["", "turns"], fate, "lr")]
    return "\n\n".join(parts)
