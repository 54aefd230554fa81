"""Statistical disclosure control for everything that leaves the secure environment.

What leaves: ``RUN/release/``, ``RUN/report.html`` and the Prefect artifacts. Rules (numbers in
:class:`DisclosureSettings`; floors 10 and 5 unless overridden with a recorded reason):

1. **primary suppression**: a count from 1 to ``threshold - 1`` is shown as ``[c]``; a true
   zero is shown as 0 (ONS practice: zeros are not disclosive), but no note or label may say
   what a ``[c]`` holds;
2. **estimates**: an estimate resting on fewer than ``threshold`` children, or (for event and
   binary outcomes) fewer than ``threshold`` events or non-events, in either group is withheld,
   and so are its group's counts; rows from which it could be recovered (an effect-modification
   interaction and its within-group rows) are withheld together;
3. **rounding**: every other count is rounded to the nearest ``rounding``; totals are either
   released cells themselves (rounded on their own) or recomputed from released rounded cells,
   never released unrounded;
4. **secondary suppression across tables**: every linear relation between released counts
   (row sums, attrition chain, Table 1 totals equal to the cohort size in attrition, contrasts
   that add up, counts repeated in several tables; :func:`release_relations`) is examined; while a
   relation holds a protected cell (a suppressed small count, or a cell suppressed to protect
   one) that is alone, or whose protected cells add up to less than ``threshold``, the smallest
   non-zero cell of that relation is suppressed as well (:func:`protect`);
5. **precision**: estimates printed per scale (ratios 2 dp, risk differences 3 dp, mean
   differences 3 significant figures), p-values to 2 significant figures or ``<0.001``.

Primary and secondary suppressions carry the same mark, ``[c]`` (confidential, as the ONS
does), so a reader cannot tell which cell was the small one. :func:`recoverable_cells` is the
attacker's check: interval arithmetic along every relation, across all released tables.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

SUPPRESSED = "[c]"
WITHHELD = "withheld"
THRESHOLD_FLOOR = 10
ROUNDING_FLOOR = 5


class DisclosureSettings(BaseModel):
    """Thresholds of disclosure control. Below the floors (threshold 10, rounding 5) only with
    ``override_reason``, and then every output is labelled NOT disclosure-controlled."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    threshold: int = Field(10, ge=1, description="counts below this (and above 0) are suppressed")
    rounding: int = Field(5, ge=1, description="counts are rounded to a multiple of this")
    override_reason: str | None = Field(
        None, description="why the floors (threshold 10, rounding 5) do not apply; recorded"
    )

    @model_validator(mode="after")
    def _floors(self) -> DisclosureSettings:
        below = [
            f"{key} {value} is below the floor of {floor}"
            for key, value, floor in (
                ("threshold", self.threshold, THRESHOLD_FLOOR),
                ("rounding", self.rounding, ROUNDING_FLOOR),
            )
            if value < floor
        ]
        if below and not (self.override_reason or "").strip():
            raise ValueError(
                "; ".join(below) + ": raise it, or add `override_reason: <why>` to "
                "`disclosure` (outputs are then labelled NOT disclosure-controlled)"
            )
        return self

    @property
    def below_floor(self) -> bool:
        return self.threshold < THRESHOLD_FLOOR or self.rounding < ROUNDING_FLOOR

    @property
    def label(self) -> str:
        """How every released output is labelled."""
        if self.below_floor:
            return (
                f"NOT disclosure-controlled: threshold {self.threshold}, rounding "
                f"{self.rounding} (override: {(self.override_reason or '').strip()})"
            )
        return (
            f"disclosure-controlled: counts below {self.threshold} suppressed, "
            f"others rounded to the nearest {self.rounding}"
        )


def round_to(x: np.ndarray | pd.Series | float, base: int) -> np.ndarray:
    return (np.floor(np.asarray(x, float) / base + 0.5) * base).astype(int)


# --- cells, relations, secondary suppression ------------------------------------------------

Cell = tuple[str, str, str]  # (table, row key, column)


@dataclass(frozen=True)
class Relation:
    """sum(coefficient * value) == 0 over released count cells."""

    terms: tuple[tuple[Cell, int], ...]
    why: str

    @property
    def cells(self) -> list[Cell]:
        return [c for c, _ in self.terms]


