"""The report's figures, drawn from disclosure-controlled numbers only, as PNG bytes.

Each function takes numbers that may leave the secure environment (released counts, coarsened
Kaplan-Meier points, rounded histogram bins, standardised differences, estimates) and returns
a PNG (no timestamp or software tag: the same numbers give the same bytes, so a rerun of the
report is byte-identical). Nothing here reads files.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from orchestration.report.labels import RATIO_SCALES

GROUP_COLOURS = {"CLA": "#c44e52", "NLA": "#4c72b0"}
FONT = 9


def png(fig: Any) -> bytes:
    """The figure as PNG bytes (closed afterwards)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# --- attrition ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowStep:
    """One inclusion step as released: its criterion and the counts as text ("[c]" allowed)."""

    description: str
    remaining: str
    excluded: str


def _count_text(value: str) -> str:
    if value in ("", "nan"):
        return "n not available"
    if not value.replace(",", "").isdigit():
        return "n suppressed"
    return f"n = {int(value.replace(',', '')):,}"


def attrition_flow(steps: Sequence[FlowStep]) -> bytes:
    """A STROBE-style flow diagram: one box per inclusion criterion with the children
    remaining, and beside each arrow a box with the children that criterion excluded."""
    box_w, box_h, gap = 5.6, 0.72, 0.62
    height = len(steps) * (box_h + gap)
    fig, ax = plt.subplots(figsize=(9.5, 0.75 * height))
    ax.set_xlim(0, 10)
    ax.set_ylim(-0.1, height + 0.1)
    ax.axis("off")
    x0, centre = 0.2, 0.2 + box_w / 2
    for i, st in enumerate(steps):
        top = height - i * (box_h + gap)
        ax.add_patch(FancyBboxPatch((x0, top - box_h), box_w, box_h,
                     boxstyle="round,pad=0.02", fc="#eef3fb", ec="#4c72b0"))  # fmt: skip
        text = textwrap.fill(st.description[:1].upper() + st.description[1:], 62)
        ax.text(centre, top - box_h / 2, f"{text}\n{_count_text(st.remaining)}",
                ha="center", va="center", fontsize=FONT)  # fmt: skip
        if i + 1 == len(steps):
            break
        below = top - box_h
        ax.annotate("", xy=(centre, below - gap + 0.02), xytext=(centre, below),
                    arrowprops={"arrowstyle": "-|>", "color": "#555"})  # fmt: skip
        nxt = steps[i + 1]
        mid = below - gap / 2
        ax.plot([centre, 6.5], [mid, mid], color="#555", lw=0.8)
        ax.add_patch(FancyBboxPatch((6.5, mid - 0.22), 3.2, 0.44,
                     boxstyle="round,pad=0.02", fc="#fbeeee", ec="#c44e52"))  # fmt: skip
        ax.text(8.1, mid, f"Excluded: {_count_text(nxt.excluded)}", ha="center",
                va="center", fontsize=FONT - 1)  # fmt: skip
    return png(fig)


# --- forest plot -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForestRow:
    """One estimate as released: ``estimate``/``low``/``high`` are None when withheld."""

    panel: str  # the outcome and scale: rows of one panel share an axis
    scale: str
    label: str
    estimate: float | None
    low: float | None
    high: float | None
    text: str  # the estimate and interval as released, e.g. "-0.944 (-3.32 to 1.43)"
    note: str  # a short warning shown on the row ("" when none)


