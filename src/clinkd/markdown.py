"""Markdown tables, built one way for every report section (metrics, comparisons, stage times, reflection)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

RULES = {"l": ":--", "r": "--:"}


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "lr") -> str:
    """A Markdown table of text cells, ``|`` in a cell escaped.

    ``align`` gives each column ``l`` (left) or ``r`` (right); its last letter holds for the columns after it.
    """
    letters = [align[min(column, len(align) - 1)] for column in range(len(header))]
    lines = [_row(header, escape=False), "|" + "|".join(RULES[letter] for letter in letters) + "|"]
    lines += [_row(row) for row in rows]
    return "\n".join(lines)


def _row(cells: Sequence[str], escape: bool = True) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") if escape else cell for cell in cells) + " |"
