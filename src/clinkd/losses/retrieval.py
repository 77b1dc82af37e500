"""Attention supervision of the retrieval step in grounding: "look at the object you are about to box".

A box answer needs two things at once: a query built from the asked name, and image tokens whose keys
match it. Neither pays off before the other exists, so a small model trained on the answer alone sits on a
long plateau (docs/benchmarks.md, the grounding sections). This loss trains the retrieval directly: at each
position that writes a box, one attention head's probabilities over the image tokens should be the share of
the box in each token's cell.
"""

from __future__ import annotations

import torch


def cell_weights(
    box: tuple[float, float, float, float], rows: int, cols: int, scale: tuple[float, float] = (1000.0, 1000.0)
) -> torch.Tensor:
    """The share of ``box`` (``x1, y1, x2, y2``; x on ``0..scale[0]``, y on ``0..scale[1]``) inside each cell of a
    ``rows × cols`` grid over the image, in raster order (row-major, like the merged visual tokens); sums to 1.

    A degenerate box (no area) gives its whole weight to the cell holding its centre.
    """
    x1, y1, x2, y2 = (min(max(value / side, 0.0), 1.0) for value, side in zip(box, scale * 2))  # sides (x, y, x, y)
    x_edges = torch.linspace(0.0, 1.0, cols + 1, dtype=torch.float64)
    y_edges = torch.linspace(0.0, 1.0, rows + 1, dtype=torch.float64)
    width = (torch.minimum(x_edges[1:], torch.tensor(x2)) - torch.maximum(x_edges[:-1], torch.tensor(x1))).clamp(min=0)
    height = (torch.minimum(y_edges[1:], torch.tensor(y2)) - torch.maximum(y_edges[:-1], torch.tensor(y1))).clamp(min=0)
    area = height[:, None] * width[None, :]
    if area.sum() <= 0:
        area = torch.zeros(rows, cols, dtype=torch.float64)
        row = min(int((y1 + y2) / 2 * rows), rows - 1)
        col = min(int((x1 + x2) / 2 * cols), cols - 1)
        area[row, col] = 1.0
    return (area / area.sum()).flatten().float()


def attention_target_loss(attention_rows: torch.Tensor, targets: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean over rows of ``KL(targets[n] ‖ attention_rows[n]) = Σ_k t_k · (log t_k − log(a_k + eps))``.

    ``attention_rows`` (N, T): one head's attention probabilities from N query positions over T keys;
    ``targets`` (N, T): the wanted distribution of each row over its keys (zero outside the image tokens,
    each row summing to 1). Not renormalised over the image tokens: mass the head puts anywhere else counts
    as missing from the target, so the head becomes a pure retrieval head. 0 when the head matches the
    target (and when ``N`` is 0); the gradient is the cross-entropy's, the target's entropy only drops out.
    """
    if attention_rows.shape[0] == 0:
        return attention_rows.sum() * 0.0
    rows = torch.special.xlogy(targets, targets) - torch.special.xlogy(
        targets, attention_rows.float() + eps
    )  # xlogy: 0·log 0 = 0
    return rows.sum(dim=-1).mean()