def sum_of(total: Cell, parts: Iterable[Cell], why: str = "") -> Relation:
    """total = sum(parts)."""
    return Relation(((total, -1), *((p, 1) for p in parts)), why)


COUNT_COLUMNS: dict[str, list[str]] = {
    "attrition": ["n_remaining", "n_excluded"],
    "table1_counts": ["n_CLA", "n_NLA"],
    "estimates": ["n_exposed", "n_unexposed", "events_exposed", "events_unexposed"],
}


def estimate_group(outcome: str, contrast: str, method: str) -> str:
    """The children an estimate rests on: every method of one outcome and contrast shares them
    (the high-quality-links restriction is another group)."""
    population = "high_quality_links" if method.endswith("_high_quality_links") else "all"
    return f"{outcome}|{contrast}|{population}"


def row_keys(table: str, df: pd.DataFrame) -> list[str]:
    if table == "attrition":
        return [str(s) for s in df["step"]]
    if table == "table1_counts":
        return [str(c) for c in df["characteristic"]]
    if table == "estimates":
        return [
            estimate_group(o, c, m)
            for o, c, m in zip(df["outcome"], df["contrast"], df["method"], strict=True)
        ]
    raise ValueError(f"no count cells known in table {table!r}")


ADVERSITY_ROWS = (
    "physical_abuse",
    "parental_mental_ill_health",
    "parental_substance_misuse",
    "domestic_abuse",
)
SURVIVAL_SCALE = "hazard_ratio"


def release_relations(tables: Mapping[str, pd.DataFrame]) -> list[Relation]:
    """Every linear relation between count cells of a run's released tables that a reader who
    knows the study design can use (whether it holds is checked by the caller on true counts)."""
    rel: list[Relation] = []
    att = tables.get("attrition")
    cohort_n: Cell | None = None
    if att is not None and len(att):
        steps = row_keys("attrition", att)
        for prev, cur in itertools.pairwise(steps):
            rel.append(
                sum_of(
                    ("attrition", prev, "n_remaining"),
                    [("attrition", cur, "n_remaining"), ("attrition", cur, "n_excluded")],
                    f"attrition step {cur}: remaining before = remaining + excluded",
                )
            )
        cohort_n = ("attrition", steps[-1], "n_remaining")
    t1 = tables.get("table1_counts")
    if t1 is not None and len(t1):
        rows = set(row_keys("table1_counts", t1))
        quint = sorted(r for r in rows if r.startswith("deprivation_quintile_"))
        if "children" in rows:
            for g in ("n_CLA", "n_NLA"):
                if quint:
                    rel.append(
                        sum_of(
                            ("table1_counts", "children", g),
                            [("table1_counts", q, g) for q in quint],
                            f"Table 1 {g}: deprivation quintiles add up to the children",
                        )
                    )
            if cohort_n is not None:
                rel.append(
                    sum_of(
                        cohort_n,
                        [("table1_counts", "children", g) for g in ("n_CLA", "n_NLA")],
                        "Table 1 children = cohort size in attrition",
                    )
                )
            # a yes/no characteristic: the children without it are a count too (unreleased)
            for r in sorted(rows - {"children", *quint}):
                for g in ("n_CLA", "n_NLA"):
                    rel.append(
                        sum_of(
                            ("table1_counts", "children", g),
                            [("table1_counts", r, g), ("table1_counts", f"not {r}", g)],
                            f"Table 1 {g}: with + without {r} = the children",
                        )
                    )
    est = tables.get("estimates")
    if est is not None and len(est):
        rel += _estimate_relations(est, cohort_n)
    return rel