def forest_plot(rows: Sequence[ForestRow]) -> bytes:
    """One forest plot: a panel per outcome and scale (each with its own axis: a mean
    difference and a hazard ratio cannot share one), the estimate and interval as text on each
    row and the row's warning beside it. Laid out in inches so long labels never overlap."""
    panels: dict[str, list[ForestRow]] = {}
    for r in rows:
        panels.setdefault(r.panel, []).append(r)
    width, row_h, title_h, axis_h, head_h = 12.5, 0.27, 0.38, 0.62, 0.3
    height = head_h + sum(title_h + len(p) * row_h + axis_h for p in panels.values())
    fig = plt.figure(figsize=(width, height))
    col = {"label": 0.1, "plot": 4.3, "plot_w": 3.5, "text": 8.0, "note": 10.35}

    def fx(inches: float) -> float:
        return inches / width

    def fy(inches: float) -> float:
        return inches / height

    fig.text(fx(col["text"]), fy(height - 0.15), "Estimate (95% CI)", fontsize=FONT,
             fontweight="bold", va="center")  # fmt: skip
    fig.text(fx(col["note"]), fy(height - 0.15), "Note", fontsize=FONT, fontweight="bold",
             va="center")  # fmt: skip
    top = height - head_h
    for panel, prow in panels.items():
        fig.text(fx(col["label"]), fy(top - title_h / 2), panel, fontsize=FONT + 1,
                 fontweight="bold", va="center")  # fmt: skip
        n = len(prow)
        bottom = top - title_h - n * row_h
        ax = fig.add_axes((fx(col["plot"]), fy(bottom), fx(col["plot_w"]), fy(n * row_h)))
        ax.set_ylim(-0.5, n - 0.5)
        ax.set_yticks([])
        scale = prow[0].scale
        for k, r in enumerate(prow):
            yy = n - 1 - k
            y_fig = fy(bottom + (yy + 0.5) * row_h)
            fig.text(fx(col["label"] + 0.15), y_fig, r.label, fontsize=FONT, va="center")
            fig.text(fx(col["text"]), y_fig, r.text, fontsize=FONT, va="center",
                     family="monospace")  # fmt: skip
            if r.note:
                fig.text(fx(col["note"]), y_fig, "⚠ " + r.note, fontsize=FONT - 1, va="center",
                         color="#a4161a")  # fmt: skip
            if r.estimate is not None and r.low is not None and r.high is not None:
                ax.plot([r.low, r.high], [yy, yy], color="#333", lw=1.2)
                ax.plot([r.estimate], [yy], "s", color="#4c72b0", ms=5)
        if any(r.estimate is not None for r in prow):
            _forest_axis(ax, scale, prow)
            top = bottom - axis_h
        else:  # every row withheld: no axis to read
            ax.axis("off")
            top = bottom - 0.15
    return png(fig)


def _forest_axis(ax: Any, scale: str, rows: Sequence[ForestRow]) -> None:
    """The x axis of one panel: the null line, room for every interval, readable ticks (plain
    numbers on a log axis, not powers of ten)."""
    values = [v for r in rows for v in (r.low, r.high) if v is not None and np.isfinite(v)]
    ratio = scale in RATIO_SCALES
    null = 1.0 if ratio else 0.0
    ax.axvline(null, color="grey", ls="--", lw=0.8)
    lo, hi = min([*values, null]), max([*values, null])
    if ratio:
        lo, hi = (lo, hi) if values else (0.5, 2.0)
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.15, hi * 1.15)
        inside = [
            t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 4, 8, 16, 32) if lo / 1.15 <= t <= hi * 1.15
        ]
        finer = [t for t in (0.25, 0.75, 1.5, 3, 6) if lo / 1.15 <= t <= hi * 1.15]
        ticks = sorted(inside + finer) if len(inside) < 3 else inside
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        if not values:
            lo, hi = -1.0, 1.0
        pad = 0.08 * (hi - lo or 1.0)
        ax.set_xlim(lo - pad, hi + pad)
        ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.tick_params(axis="x", labelsize=FONT - 1)
    ax.set_xlabel(_scale_axis_label(scale), fontsize=FONT - 1, labelpad=2)


def _scale_axis_label(scale: str) -> str:
    text = scale.replace("_", " ")
    if scale in RATIO_SCALES:
        return f"{text} (log scale; 1 = no difference)"
    return f"{text} (0 = no difference)"


