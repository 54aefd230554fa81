"""Judge a linkage against labels: true pairs (given, or from a true cluster column),
precision, recall and F1 across thresholds, and a chart of them.

Pairs are unordered: ``(a, b)`` and ``(b, a)`` are the same pair; ids are any hashable
record keys (e.g. ``"table|record_id"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import polars as pl

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def _key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def true_pairs_from_clusters(
    ids: Sequence[str], clusters: Sequence[object]
) -> set[tuple[str, str]]:
    """Every pair of records sharing a true cluster (e.g. FEBRL's original record number)."""
    by: dict[object, list[str]] = {}
    for i, c in zip(ids, clusters, strict=True):
        if c is not None:
            by.setdefault(c, []).append(str(i))
    out: set[tuple[str, str]] = set()
    for members in by.values():
        members.sort()
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                out.add((members[x], members[y]))
    return out


def true_pairs(pairs: Iterable[tuple[object, object]]) -> set[tuple[str, str]]:
    """Labelled matching pairs, as unordered string pairs."""
    return {_key(str(a), str(b)) for a, b in pairs}


def pair_metrics(
    id_l: Sequence[str],
    id_r: Sequence[str],
    probability: Sequence[float],
    truth: set[tuple[str, str]],
    thresholds: Sequence[float] = THRESHOLDS,
) -> pl.DataFrame:
    """Precision, recall and F1 of the pairs scored at or above each threshold (a pair scored
    several times counts once, at its highest probability)."""
    best: dict[tuple[str, str], float] = {}
    for a, b, p in zip(id_l, id_r, probability, strict=True):
        k = _key(str(a), str(b))
        if a != b and p > best.get(k, -1.0):
            best[k] = float(p)
    keys = list(best)
    prob = np.fromiter((best[k] for k in keys), float, len(keys))
    hit = np.fromiter((k in truth for k in keys), bool, len(keys))
    rows = []
    for t in thresholds:
        sel = prob >= t
        tp = int((hit & sel).sum())
        fp = int(sel.sum()) - tp
        fn = len(truth) - tp
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / len(truth) if truth else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append((t, tp, fp, fn, precision, recall, f1))
    return pl.DataFrame(
        rows,
        schema=["threshold", "tp", "fp", "fn", "precision", "recall", "f1"],
        orient="row",
    )


def metrics_chart(metrics: pl.DataFrame, path: Path, title: str = "") -> Path:
    """Precision, recall and F1 against the threshold, as a PNG (no identifiers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for col in ("precision", "recall", "f1"):
        ax.plot(metrics["threshold"], metrics[col], marker="o", label=col)
    ax.set_xlabel("match probability threshold")
    ax.set_ylim(
        min(
            0.8, float(metrics.select(pl.min_horizontal("precision", "recall", "f1")).min().item())
        ),
        1.005,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path