def _estimate_relations(est: pd.DataFrame, cohort_n: Cell | None) -> list[Relation]:
    groups = dict.fromkeys(row_keys("estimates", est))
    scale = dict(zip(row_keys("estimates", est), est["scale"], strict=True))
    rel: list[Relation] = []

    def cell(group: str, col: str) -> Cell:
        return ("estimates", group, col)

    def have(*gs: str) -> bool:
        return all(g in groups for g in gs)

    def same(a: Cell, b: Cell, why: str) -> None:
        rel.append(Relation(((a, 1), (b, -1)), why))

    for pop in ("all", "high_quality_links"):
        for outcome in ("ks4_score", "ks4_level2_inclusive"):
            cla, long_, short = (f"{outcome}|{c}|{pop}" for c in CARE_CONTRASTS)
            if have(cla, long_, short):
                for col in ("n_exposed", "events_exposed"):
                    rel.append(
                        sum_of(
                            cell(cla, col),
                            [cell(long_, col), cell(short, col)],
                            f"{outcome}: CLA = long + short ({col})",
                        )
                    )
                for col in ("n_unexposed", "events_unexposed"):
                    same(cell(cla, col), cell(long_, col), f"{outcome}: one NLA group")
                    same(cell(cla, col), cell(short, col), f"{outcome}: one NLA group")
        for c in CARE_CONTRASTS:
            a, b = f"ks4_score|{c}|{pop}", f"ks4_level2_inclusive|{c}|{pop}"
            if have(a, b):
                for col in ("n_exposed", "n_unexposed"):
                    same(cell(a, col), cell(b, col), "both KS4 outcomes: the same children")
    cla = "ks4_score|cla_vs_nla|all"
    for contrast in ("per_placement_move", "per_year_age_at_entry"):
        g = f"ks4_score|{contrast}|all"
        if have(g, cla):
            same(cell(g, "n_exposed"), cell(cla, "n_exposed"), f"{contrast}: the CLA with KS4")
    for adv in ADVERSITY_ROWS:
        x, in_cla, in_nla = (f"ks4_score|{adv}_{s}|all" for s in ("x_cla", "in_cla", "in_nla"))
        if have(x, cla):
            for col in ("n_exposed", "n_unexposed"):
                same(cell(x, col), cell(cla, col), f"{adv} x CLA: the CLA-vs-NLA children")
        for sub, col in ((in_cla, "n_exposed"), (in_nla, "n_unexposed")):
            if have(sub, x):
                rel.append(
                    sum_of(
                        cell(x, col),
                        [cell(sub, "n_exposed"), cell(sub, "n_unexposed")],
                        f"{adv} within a group: with + without = the group",
                    )
                )
    # the restriction to high-quality links: the children (and events) it leaves out are a
    # count too (unreleased)
    for g in groups:
        if g.endswith("|high_quality_links"):
            full = g.removesuffix("high_quality_links") + "all"
            if full in groups:
                for col in COUNT_COLUMNS["estimates"]:
                    low = g.removesuffix("high_quality_links") + "low_quality_links"
                    rel.append(
                        sum_of(
                            cell(full, col),
                            [cell(g, col), cell(low, col)],
                            "high-quality links + the others = all",
                        )
                    )
    survival = [g for g in groups if scale[g] == SURVIVAL_SCALE and g.endswith("|all")]
    for a, b in itertools.pairwise(survival):
        for col in ("n_exposed", "n_unexposed"):
            same(cell(a, col), cell(b, col), "survival outcomes: the same children")
    if cohort_n is not None:
        for g in survival:
            rel.append(
                sum_of(
                    cohort_n,
                    [cell(g, "n_exposed"), cell(g, "n_unexposed")],
                    "survival: every child of the cohort",
                )
            )
    rel += _strata_relations(groups)
    return rel


CARE_CONTRASTS = ("cla_vs_nla", "long_vs_nla", "short_vs_nla")


# a stratum's contrast: ``<contrast>_with_<m>``, ``<contrast>_without_<m>`` and their
# difference ``<contrast>_with_minus_without_<m>``; deprivation: ``<contrast>_most_deprived``,
# ``<contrast>_less_deprived`` and ``<contrast>_most_deprived_minus_less_deprived``
# (models.estimators.StratifiedEffect); the conditional effect's levels
# ``<contrast>_cate_<summary>_<level>`` (models.estimators.DRLearnerEffect)
_STRATUM = re.compile(r"(?P<base>.+?)_(?:with_minus_without|with|without)_(?P<modifier>.+)")
_DEPRIVATION = re.compile(
    r"(?P<base>.+?)_(?:most_deprived_minus_less_deprived|most_deprived|less_deprived)"
)
_CATE_LEVEL = re.compile(r"(?P<base>.+?)_cate_(?P<summary>adversities|deprivation)_(?P<level>.+)")


