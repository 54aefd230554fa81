"""Statistical disclosure control for everything released from the secure environment.

Rules (thresholds in :class:`DisclosureSettings`):

1. primary suppression: a count below ``threshold`` (but above zero) is suppressed;
2. rounding: every other count is rounded to the nearest ``rounding`` (5 by default);
3. totals are recomputed from the rounded, unsuppressed cells (never released unrounded);
4. secondary suppression: where a row has exactly one suppressed cell, the next smallest cell
   in that row is also suppressed, so the suppressed value cannot be recovered from the total.

Primary and secondary suppressions are shown with the same mark, ``[c]`` (confidential, as the
ONS does), so a reader cannot tell which cell was the small one; a secondary cell is not small,
and labelling it ``<10`` would be false.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

SUPPRESSED = "[c]"


class DisclosureSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    threshold: int = Field(10, ge=1, description="counts below this (and above 0) are suppressed")
    rounding: int = Field(5, ge=1, description="counts are rounded to a multiple of this")


def round_to(x: np.ndarray, base: int) -> np.ndarray:
    return (np.floor(np.asarray(x, float) / base + 0.5) * base).astype(int)


def control_counts(
    table: pd.DataFrame,
    count_columns: list[str],
    settings: DisclosureSettings | None = None,
    total_column: str | None = "total",
) -> pd.DataFrame:
    """Return a release-safe copy of a table of counts (cells become strings)."""
    s = settings or DisclosureSettings()
    counts = table[count_columns].to_numpy(dtype=float)
    primary = (counts > 0) & (counts < s.threshold)
    suppressed = primary.copy()
    for i in range(counts.shape[0]):
        if suppressed[i].sum() == 1 and counts.shape[1] > 1:
            candidates = [(counts[i, j], j) for j in range(counts.shape[1]) if not suppressed[i, j]]
            if candidates:
                suppressed[i, min(candidates)[1]] = True
    rounded = round_to(counts, s.rounding)
    out = table.copy()
    for j, c in enumerate(count_columns):
        out[c] = [
            SUPPRESSED if suppressed[i, j] else str(rounded[i, j]) for i in range(counts.shape[0])
        ]
    if total_column:
        out[total_column] = [
            str(int(rounded[i][~suppressed[i]].sum())) + ("+" if suppressed[i].any() else "")
            for i in range(counts.shape[0])
        ]
    out.attrs["disclosure_control"] = (
        f"[c]: suppressed (a count from 1 to {s.threshold - 1}, or a second cell suppressed so "
        f"that one cannot be recovered from the total); other counts rounded to the nearest "
        f"{s.rounding}; totals recomputed from the released cells, '+' where a cell is [c]"
    )
    return out


def control_estimates(
    estimates: pd.DataFrame, settings: DisclosureSettings | None = None
) -> pd.DataFrame:
    """Estimates keep their values; group sizes are rounded, and estimates resting on fewer
    than ``threshold`` exposed or unexposed children are withheld.

    A contrast within the exposed (per placement move, per year of age at entry) has no
    unexposed group (``n_unexposed`` 0); only its exposed count is checked."""
    s = settings or DisclosureSettings()
    out = estimates.copy()
    n_unexp = out["n_unexposed"]
    small = (out["n_exposed"] < s.threshold) | ((n_unexp > 0) & (n_unexp < s.threshold))
    for c in ("estimate", "ci_low", "ci_high", "p_value"):
        out[c] = out[c].astype(object)
        out.loc[small, c] = "withheld"
    out["n_exposed"] = round_to(out["n_exposed"], s.rounding)
    out["n_unexposed"] = round_to(out["n_unexposed"], s.rounding)
    return out
