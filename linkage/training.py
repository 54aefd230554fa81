"""Training that adapts to the columns present: blocking rules checked against a pair budget,
EM sessions that together train every comparison, a prior estimated from the data, and a match
threshold chosen from the trained model.

Every blocking rule here is a tuple of *keys* (a profile column, or ``substr(col, 1, 4)``)
that two profiles must share exactly; :func:`rule_sql` renders it with the conditions every
rule carries (different deterministic components; different tables when only linking).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from itertools import combinations
from typing import Any

import numpy as np

from ground.errors import CohortError
from linkage.comparisons import Column, ColumnKind

log = logging.getLogger(__name__)

Rule = tuple[str, ...]


class LinkageTrainingError(CohortError):
    """The data cannot train a linkage model (too few records, no column to block on, ...)."""


def rule_sql(keys: Rule, *, across_tables: bool, across_components: bool = True) -> str:
    """SQL both DuckDB and Spark read: equal keys, different components (and tables)."""
    parts = []
    for k in keys:
        if "(" in k:  # substr(dob_text, 1, 4) -> substr(l.dob_text, 1, 4)
            fn, rest = k.split("(", 1)
            parts.append(f"{fn}(l.{rest} = {fn}(r.{rest}")
        else:
            parts.append(f"l.{k} = r.{k}")
    if across_components:  # same component: already linked (training sees those pairs too)
        parts.append("l.component <> r.component")
    if across_tables:
        parts.append("l.source_table <> r.source_table")
    return " AND ".join(parts)


def blocking_rule(keys: Rule, *, across_tables: bool, across_components: bool = True) -> Any:
    from splink.blocking_rule_library import CustomRule

    return CustomRule(
        rule_sql(keys, across_tables=across_tables, across_components=across_components)
    )


def choose_blocking_rules(
    columns: Sequence[Column], count: Callable[[Rule], float], budget: float
) -> list[Rule]:
    """Blocking rules from the blockable columns present, each within ``budget`` pairs.

    A single column is used alone when its pairs fit the budget (the widest net); the others are
    used in pairs (a pair containing a column already used alone would add nothing).
    """
    keys = [c.block_key for c in columns if c.blockable]
    if not keys:
        raise LinkageTrainingError(
            "linkage: no column to block on (a person name, date, postcode, address or "
            "identifier); declare one of those kinds, or give blocking rules yourself"
        )
    counts: dict[Rule, float] = {}
    singles = []
    for k in keys:
        counts[(k,)] = count((k,))
        if counts[(k,)] <= budget:
            singles.append(k)
    rules: list[Rule] = [(k,) for k in singles]
    rest = [k for k in keys if k not in singles]
    for a, b in combinations(rest, 2):
        counts[(a, b)] = count((a, b))
        if counts[(a, b)] <= budget:
            rules.append((a, b))
    for rule, n in counts.items():
        log.info(
            "linkage: blocking on %s gives %.0f pairs%s",
            "+".join(rule),
            n,
            "" if rule in rules else f" (over the budget of {budget:.0f}: not used)",
        )
    if not rules:
        raise LinkageTrainingError(
            f"linkage: every blocking rule from the columns present gives more than "
            f"{budget:,.0f} pairs (most: {max(counts.values()):,.0f}); raise "
            "max_pairs_per_rule or declare a more selective column (a date, an identifier)"
        )
    return rules


def choose_em_sessions(columns: Sequence[Column], rules: Sequence[Rule]) -> list[Rule]:
    """EM sessions (each a blocking rule) that together train every comparison.

    A session trains every comparison not in its rule. Two-column rules are preferred (true
    matches are common among their pairs, which EM needs); a rule is taken when it trains a
    comparison no earlier session trained.
    """
    scored = [c for c in columns if c.scored]
    keys = [c.block_key for c in columns if c.blockable]
    key_of = {c.block_key: c.name for c in columns}
    candidates: list[Rule] = [*combinations(keys, 2), *((k,) for k in keys)]
    # rules known to fit the budget first, then the rest in declared order
    budgeted = {r for r in rules}
    candidates.sort(key=lambda r: (len(r) != 2, not (set(r) <= {k for rr in budgeted for k in rr})))
    untrained = {c.name for c in scored}
    sessions: list[Rule] = []
    while untrained:
        gain = {r: len(untrained - {key_of[k] for k in r}) for r in candidates}
        useful = [r for r in candidates if gain[r] > 0]
        pool = [r for r in useful if len(r) == 2] or useful  # two-column rules first
        if not pool:
            break
        best = max(pool, key=gain.__getitem__)  # the first of the best, in declared order
        sessions.append(best)
        untrained -= set(untrained - {key_of[k] for k in best})
    if untrained:
        raise LinkageTrainingError(
            f"linkage: no EM session can train {sorted(untrained)} (every blocking column is "
            "one of them); declare another name, date, postcode or identifier column"
        )
    return sessions


def prior_rule(columns: Sequence[Column]) -> Rule:
    """The exact-agreement rule whose pairs estimate the prior: every name and date column
    (the first three blockable columns when there are none)."""
    strong = [c.block_key for c in columns if c.kind in {ColumnKind.PERSON_NAME, ColumnKind.DATE}]
    if len(strong) < 2:
        strong = [c.block_key for c in columns if c.blockable][:3]
    return tuple(strong)


def rule_recall(
    model: dict[str, Any], columns: Sequence[Column], rule: Rule, non_null: dict[str, float]
) -> float:
    """The share of true matches that agree exactly on every column of ``rule``, from the
    trained model: the product of the exact level's m (the model's own independence
    assumption) and the share of records with the column filled in on both sides."""
    by_name = {c["output_column_name"]: c for c in model["comparisons"]}
    key_of = {c.block_key: c.name for c in columns}
    recall = 1.0
    for k in rule:
        comp = by_name.get(key_of.get(k, k))
        if comp is None:
            continue
        levels = [lv for lv in comp["comparison_levels"] if not lv.get("is_null_level")]
        m = levels[0].get("m_probability") if levels else None
        recall *= float(m or 1.0) * non_null.get(k, 1.0) ** 2
    return max(recall, 1e-3)


THRESHOLD_GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def choose_threshold(probabilities: np.ndarray, target_precision: float) -> float:
    """The lowest threshold on :data:`THRESHOLD_GRID` such that the pairs linked *at the
    margin* are expected, by the model, to be true matches at least ``target_precision`` of
    the time: every band of the grid from it upwards (pairs scored from one grid step to the
    next) has a mean match probability of at least the target, or is empty.

    A band criterion, not the mean over every linked pair: that mean is dominated by the many
    near-certain pairs, stays high while weak pairs are added, and weak pairs then join whole
    clusters (on this project's synthetic data a threshold of 0.5 kept that mean at 0.995
    while record-pair precision fell to 0.99).
    """
    p = np.asarray(probabilities, dtype=float)
    chosen = THRESHOLD_GRID[-1]
    upper = np.inf
    for t in reversed(THRESHOLD_GRID):
        band = p[(p >= t) & (p < upper)]
        if band.size and float(band.mean()) < target_precision:
            break
        chosen, upper = t, t
    return chosen


@contextlib.contextmanager
def quiet_splink(messages: list[str]) -> Iterator[None]:
    """Splink's warnings (one per untrained level, per session) collected into ``messages``
    instead of the console; the caller reports them once."""

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    splink_log = logging.getLogger("splink")
    handler = _Collect(level=logging.WARNING)
    # Splink's Linker adds its own console handler to the "splink" logger: set it (and any
    # other) aside while collecting
    old_handlers = list(splink_log.handlers)
    old_level, old_propagate = splink_log.level, splink_log.propagate
    for h in old_handlers:
        splink_log.removeHandler(h)
    splink_log.addHandler(handler)
    splink_log.propagate = False
    splink_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        messages.extend(str(w.message) for w in caught)
    finally:
        splink_log.removeHandler(handler)
        for h in old_handlers:
            splink_log.addHandler(h)
        splink_log.propagate = old_propagate
        splink_log.setLevel(old_level)


def untrained_comparisons(model: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(comparisons with no trained level, ``comparison: level`` pairs left untrained)."""
    none_trained, some = [], []
    for comp in model["comparisons"]:
        levels = [lv for lv in comp["comparison_levels"] if not lv.get("is_null_level")]
        missing = [lv for lv in levels if lv.get("m_probability") is None]
        if len(missing) == len(levels):
            none_trained.append(comp["output_column_name"])
        else:
            some += [
                f"{comp['output_column_name']}: {lv.get('label_for_charts')}" for lv in missing
            ]
    return none_trained, some