def stratum_family(contrast: str) -> str | None:
    """The comparison a stratum row belongs to (its siblings share it), None for other rows:
    ``cla_vs_nla_without_domestic_abuse`` -> ``cla_vs_nla|domestic_abuse``,
    ``cla_vs_nla_less_deprived`` -> ``cla_vs_nla|deprivation``,
    ``cla_vs_nla_cate_adversities_2`` -> ``cla_vs_nla|cate_adversities``."""
    if m := _CATE_LEVEL.fullmatch(contrast):
        return f"{m['base']}|cate_{m['summary']}"
    if m := _DEPRIVATION.fullmatch(contrast):
        return f"{m['base']}|deprivation"
    if m := _STRATUM.fullmatch(contrast):
        return f"{m['base']}|{m['modifier']}"
    return None


def _strata_relations(groups: Iterable[str]) -> list[Relation]:
    """The strata of one comparison (with and without an adversity, most and less deprived, the
    levels of a conditional-effect summary) partition its children: their counts add up to the
    whole comparison's, which is released too. The difference between strata rests on the
    whole comparison's children."""
    groups = list(groups)
    present = set(groups)
    members: dict[tuple[str, str], list[str]] = {}
    rel: list[Relation] = []
    for g in groups:
        outcome, contrast, pop = g.split("|")
        family = stratum_family(contrast)
        if family is None:
            continue
        whole = f"{outcome}|{family.split('|')[0]}|{pop}"
        if whole not in present:
            continue
        if "_minus_" in contrast:
            for col in ("n_exposed", "n_unexposed"):
                rel.append(
                    Relation(
                        ((("estimates", whole, col), 1), (("estimates", g, col), -1)),
                        "a difference between strata: the whole comparison's children",
                    )
                )
        else:
            members.setdefault((whole, family), []).append(g)
    for (whole, family), parts in members.items():
        for col in COUNT_COLUMNS["estimates"]:
            rel.append(
                sum_of(
                    ("estimates", whole, col),
                    [("estimates", p, col) for p in parts],
                    f"strata {family}: the strata add up to the whole comparison ({col})",
                )
            )
    return rel


def holds(relation: Relation, values: Mapping[Cell, int]) -> bool:
    if any(c not in values for c in relation.cells):
        return False
    return sum(k * values[c] for c, k in relation.terms) == 0


def protect(
    values: Mapping[Cell, int],
    sensitive: set[Cell],
    relations: list[Relation],
    threshold: int,
    known: set[Cell] | None = None,
    unreleased: set[Cell] | None = None,
) -> set[Cell]:
    """The cells to suppress: ``sensitive`` ones and, relation by relation until nothing
    changes, the smallest non-zero other cell of any relation whose protected cells are alone
    or add up to less than ``threshold`` (then their sum would itself be a small count).
    ``known`` cells (a total the reader knows exactly) are never candidates; ``unreleased``
    cells (a count no table shows, such as the children without a characteristic) are unknown
    to the reader like suppressed ones, but cannot be chosen."""
    protected = set(sensitive)
    known = known or set()
    unreleased = unreleased or set()
    changed = True
    while changed:
        changed = False
        for rel in relations:
            if not any(c in protected for c in rel.cells):
                continue
            inside = [c for c in rel.cells if c in protected or c in unreleased]
            if len(inside) >= 2 and sum(values[c] for c in inside) >= threshold:
                continue
            others = [
                c
                for c in rel.cells
                if c not in protected and c not in known and c not in unreleased
            ]
            if not others:
                continue
            protected.add(min(others, key=lambda c: (values[c] == 0, values[c], c)))
            changed = True
    return protected