# --- Kaplan-Meier ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KmCurve:
    """One group's coarsened curve: whole years, cumulative incidence (%), numbers at risk as
    released text ("" where none is shown)."""

    group: str
    years: Sequence[int]
    incidence_pct: Sequence[float]
    at_risk: Sequence[str]


def kaplan_meier(title: str, curves: Sequence[KmCurve]) -> bytes:
    """Cumulative incidence by group at the whole years the disclosure rule shows, with a
    numbers-at-risk table under the axis (the released, rounded numbers)."""
    fig, ax = plt.subplots(figsize=(8, 4.4))
    last = max([5, *(max(c.years) for c in curves if len(c.years))])
    top = max([1.0, *(max(c.incidence_pct) for c in curves if len(c.incidence_pct))])
    for c in curves:
        few = len(c.years) <= 1
        ax.plot(c.years, c.incidence_pct, marker="o", ms=4, lw=1.6,
                label=c.group + (": too few events to show" if few else ""),
                color=GROUP_COLOURS.get(c.group))  # fmt: skip
    ax.set_xlim(-0.3, last + 0.5)
    ax.set_ylim(0, top * 1.08)
    ax.set_xticks(range(0, int(last) + 1))
    ax.tick_params(labelsize=FONT)
    ax.set_xlabel("Whole years from first social-services contact", fontsize=FONT)
    ax.set_ylabel("Cumulative incidence (%)", fontsize=FONT)
    ax.set_title(title, fontsize=FONT + 2)
    ax.legend(fontsize=FONT, loc="upper left", frameon=False)
    ax.grid(alpha=0.25)
    trans = ax.get_xaxis_transform()
    ax.text(-0.02, -0.27, "Number at risk", transform=ax.transAxes, ha="right",
            fontsize=FONT, fontweight="bold")  # fmt: skip
    for k, c in enumerate(curves):
        yy = -0.36 - 0.09 * k
        ax.text(-0.02, yy, c.group, transform=ax.transAxes, ha="right", fontsize=FONT,
                color=GROUP_COLOURS.get(c.group))  # fmt: skip
        for year, n in zip(c.years, c.at_risk, strict=True):
            ax.text(year, yy, n or "·", transform=trans, ha="center", fontsize=FONT - 1,
                    color=GROUP_COLOURS.get(c.group))  # fmt: skip
    fig.subplots_adjust(bottom=0.3)
    return png(fig)


# --- propensity diagnostics --------------------------------------------------------------------