def control_cells(
    values: Mapping[Cell, int],
    relations: list[Relation],
    settings: DisclosureSettings,
    hidden: set[Cell] | None = None,
    known: set[Cell] | None = None,
) -> dict[Cell, str]:
    """Every cell as released: ``[c]`` (small, hidden, or suppressed to protect another along
    a relation that holds on the true counts) or the count rounded to ``settings.rounding``.

    ``hidden`` cells (the counts of a withheld estimate) are shown as ``[c]``; those below twice
    the threshold are protected like small counts, the others are treated as known to a
    reader."""
    hidden = hidden or set()
    derived = unreleased_values(values, relations)
    values = {**values, **derived}
    unreleased = set(derived)
    known = known or set()
    sensitive = {c for c, v in values.items() if 0 < v < settings.threshold and c not in known}
    # a reader cannot tell a hidden or unreleased 0 from a small count: protect them too; a
    # hidden count under twice the threshold could still be pinned to an interval narrower than
    # the threshold that reaches below it (what recoverable_cells looks for), so it is
    # protected as well (e.g. the third of three strata when the whole and two are released)
    sensitive |= {c for c in unreleased if values[c] < settings.threshold}
    sensitive |= {c for c in hidden if values[c] < 2 * settings.threshold}
    true_relations = [r for r in relations if holds(r, values)]
    suppressed = (
        protect(values, sensitive, true_relations, settings.threshold, known, unreleased) | hidden
    )
    return {
        c: SUPPRESSED if c in suppressed else str(int(round_to(v, settings.rounding)))
        for c, v in values.items()
        if c not in known and c not in unreleased
    }


def unreleased_values(values: Mapping[Cell, int], relations: list[Relation]) -> dict[Cell, int]:
    """Counts no table shows but a relation defines (the one cell of a relation missing from
    ``values``): e.g. the looked-after children without an adversity = the group - those with."""
    out: dict[Cell, int] = {}
    for rel in relations:
        missing = [(c, k) for c, k in rel.terms if c not in values]
        if len(missing) != 1:
            continue
        (cell, k) = missing[0]
        rest = sum(kk * values[c] for c, kk in rel.terms if c in values)
        v = -rest * k  # k * x + rest = 0, k = +-1
        if v >= 0:
            out[cell] = v
    return out


# --- the attacker's check --------------------------------------------------------------------


@dataclass(frozen=True)
class Recovered:
    cell: Cell
    low: float
    high: float


def _released_interval(text: str, s: DisclosureSettings) -> tuple[float, float] | None:
    """What a released count says about the true count (None: not a count cell)."""
    t = str(text).strip()
    if t == SUPPRESSED:
        return (0.0, math.inf)
    if t in ("", "nan", "None", WITHHELD):
        return None
    r = int(float(t))
    lo, hi = max(0, r - s.rounding // 2), r + (s.rounding + 1) // 2 - 1
    # a count that is shown is 0 or at least the threshold (1 .. threshold-1 would be [c])
    if lo > 0:
        lo = max(lo, s.threshold)
    elif hi < s.threshold:
        hi = 0
    return (float(lo), float(hi))


def recoverable_cells(
    tables: Mapping[str, pd.DataFrame], settings: DisclosureSettings | None = None
) -> list[Recovered]:
    """Suppressed cells a reader can pin down from the released tables (read back as text):
    interval arithmetic along every relation of :func:`release_relations`, across tables,
    repeated until no bound moves. A ``[c]`` is recovered when its interval is narrower than
    ``threshold`` and reaches below it (a count known to lie in 398..402 is not small)."""
    s = settings or DisclosureSettings()
    box: dict[Cell, list[float]] = {}
    hidden: set[Cell] = set()
    for name, df in tables.items():
        if name not in COUNT_COLUMNS:
            continue
        keys = row_keys(name, df)
        for col in COUNT_COLUMNS[name]:
            if col not in df:
                continue
            for key, v in zip(keys, df[col].astype(str), strict=True):
                iv = _released_interval(v, s)
                if iv is None:
                    continue
                c = (name, key, col)
                if c in box:  # one group on several rows: the tightest reading
                    box[c] = [max(box[c][0], iv[0]), min(box[c][1], iv[1])]
                else:
                    box[c] = list(iv)
                if v.strip() == SUPPRESSED:
                    hidden.add(c)
    relations = []
    for r in release_relations(tables):
        missing = [c for c in r.cells if c not in box]
        if len(missing) == 1:  # a count no table shows (children without a characteristic)
            box[missing[0]] = [0.0, math.inf]
            hidden.add(missing[0])
        elif missing:
            continue
        relations.append(r)
    for _ in range(200):
        moved = False
        for rel in relations:
            for j, (cj, kj) in enumerate(rel.terms):
                lo_t = hi_t = 0.0
                for i, (ci, ki) in enumerate(rel.terms):
                    if i == j:
                        continue
                    lo_i, hi_i = box[ci]
                    lo_t += ki * (lo_i if ki > 0 else hi_i)
                    hi_t += ki * (hi_i if ki > 0 else lo_i)
                # kj * x_j = -T
                lo, hi = (-hi_t, -lo_t) if kj > 0 else (lo_t, hi_t)
                lo, hi = math.ceil(lo) if math.isfinite(lo) else lo, hi
                hi = math.floor(hi) if math.isfinite(hi) else hi
                if lo > box[cj][0] and lo <= box[cj][1]:
                    box[cj][0], moved = lo, True
                if hi < box[cj][1] and hi >= box[cj][0]:
                    box[cj][1], moved = hi, True
        if not moved:
            break
    return [
        Recovered(c, box[c][0], box[c][1])
        for c in sorted(hidden)
        if box[c][1] - box[c][0] < s.threshold and box[c][0] < s.threshold
    ]


# --- release tables ---------------------------------------------------------------------------


def control_counts(
    table: pd.DataFrame,
    count_columns: list[str],
    settings: DisclosureSettings | None = None,
    total_column: str | None = "total",
    row_sums: Mapping[str, list[str]] | None = None,
) -> pd.DataFrame:
    """A release-safe copy of one table of counts (cells become strings), protected along
    its rows (the row total is one relation; ``row_sums`` maps a count column to the columns
    that add up to it in each row, e.g. ``{"rows_read": ["rows_staged", "rows_quarantined"]}``).
    ``total_column`` is recomputed from the released cells, '+' where a cell is [c]."""
    s = settings or DisclosureSettings()
    values: dict[Cell, int] = {}
    relations: list[Relation] = []
    known: set[Cell] = set()
    for i in range(len(table)):
        for c in count_columns:
            values[("t", str(i), c)] = int(table[c].iloc[i])
        cells = [("t", str(i), c) for c in count_columns]
        if row_sums:
            relations += [
                sum_of(("t", str(i), tot), [("t", str(i), p) for p in parts], "row sum")
                for tot, parts in row_sums.items()
            ]
        elif len(cells) > 1:
            # assume the reader knows the row's exact total (from elsewhere)
            total = ("t", str(i), "\0row total")
            values[total] = sum(values[c] for c in cells)
            known.add(total)
            relations.append(sum_of(total, cells, "row total"))
    released = control_cells(values, relations, s, known=known)
    out = table.copy()
    for c in count_columns:
        out[c] = [released[("t", str(i), c)] for i in range(len(table))]
    if total_column:
        totals = []
        for i in range(len(table)):
            row = [out[c].iloc[i] for c in count_columns]
            n = sum(int(v) for v in row if v != SUPPRESSED)
            totals.append(str(n) + ("+" if SUPPRESSED in row else ""))
        out[total_column] = totals
    out.attrs["disclosure_control"] = rules_text(s)
    return out


def rules_text(s: DisclosureSettings) -> str:
    return (
        f"[c]: suppressed (a count from 1 to {s.threshold - 1}, or another cell suppressed so "
        f"that none can be recovered by subtraction within or across the released tables); "
        f"true zeros shown as 0; other counts rounded to the nearest {s.rounding}; totals are "
        f"released rounded cells or recomputed from the released cells, '+' where a cell is [c]"
    )


def withheld_groups(estimates: pd.DataFrame, settings: DisclosureSettings) -> set[str]:
    """Estimate groups (:func:`estimate_group`) to withhold: fewer than ``threshold`` children,
    events or (binary outcomes) non-events in either group, and every effect-modification
    row that would give a withheld one back by subtraction."""
    t = settings.threshold
    out: set[str] = set()
    keys = row_keys("estimates", estimates)
    for key, r in zip(keys, estimates.itertuples(), strict=True):
        n_e, n_u = int(r.n_exposed), int(r.n_unexposed)
        counts = [n_e] + ([n_u] if n_u > 0 else [])
        ev_e, ev_u = getattr(r, "events_exposed", None), getattr(r, "events_unexposed", None)
        if ev_e is not None and pd.notna(ev_e):
            counts.append(int(ev_e))
            if r.scale in ("risk_difference", "odds_ratio"):
                counts.append(n_e - int(ev_e))
        if n_u > 0 and ev_u is not None and pd.notna(ev_u):
            counts.append(int(ev_u))
            if r.scale in ("risk_difference", "odds_ratio"):
                counts.append(n_u - int(ev_u))
        if min(counts) < t:
            out.add(key)
    for key in list(out):
        outcome, contrast, pop = key.split("|")
        for suffix in ("_x_cla", "_in_cla", "_in_nla"):
            if contrast.endswith(suffix):
                adv = contrast[: -len(suffix)]
                out |= {f"{outcome}|{adv}{s}|{pop}" for s in ("_x_cla", "_in_cla", "_in_nla")}
    return out & set(keys)


def format_estimate(x: float, scale: str) -> str:
    """An estimate or CI bound at the precision its scale deserves."""
    if x is None or not np.isfinite(x):
        return ""
    if abs(x) >= 100:  # a wild bound (a ratio on a handful of events): 3 significant figures
        return f"{x:.3g}"
    if scale in ("hazard_ratio", "odds_ratio"):
        return f"{x:.2f}"
    if scale == "risk_difference":
        return f"{x:.3f}"
    return f"{x:.{_decimals_for_3_significant(x)}f}"


def _decimals_for_3_significant(x: float) -> int:
    if x == 0:
        return 2
    return int(min(4, max(0, 2 - math.floor(math.log10(abs(x))))))


def format_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return ""
    return "<0.001" if p < 0.001 else f"{float(f'{p:.2g}'):g}"


ESTIMATE_COLUMNS = [
    "outcome",
    "contrast",
    "method",
    "scale",
    "estimate",
    "ci_low",
    "ci_high",
    "p_value",
    "n_exposed",
    "n_unexposed",
    "events_exposed",
    "events_unexposed",
    "note",
]


@dataclass
class Release:
    """The released tables of a run (every cell a string) and how they were controlled."""

    tables: dict[str, pd.DataFrame]
    settings: DisclosureSettings
    withheld: set[str]

    def readme(self) -> str:
        s = self.settings
        return (
            f"{'NOT disclosure-controlled' if s.below_floor else 'Disclosure-controlled'} "
            f"outputs ({s.label}). {rules_text(s)}. Estimates resting on fewer than "
            f"{s.threshold} children, events or non-events in a group are withheld with their "
            f"counts; effect-modification rows are withheld together. Estimates: ratios to 2 "
            f"decimals, risk differences to 3, mean differences to 3 significant figures; "
            f"p-values to 2 significant figures. km_yearly.csv: Kaplan-Meier cumulative "
            f"incidence at whole years, only where at least {s.threshold} events happened "
            f"since the last point shown and at least {s.threshold} children are at risk. "
            f"In the CSV files every count and estimate is a number: a suppressed count or a "
            f"withheld estimate is an empty cell named in its row's 'suppressed' column; a "
            f"total that is a lower bound (a part suppressed) or a p-value below 0.001 is "
            f"written as that number and named in its row's 'bounded' column. The run's codebook "
            f"(codebook.md, codebook.csv) describes every column.\n"
        )


def control_release(
    tables: Mapping[str, pd.DataFrame], settings: DisclosureSettings | None = None
) -> Release:
    """Control a run's count tables together: ``attrition`` (step, description, n_remaining,
    n_excluded), ``table1_counts`` (characteristic, n_CLA, n_NLA) and ``estimates`` (as in
    ``results/estimates.csv``, with events per group); secondary suppression runs along every
    relation of :func:`release_relations` that holds, across the three."""
    s = settings or DisclosureSettings()
    values: dict[Cell, int] = {}
    for name, df in tables.items():
        for col in COUNT_COLUMNS[name]:
            if col not in df:
                continue
            for key, v in zip(row_keys(name, df), df[col], strict=True):
                if v is not None and pd.notna(v):
                    values[(name, key, col)] = int(v)
    est = tables.get("estimates")
    withheld = withheld_groups(est, s) if est is not None else set()
    hidden = {c for c in values if c[0] == "estimates" and c[1] in withheld}
    released = control_cells(values, release_relations(tables), s, hidden)

    def shown(name: str, key: str, col: str) -> str:
        return released.get((name, key, col), "")

    out: dict[str, pd.DataFrame] = {}
    for name, df in tables.items():
        o = df.copy()
        keys = row_keys(name, df)
        for col in COUNT_COLUMNS[name]:
            if col in df:
                o[col] = [shown(name, k, col) for k in keys]
        if name == "table1_counts":
            o["total"] = [
                str(sum(int(v) for v in (a, b) if v != SUPPRESSED))
                + ("+" if SUPPRESSED in (a, b) else "")
                for a, b in zip(o["n_CLA"], o["n_NLA"], strict=True)
            ]
        if name == "estimates":
            o = _estimate_values(o, keys, withheld)
        out[name] = o
    return Release(out, s, withheld)


def _estimate_values(o: pd.DataFrame, keys: list[str], withheld: set[str]) -> pd.DataFrame:
    notes: list[str] = []
    values: dict[str, list[str]] = {c: [] for c in ("estimate", "ci_low", "ci_high", "p_value")}
    for key, r in zip(keys, o.itertuples(), strict=True):
        if key in withheld:
            for c in values:
                values[c].append(WITHHELD)
            notes.append("withheld: too few children or events in a group")
            continue
        for c in ("estimate", "ci_low", "ci_high"):
            values[c].append(format_estimate(getattr(r, c), r.scale))
        values["p_value"].append(format_p(r.p_value))
        warning = str(getattr(r, "warning", "") or "")
        notes.append(
            "not estimated (fit failed)"
            if warning.startswith("failed") or not np.isfinite(r.estimate)
            else ("fit warnings: see the secure results" if warning else "")
        )
    for c, v in values.items():
        o[c] = v
    o["note"] = notes
    for c in ESTIMATE_COLUMNS:
        if c not in o:
            o[c] = ""
    return o[ESTIMATE_COLUMNS]


def control_estimates(
    estimates: pd.DataFrame, settings: DisclosureSettings | None = None
) -> pd.DataFrame:
    """The estimates table alone through :func:`control_release`."""
    return control_release({"estimates": estimates}, settings).tables["estimates"]


# --- figures -----------------------------------------------------------------------------------


def km_yearly(
    duration_years: np.ndarray, event: np.ndarray, settings: DisclosureSettings | None = None
) -> pd.DataFrame:
    """Kaplan-Meier cumulative incidence at whole years, coarsened for release.

    A year is shown only when at least ``threshold`` events happened since the last year shown
    and at least ``threshold`` children are still at risk (fewer events: the interval is
    merged into the next); the number at risk is rounded. No event time or exact risk set is
    shown. Columns: year, at_risk (text), cumulative_incidence_pct."""
    s = settings or DisclosureSettings()
    d = np.asarray(duration_years, float)
    e = np.asarray(event, bool)
    times = np.unique(d[e])
    at = np.array([(d >= u).sum() for u in times])
    deaths = np.array([((d == u) & e).sum() for u in times])
    surv = np.cumprod(1 - deaths / np.maximum(at, 1))
    # year 0 carries no number at risk: that is the group size, released (or suppressed) in
    # Table 1
    rows: list[dict[str, object]] = [{"year": 0, "at_risk": "", "cumulative_incidence_pct": 0.0}]
    if len(d) < s.threshold:
        return pd.DataFrame(rows[:0], columns=["year", "at_risk", "cumulative_incidence_pct"])
    last_events = 0
    for y in range(1, int(np.floor(d.max())) + 1):
        n_risk = int((d >= y).sum())
        events_so_far = int((e & (d <= y)).sum())
        if n_risk < s.threshold:
            break
        if events_so_far - last_events < s.threshold:
            continue
        k = np.searchsorted(times, y, side="right")
        ci = 0.0 if k == 0 else 100 * (1 - float(surv[k - 1]))
        rows.append(
            {
                "year": y,
                "at_risk": str(int(round_to(n_risk, s.rounding))),
                "cumulative_incidence_pct": round(ci, 1),
            }
        )
        last_events = events_so_far
    return pd.DataFrame(rows)