def overlap(title: str, edges: np.ndarray, shares: dict[str, np.ndarray]) -> bytes:
    """Preference-score distributions by group, drawn from released bins: ``shares`` per group
    is each bin's share of the group (NaN where the bin's count is suppressed, shown hatched)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = np.diff(edges)
    for (g, share), colour in zip(shares.items(), ("#c44e52", "#4c72b0"), strict=False):
        shown = np.nan_to_num(share)
        ax.bar(edges[:-1], shown / width, width=width, align="edge", alpha=0.45,
               color=colour, label=g, edgecolor="white")  # fmt: skip
        gone = np.isnan(share)
        if gone.any():
            ax.bar(edges[:-1][gone], 0.15, width=width[gone], align="edge", fill=False,
                   hatch="///", edgecolor=colour, lw=0)  # fmt: skip
    ax.axvspan(0.3, 0.7, color="grey", alpha=0.08, label="equipoise 0.3-0.7")
    ax.set_xlim(0, 1)
    ax.set_xlabel("Preference score", fontsize=FONT)
    ax.set_ylabel("Density", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    ax.set_title(title, fontsize=FONT + 1)
    ax.legend(fontsize=FONT - 1, frameon=False)
    return png(fig)


def balance(title: str, labels: Sequence[str], before: Sequence[float], after: Sequence[float],
            threshold: float) -> bytes:  # fmt: skip
    """Love plot of the covariates given (the caller picks the top ones): |SMD| before and
    after weighting, the balance threshold dashed."""
    n = len(labels)
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * n + 1.3))
    y = np.arange(n)[::-1]
    ax.scatter(np.abs(before), y, label="before weighting", marker="o", color="#c44e52")
    ax.scatter(np.abs(after), y, label="after weighting", marker="x", color="#4c72b0")
    ax.axvline(threshold, color="grey", ls="--", lw=0.8, label=f"|SMD| = {threshold:g}")
    ax.set_yticks(y, list(labels), fontsize=FONT - 1)
    ax.set_xlabel("|Standardised mean difference|", fontsize=FONT)
    ax.tick_params(axis="x", labelsize=FONT)
    ax.set_title(title, fontsize=FONT + 1)
    ax.legend(fontsize=FONT - 1, loc="lower right")
    ax.grid(axis="x", alpha=0.25)
    return png(fig)


# --- effects by years since entry ----------------------------------------------------------------


@dataclass(frozen=True)
class YearPoint:
    """One year since entry as released: ``estimate``/``low``/``high`` None when withheld."""

    label: str  # "0", "1", ..., "4+"
    estimate: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class YearPanel:
    """One outcome's effects by whole years since entry to care, on ``scale``, in the units of
    ``y_label`` (the caller scales them: a proportion in percentage points)."""

    title: str
    scale: str
    points: Sequence[YearPoint]
    y_label: str


def by_years_since_entry(title: str, panels: Sequence[YearPanel]) -> bytes:
    """A panel per outcome: the effect of care at each whole year since entry with its 95%
    interval, the null dashed (a ratio on a log axis); a withheld year is named on the axis
    and has no point."""
    n = max(1, len(panels))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.9 * cols + 0.6, 3.3 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.axis("off")
            continue
        p = panels[k]
        ratio = p.scale in RATIO_SCALES
        xs = np.arange(len(p.points))
        shown = [
            (x, pt)
            for x, pt in zip(xs, p.points, strict=True)
            if pt.estimate is not None and pt.low is not None and pt.high is not None
        ]
        for x, pt in shown:
            assert pt.estimate is not None and pt.low is not None and pt.high is not None
            ax.plot([x, x], [pt.low, pt.high], color="#333", lw=1.2)
            ax.plot([x], [pt.estimate], "s", color="#c44e52", ms=5)
        if len(shown) > 1:
            ax.plot([x for x, _ in shown], [pt.estimate for _, pt in shown], color="#c44e52",
                    lw=0.8, alpha=0.6)  # fmt: skip
        if not shown:
            ax.text(0.5, 0.5, "every year withheld\n(too few children or events)",
                    transform=ax.transAxes, ha="center", va="center", fontsize=FONT - 1,
                    color="#a4161a")  # fmt: skip
            ax.set_yticks([])
        else:
            ax.axhline(1.0 if ratio else 0.0, color="grey", ls="--", lw=0.8)
        if ratio and shown:
            values = [v for _, pt in shown for v in (pt.low, pt.high) if v is not None]
            lo, hi = min([*values, 1.0]) / 1.15, max([*values, 1.0]) * 1.15
            ax.set_yscale("log")
            ax.set_ylim(lo, hi)
            steps = (0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 16, 32)
            ax.yaxis.set_major_locator(FixedLocator([t for t in steps if lo <= t <= hi]))
            ax.yaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ticks = [
            pt.label if pt.estimate is not None else f"{pt.label}\nwithheld" for pt in p.points
        ]
        ax.set_xticks(xs, ticks, fontsize=FONT - 1)
        ax.set_xlim(-0.5, len(p.points) - 0.5)
        ax.tick_params(axis="y", labelsize=FONT - 1)
        ax.set_xlabel("Whole years since entry to care", fontsize=FONT - 1)
        ax.set_ylabel(p.y_label, fontsize=FONT - 1)
        ax.set_title(textwrap.fill(p.title, 44), fontsize=FONT)
        ax.grid(alpha=0.25)
    fig.suptitle(title, fontsize=FONT + 2)
    fig.tight_layout()
    return png(fig)
