"""The report's first section after the summary: the study's three questions answered in words
and figures.

1. What difference does care make? The headline (adjusted) estimates.
2. Does care make that difference after adjusting for pre-care adversity? Unadjusted beside
   adjusted (and the sequential trials, which adjust for what happened after referral), the
   negative-control outcomes and the E-values.
3. Over time, does care reduce the effect of pre-care adversity? The effect of care within
   each adversity group and the difference between groups, and the effect by whole years since
   entry to care (the marginal structural model of absence, the hazard ratios by year).

Every number is a released one (release/estimates.csv, release/e_values.csv): a withheld row is
drawn without a point and named as withheld. Each figure has one plain sentence that reads it,
made from the released numbers by the ``read_*`` functions below (pure: tests plant numbers and
check the wording). The wording says what an interval shows: "the interval includes no
difference" (the data are compatible with no difference), never "no effect".
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

import orchestration.report.figures as figures
from models.disclosure import WITHHELD, format_estimate
from models.estimators import ESTIMATORS
from models.outputs import stratum_family
from orchestration.report.labels import RATIO_SCALES, label
from orchestration.report.markup import note, png_img, table
from orchestration.report.protocol import PROTOCOLS, protocol_for, protocol_rows
from orchestration.report.sections import ReportContext, estimate_table, interval_text

# outcomes that are proportions: their mean differences are read in percentage points
PROPORTION_OUTCOMES = frozenset({"absence_rate"})
# outcomes where a higher value is better for the child (the others: lower is better)
HIGHER_IS_BETTER = frozenset({"ks4_score", "ks4_level2_inclusive"})
RATIO_WORDS = {
    "hazard_ratio": "hazard",
    "odds_ratio": "odds",
    "rate_ratio": "rate",
    "risk_ratio": "risk",
}
WITHHELD_WHY = "not shown (withheld or not estimated: too few children or events)"


# --- released numbers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Effect:
    """One released estimate as numbers: the point and its 95% interval on ``scale``
    (``low``/``high`` None when no interval was estimated)."""

    scale: str
    estimate: float
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, row: Any) -> Effect | None:
        """A row of release/estimates.csv (text cells) as an Effect; None when the row is
        withheld or not estimated."""
        est = _number(row["estimate"])
        if est is None:
            return None
        return cls(str(row["scale"]), est, _number(row["ci_low"]), _number(row["ci_high"]))

    @property
    def null(self) -> float:
        return 1.0 if self.scale in RATIO_SCALES else 0.0

    @property
    def side(self) -> str:
        """Where the interval lies: "above" or "below" no difference, "includes" it, or
        "no interval"."""
        if self.low is None or self.high is None:
            return "no interval"
        if self.low > self.null:
            return "above"
        if self.high < self.null:
            return "below"
        return "includes"

    @property
    def distance(self) -> float:
        """How far the point is from no difference (log scale for a ratio)."""
        if self.scale in RATIO_SCALES:
            return abs(math.log(self.estimate)) if self.estimate > 0 else math.inf
        return abs(self.estimate)


def _number(text: object) -> float | None:
    if text is None or str(text).strip() in ("", WITHHELD, "nan"):
        return None
    try:
        value = float(str(text))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# --- the sentences ------------------------------------------------------------------------------------


def _fmt(x: float, scale: str, outcome: str) -> str:
    """A number as the sentence shows it: risk differences and proportions in percentage points
    (1 decimal), other numbers at the release's precision (ratios 2 decimals, mean differences
    3 significant figures)."""
    if scale.endswith("risk_difference") or outcome in PROPORTION_OUTCOMES:
        return f"{100 * x:.1f}"
    if abs(x) >= 100:  # a wild bound (few events): 3 significant figures, written out
        return f"{float(f'{x:.3g}'):,.0f}"
    return format_estimate(x, scale)  # as released


def _unit(scale: str, outcome: str) -> str:
    if scale.endswith("risk_difference") or outcome in PROPORTION_OUTCOMES:
        return " percentage points"
    if outcome == "ks4_score":
        return " points"
    return ""


def interval_words(e: Effect, outcome: str) -> str:
    """ "95% CI a to b" in the sentence's units ("" without an interval)."""
    if e.low is None or e.high is None:
        return "no interval estimated"
    lo, hi = _fmt(e.low, e.scale, outcome), _fmt(e.high, e.scale, outcome)
    return f"95% CI {lo} to {hi}{_unit(e.scale, outcome)}"


def verdict(e: Effect) -> str:
    """What the interval says, in words that do not claim more than it shows."""
    return {
        "above": "the whole interval lies above no difference",
        "below": "the whole interval lies below no difference",
        "includes": "the interval includes no difference",
        "no interval": "no interval could be estimated",
    }[e.side]


def read_estimate(outcome: str, e: Effect | None, exposed: str = "looked after") -> str:
    """One estimate in a sentence: its size and direction, its interval, and whether the
    interval includes no difference. ``outcome`` is the outcome's name (its label is used)."""
    name = label(outcome)
    if e is None:
        return f"{name}: {WITHHELD_WHY}."
    if e.scale in RATIO_SCALES:
        word = RATIO_WORDS.get(e.scale, "ratio")
        size = f"the {word} while {exposed} was {_fmt(e.estimate, e.scale, outcome)} times that of"
        return (
            f"{name}: {size} comparable children in need who were not looked after "
            f"({interval_words(e, outcome)}); {verdict(e)}."
        )
    if e.estimate == 0:
        size = "no different on average"
    else:
        way = "higher" if e.estimate > 0 else "lower"
        size = f"{_fmt(abs(e.estimate), e.scale, outcome)}{_unit(e.scale, outcome)} {way}"
    return (
        f"{name}: {size} for children {exposed} than for comparable children in need who were "
        f"not ({interval_words(e, outcome)}); {verdict(e)}."
    )


def _name(outcome: str) -> str:
    """An outcome's label inside a sentence: "emergency hospital admission", "KS4 ..."."""
    text = label(outcome)
    if len(text) > 1 and text[1].islower():
        return text[:1].lower() + text[1:]
    return text


def _listing(names: Sequence[str]) -> str:
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def read_main(effects: Sequence[tuple[str, Effect | None]]) -> str:
    """The first question's sentence: for which outcomes the adjusted estimate's interval lies
    above or below no difference, and for which it includes no difference."""
    by_side: dict[str, list[str]] = {}
    for outcome, e in effects:
        by_side.setdefault(e.side if e else "withheld", []).append(_name(outcome))
    parts = []
    if by_side.get("above"):
        parts.append(
            f"an increase in {_listing(by_side['above'])} (whole interval above no difference)"
        )
    if by_side.get("below"):
        parts.append(
            f"a decrease in {_listing(by_side['below'])} (whole interval below no difference)"
        )
    if not parts and not by_side.get("includes"):
        return "No adjusted estimate can be released (too few children or events)."
    text = "Adjusted for pre-care adversity and deprivation, "
    if parts:
        text += "the estimated effect of care is " + " and ".join(parts)
    if by_side.get("includes"):
        text += "; for " if parts else "for "
        text += (
            f"{_listing(by_side['includes'])} the interval includes no difference, so these "
            "data cannot tell whether care raises or lowers it"
        )
    if by_side.get("no interval"):
        text += f"; no interval could be estimated for {_listing(by_side['no interval'])}"
    if by_side.get("withheld"):
        text += f"; withheld (too few children or events): {_listing(by_side['withheld'])}"
    return text + "."


def read_adjustment(
    pairs: Sequence[tuple[str, Effect | None, Effect | None]],
    trials: Sequence[tuple[str, Effect]] = (),
    msm: Sequence[tuple[str, Effect]] = (),
) -> str:
    """The second question's sentence: for each outcome (name, unadjusted, adjusted), whether
    adjustment moved the estimate towards or away from no difference, and where the adjusted
    interval lies; then what the sequential trials (``trials``: outcome, released estimate)
    and the hazards' marginal structural model (``msm``), which also adjust for what was
    recorded after the referral, give."""
    toward: list[str] = []
    away: list[str] = []
    still: list[str] = []
    gone: list[str] = []
    for outcome, unadj, adj in pairs:
        if unadj is None or adj is None:
            gone.append(_name(outcome))
            continue
        (toward if adj.distance < unadj.distance else away).append(_name(outcome))
        if adj.side in ("above", "below"):
            still.append(_name(outcome))
    if not toward and not away:
        return "No outcome has both an unadjusted and an adjusted estimate released."
    parts = []
    if toward:
        parts.append(f"towards no difference for {_listing(toward)}")
    if away:
        parts.append(f"away from no difference for {_listing(away)}")
    text = "Adjusting for pre-care adversity and deprivation moved the estimate " + " and ".join(
        parts
    )
    covers = [o for o in toward + away if o not in still]
    if still:
        text += (
            "; after adjustment the whole interval lies on one side of no difference for "
            + _listing(still)
        )
    if covers:
        text += f"; the adjusted interval includes no difference for {_listing(covers)}"
    if gone:
        text += f"; withheld (too few children or events): {_listing(gone)}"
    for outcome, e in trials:
        text += (
            f". The sequential trials, which also adjust for what was recorded after the "
            f"referral, give {_fmt(e.estimate, e.scale, outcome)}{_unit(e.scale, outcome)} for "
            f"{_name(outcome)} ({interval_words(e, outcome)}): {verdict(e)}"
        )
    if msm:
        listed = "; ".join(
            f"{_fmt(e.estimate, e.scale, o)} for {_name(o)} ({interval_words(e, o)}): {verdict(e)}"
            for o, e in msm
        )
        text += (
            ". The marginal structural model, which also weights for what was recorded after "
            f"the referral and estimates care's total effect, gives a hazard ratio of {listed}"
        )
    return text + "."


def read_negative_controls(controls: Sequence[tuple[str, Effect | None]]) -> str:
    """The negative controls' sentence: an outcome care cannot cause should show no
    difference once confounding is adjusted for."""
    shown = [(o, e) for o, e in controls if e is not None]
    if not shown:
        return (
            "The negative-control outcomes are not shown (withheld or not estimated: too few "
            "events)."
        )
    off = [(o, e) for o, e in shown if e.side in ("above", "below")]
    listed = "; ".join(
        f"{_name(o)} {_fmt(e.estimate, e.scale, o)} ({interval_words(e, o)})" for o, e in shown
    )
    if not off:
        text = (
            "The negative-control outcomes, which care cannot cause, have adjusted intervals "
            f"that include no difference ({listed}): they show no sign of confounding left "
            "after adjustment"
        )
    else:
        text = (
            f"The adjusted interval of {_listing([_name(o) for o, _ in off])}, which care "
            "cannot cause, lies wholly on one side of no difference: some confounding may "
            f"remain after adjustment, and the main estimates may carry it too ({listed})"
        )
    withheld = [_name(o) for o, e in controls if e is None]
    if withheld:
        text += f"; withheld (too few events): {_listing(withheld)}"
    return text + "."


def read_e_values(rows: Sequence[tuple[str, float | None]]) -> str:
    """The E-values' sentence, from the E-value of each adjusted estimate's confidence limit
    nearer the null (1 when the interval includes no difference)."""
    known = [(o, v) for o, v in rows if v is not None]
    away = [(o, v) for o, v in known if v > 1]
    if not known:
        return "No E-value can be released."
    if not away:
        return (
            "Every adjusted interval here already includes no difference, so no unmeasured "
            "confounding is needed to explain it away (E-values of the limits all 1)."
        )
    o, v = min(away, key=lambda r: r[1])
    text = (
        f"The interval most easily moved is that of {_name(o)}: an unmeasured confounder would "
        f"need to be associated with both care and the outcome by a risk ratio of at least "
        f"{v:.2f} each to move it to include no difference"
    )
    if len(away) > 1:
        others = ", ".join(f"{_name(a)} {w:.2f}" for a, w in away if a != o)
        text += f"; the other intervals need more ({others})"
    return text + "."


@dataclass(frozen=True)
class Strata:
    """The effect of care with and without one modifier and the difference (with minus
    without), as released (None: withheld or not estimated)."""

    modifier: str  # "physical_abuse", ..., or "deprivation" (most vs less deprived)
    with_: Effect | None
    without: Effect | None
    difference: Effect | None


def _group_words(modifier: str) -> tuple[str, str]:
    if modifier == "deprivation":
        return "the most deprived", "the less deprived"
    name = label(modifier).lower()
    return f"children with {name} recorded", "those without"


def read_strata(outcome: str, strata: Sequence[Strata]) -> str:
    """The effect-by-adversity figure's sentence: for which groups the difference between
    strata lies wholly on one side of no difference (and whether that is care narrowing the gap
    adversity leaves), for how many its interval includes no difference, which are withheld."""
    shown = [s for s in strata if s.difference is not None]
    withheld = [_name(s.modifier) for s in strata if s.difference is None]
    name = _name(outcome)
    if not shown:
        return (
            f"Every adversity group has a stratum with too few children or events: the effect "
            f"of care on {name} by group is withheld."
        )
    clear = [s for s in shown if s.difference and s.difference.side in ("above", "below")]
    parts = []
    for s in clear:
        d = s.difference
        assert d is not None
        more = d.estimate > 0
        better = more == (outcome in HIGHER_IS_BETTER)
        with_words, without_words = _group_words(s.modifier)
        parts.append(
            f"the effect of care on {name} was {_fmt(abs(d.estimate), d.scale, outcome)}"
            f"{_unit(d.scale, outcome)} {'higher' if more else 'lower'} for {with_words} than "
            f"for {without_words} ({interval_words(d, outcome)}), "
            + (
                "consistent with care reducing the effect of that adversity"
                if better and s.modifier != "deprivation"
                else "consistent with care helping them more"
                if better
                else "so care did less for them"
            )
        )  # fmt: skip
    rest = len(shown) - len(clear)
    text = ""
    if parts:
        text = "; ".join(p[:1].upper() + p[1:] if i == 0 else p for i, p in enumerate(parts))
        if rest:
            text += (
                f". For the other {rest} group{'s' if rest > 1 else ''} the interval of the "
                "difference includes no difference"
            )
    else:
        text = (
            f"For every group shown the interval of the difference between strata includes no "
            f"difference: these data cannot say whether care's effect on {name} differs with "
            "pre-care adversity or deprivation"
        )
    if withheld:
        text += f". Withheld (a stratum with too few children or events): {_listing(withheld)}"
    return text + "."


def _years_words(j: str) -> str:
    """ "0" -> "in the first year after entry", "1" -> "at 1 whole year after entry", "4+" ->
    "at 4 or more whole years after entry"."""
    if j == "0":
        return "in the first year after entry"
    if j.endswith("+"):
        return f"at {j[:-1]} or more whole years after entry"
    return f"at {j} whole year{'' if j == '1' else 's'} after entry"


def read_by_years(outcome: str, points: Sequence[tuple[str, Effect | None]]) -> str:
    """One outcome's effects by whole years since entry in a clause: the first and the last
    year shown, each with its interval and where that interval lies; withheld years named."""
    name = label(outcome)
    shown = [(j, e) for j, e in points if e is not None]
    withheld = [j for j, e in points if e is None]
    if not shown:
        return f"{name}: every year since entry withheld (too few children or events)"

    def one(j: str, e: Effect) -> str:
        if e.scale in RATIO_SCALES:
            size = f"{_fmt(e.estimate, e.scale, outcome)}"
        else:
            size = f"{_fmt(e.estimate, e.scale, outcome)}{_unit(e.scale, outcome)}"
        where = {
            "above": "wholly above no difference",
            "below": "wholly below no difference",
            "includes": "includes no difference",
            "no interval": "no interval",
        }[e.side]
        return f"{size} {_years_words(j)} ({interval_words(e, outcome)}; {where})"

    ratio = shown[0][1].scale in RATIO_SCALES
    what = (
        f"the {RATIO_WORDS.get(shown[0][1].scale, 'ratio')} ratio while looked after"
        if ratio
        else "the effect of care"
    )
    text = f"{name}: {what} was " + one(*shown[0])
    if len(shown) > 1:
        text += " and " + one(*shown[-1])
    if withheld:
        text += f" (withheld, too few children or events: year {', '.join(withheld)})"
    return text


def read_years_figure(clauses: Sequence[str]) -> str:
    """The by-years figure's sentence: its outcomes' clauses."""
    return "; ".join(clauses) + "." if clauses else ""


# --- selecting the released rows ---------------------------------------------------------------------


def _estimator_of(ctx: ReportContext) -> dict[str, str]:
    return {a.name: a.estimator for a in ctx.analyses}


def _rows_of(ctx: ReportContext, est: pd.DataFrame, estimator: str) -> pd.DataFrame:
    of = _estimator_of(ctx)
    return est[[of.get(a, "") == estimator for a in est["analysis"]]]


def _forest_row(panel: str, r: Any, row_label: str) -> figures.ForestRow:
    e = Effect.of(r)
    return figures.ForestRow(
        panel=panel,
        scale=str(r["scale"]),
        label=row_label,
        estimate=e.estimate if e else None,
        low=e.low if e else None,
        high=e.high if e else None,
        text=interval_text(r),
        note="withheld" if str(r["estimate"]) == WITHHELD else "",
    )


def _panel_title(outcome: str, scale: str) -> str:
    return f"{label(outcome)}: {label(scale).lower()}"


def _reading(text: str) -> str:
    return f'<p class="reading">{html.escape(text)}</p>'


# --- the section ---------------------------------------------------------------------------------------


def answers(ctx: ReportContext) -> str | None:
    est = ctx.estimates
    if est is None:
        return None
    return (
        note(
            "The study's three questions, answered from the released estimates (release/"
            "estimates.csv and release/e_values.csv: every number here is there too). Each "
            "figure has one sentence that reads it, generated from the same numbers. "
            "&ldquo;The interval includes no difference&rdquo; means the data are compatible "
            "with no difference and with the differences at either end of the interval; it is "
            "not evidence that care makes no difference."
        )
        + "<h3>1. What difference does care make?</h3>"
        + _question_one(est)
        + "<h3>2. Does care make that difference after adjusting for pre-care adversity?</h3>"
        + _question_two(ctx, est)
        + "<h3>3. Over time, does care reduce the effect of pre-care adversity?</h3>"
        + _question_three(ctx, est)
        + "<h4>The emulated trials' protocols</h4>"
        + _protocols(ctx)
        + ctx.released
    )


def _headline(est: pd.DataFrame) -> pd.DataFrame:
    return est[(est["headline"] & ~est["negative_control"]).to_numpy()]


def _question_one(est: pd.DataFrame) -> str:
    top = _headline(est)
    if top.empty:
        return "<p>No headline analysis is declared in the study config.</p>"
    rows = [
        _forest_row(_panel_title(r["outcome"], r["scale"]), r, label(r["method"]))
        for _, r in top.iterrows()
    ]
    effects = [(str(r["outcome"]), Effect.of(r)) for _, r in top.iterrows()]
    per_row = "".join(f"<li>{html.escape(read_estimate(o, e))}</li>" for o, e in effects)
    return (
        png_img(figures.forest_plot(rows), "question 1: the adjusted effect of care")
        + _reading(read_main(effects))
        + f"<ul>{per_row}</ul>"
    )


def _question_two(ctx: ReportContext, est: pd.DataFrame) -> str:
    by_name = {a.name: a for a in ctx.analyses}
    trials = _rows_of(ctx, est, "sequential_trials")
    msm = _rows_of(ctx, est, "hazard_msm")
    rows: list[figures.ForestRow] = []
    pairs: list[tuple[str, Effect | None, Effect | None]] = []
    trial_effects: list[tuple[str, Effect]] = []
    msm_effects: list[tuple[str, Effect]] = []

    def msm_of(r: Any) -> pd.DataFrame:
        """The hazard MSM's released rows of a headline row's outcome and contrast."""
        return msm[(msm["outcome"] == r["outcome"]) & (msm["contrast"] == r["contrast"])]

    for _, top in _headline(est).iterrows():
        a = by_name.get(str(top["analysis"]))
        if a is None:
            continue
        same = est[
            (est["analysis"] == a.name)
            & (est["outcome"] == top["outcome"])
            & (est["contrast"] == top["contrast"])
        ]
        methods = [m + a.method_suffix for m in a.forest_plot_methods] or [str(top["method"])]
        ordered = sorted(
            (r for _, r in same.iterrows() if r["method"] in methods),
            key=lambda r: (
                0 if "unadjusted" in str(r["method"]) else 1,
                methods.index(r["method"]),
            ),
        )
        g = trials[(trials["outcome"] == top["outcome"]) & (trials["contrast"] == top["contrast"])]
        panel = _panel_title(top["outcome"], top["scale"])
        rows += [_forest_row(panel, r, label(r["method"])) for r in ordered]
        rows += [_forest_row(panel, r, label(r["method"])) for _, r in g.iterrows()]
        trial_effects += [
            (str(r["outcome"]), e) for _, r in g.iterrows() if (e := Effect.of(r)) is not None
        ]
        rows += [_forest_row(panel, r, label(r["method"])) for _, r in msm_of(top).iterrows()]
        msm_effects += [
            (str(r["outcome"]), e)
            for _, r in msm_of(top).iterrows()
            if (e := Effect.of(r)) is not None
        ]
        unadj = [r for r in ordered if "unadjusted" in str(r["method"])]
        pairs.append((str(top["outcome"]), Effect.of(unadj[0]) if unadj else None, Effect.of(top)))
    controls: list[tuple[str, Effect | None]] = []
    neg = est[(est["negative_control"] & est["headline"]).to_numpy()]
    for _, r in neg.iterrows():
        a = by_name.get(str(r["analysis"]))
        if a is None:
            continue
        same = est[
            (est["analysis"] == a.name)
            & (est["outcome"] == r["outcome"])
            & est["method"].isin([m + a.method_suffix for m in a.forest_plot_methods])
        ]
        panel = _panel_title(r["outcome"], r["scale"])
        if "negative control" not in panel:
            panel += " (negative control)"
        rows += [_forest_row(panel, s, label(s["method"])) for _, s in same.iterrows()]
        rows += [_forest_row(panel, s, label(s["method"])) for _, s in msm_of(r).iterrows()]
        controls.append((str(r["outcome"]), Effect.of(r)))
    if not rows:
        return "<p>No adjusted analysis is declared in the study config.</p>"
    return (
        png_img(figures.forest_plot(rows), "question 2: unadjusted beside adjusted")
        + _reading(read_adjustment(pairs, trial_effects, msm_effects))
        + (_reading(read_negative_controls(controls)) if controls else "")
        + (
            note("Sequential trials, caveat: " + html.escape(PROTOCOLS["sequential_trials"].caveat))
            if trial_effects
            else ""
        )
        + (
            note(
                "Marginal structural model of the hazards, caveat: "
                + html.escape(PROTOCOLS["hazard_msm"].caveat)
            )
            if msm_effects
            else ""
        )
        + note(
            "Unadjusted: the crude comparison. Adjusted: for the pre-care adversities, "
            "deprivation and the other baseline covariates (IPW, AIPW, Cox). Sequential "
            "trials: also for what was recorded after the referral and before each year's "
            "decision (protocol below); the marginal structural model of the hazards: the "
            "same, by weighting each child's time by the inverse probability of its care so "
            "far (protocol below). Negative controls: outcomes care cannot cause, whose "
            "adjusted interval should include no difference."
        )
        + _e_values(ctx, est)
    )


def _e_values(ctx: ReportContext, est: pd.DataFrame) -> str:
    ev = ctx.release("e_values")
    if ev is None or ev.empty:
        return ""
    keys = ["outcome", "contrast", "method", "scale"]
    top = _headline(est)[keys]
    ev = ev.merge(top, on=keys)
    if ev.empty:
        return ""
    shown = pd.DataFrame(
        {
            "outcome": ev["outcome"].map(label),
            "method": ev["method"].map(label),
            "E-value of the estimate": ev["e_value"],
            "E-value of the confidence limit": ev["e_value_ci"],
        }
    )
    sentence = read_e_values(
        [(str(o), _number(v)) for o, v in zip(ev["outcome"], ev["e_value_ci"], strict=True)]
    )
    return (
        "<h4>E-values of the adjusted estimates</h4>"
        + table(shown, text_cols=2)
        + _reading(sentence)
    )


def _question_three(ctx: ReportContext, est: pd.DataFrame) -> str:
    return (
        "<h4>The effect of care by pre-care adversity group</h4>"
        + _by_adversity(ctx, est)
        + "<h4>The effect of care by years since entry</h4>"
        + _by_years(ctx, est)
    )


_DIFFERENCE = re.compile(r"_minus_")
_WITH = re.compile(r"_(?:with|most_deprived)(?:_|$)")


def strata_of(rows: pd.DataFrame, modifiers: Sequence[str]) -> list[Strata]:
    """The released stratum rows of one outcome and method grouped by modifier, in the order
    of ``modifiers``; a modifier without rows (a stratum too small to estimate) has all three
    None."""
    found: dict[str, dict[str, Effect | None]] = {}
    for _, r in rows.iterrows():
        family = stratum_family(str(r["contrast"]))
        if family is None or family.split("|", 1)[1].startswith("cate_"):
            continue
        modifier = family.split("|", 1)[1]
        c = str(r["contrast"])
        part = "difference" if _DIFFERENCE.search(c) else "with" if _WITH.search(c) else "without"
        found.setdefault(modifier, {})[part] = Effect.of(r)
    return [
        Strata(
            m,
            found.get(m, {}).get("with"),
            found.get(m, {}).get("without"),
            found.get(m, {}).get("difference"),
        )
        for m in modifiers
    ]


def _by_adversity(ctx: ReportContext, est: pd.DataFrame) -> str:
    analyses = [a for a in ctx.analyses if a.estimator == "stratified_effect"]
    if not analyses:
        return "<p>No stratified analysis is declared in the study config.</p>"
    a = analyses[0]
    options = ESTIMATORS[a.estimator].Options.model_validate(a.options or {})
    modifiers = [*options.modifiers]  # type: ignore[attr-defined]
    if options.most_deprived_up_to_decile is not None:  # type: ignore[attr-defined]
        modifiers.append("deprivation")
    mine = est[(est["analysis"] == a.name).to_numpy()]
    outcome = str(a.outcomes[0])
    method = "aipw" if options.nuisance == "parametric" else "aipw_boosting"  # type: ignore[attr-defined]
    one = mine[(mine["outcome"] == outcome) & (mine["method"] == method)]
    strata = strata_of(one, modifiers)
    rows: list[figures.ForestRow] = []
    for s in strata:
        with_words, without_words = _group_words(s.modifier)
        panel = (
            "Deprivation (deciles 1-3 vs 4-10)"
            if s.modifier == "deprivation"
            else label(s.modifier)
        )
        for name, e in (
            (with_words[:1].upper() + with_words[1:], s.with_),
            (without_words[:1].upper() + without_words[1:], s.without),
            ("Difference (first minus second)", s.difference),
        ):
            rows.append(
                figures.ForestRow(
                    panel=f"{panel}: {label(outcome)}",
                    scale="mean_difference"
                    if e is None
                    else e.scale.removeprefix("difference_in_"),
                    label=name,
                    estimate=e.estimate if e else None,
                    low=e.low if e else None,
                    high=e.high if e else None,
                    text=_effect_text(e),
                    note="" if e else "withheld",
                )
            )
    cate = _rows_of(ctx, est, "dr_learner")
    return (
        png_img(figures.forest_plot(rows), "question 3: the effect of care by adversity group")
        + _reading(read_strata(outcome, strata))
        + note(
            "Doubly robust effect of care in the treated (AIPW) within each stratum, and the "
            "difference between the two strata with its interval. A stratum with too few "
            f"children or events (fewer than {ctx.disclosure.threshold}) is withheld, and so are "
            "its sibling stratum and the difference, so that it cannot be recovered by "
            "subtraction; likewise every level of a conditional-effect summary when one level "
            "is withheld."
        )
        + f"<details><summary>Every stratum row (both KS4 outcomes)</summary>{estimate_table(mine)}</details>"
        + (
            "<details><summary>Conditional effect by number of recorded adversities and by "
            f"deprivation (DR-learner)</summary>{estimate_table(cate)}</details>"
            if len(cate)
            else ""
        )
    )


def _effect_text(e: Effect | None) -> str:
    """The estimate and interval at the release's precision (the numbers of the released row)."""
    if e is None:
        return WITHHELD
    point = format_estimate(e.estimate, e.scale)
    if e.low is None or e.high is None:
        return point
    return f"{point} ({format_estimate(e.low, e.scale)} to {format_estimate(e.high, e.scale)})"


_YEAR = re.compile(r"_(\d+)$")


def years_of(rows: pd.DataFrame, last_year: int) -> list[tuple[str, Effect | None]]:
    """Released rows of one outcome by whole years since entry ("0", "1", ..., "4+")."""
    out = []
    for _, r in rows.iterrows():
        m = _YEAR.search(str(r["contrast"]))
        if not m:
            continue
        j = int(m.group(1))
        out.append((j, f"{j}+" if j == last_year else str(j), Effect.of(r)))
    return [(name, e) for _, name, e in sorted(out, key=lambda t: t[0])]


def _by_years(ctx: ReportContext, est: pd.DataFrame) -> str:
    parts = []
    for estimator, title, y_label in (
        (
            "absence_msm",
            "Care and yearly absence by years since entry (marginal structural model)",
            "Effect on the absence rate (percentage points)",
        ),
        (
            "hazard_by_years_since_entry",
            "Hazard ratio while looked after by years since entry (time-varying Cox)",
            "Hazard ratio (log scale)",
        ),
    ):
        for a in (a for a in ctx.analyses if a.estimator == estimator):
            options = ESTIMATORS[a.estimator].Options.model_validate(a.options or {})
            last = int(options.max_years_since_entry)  # type: ignore[attr-defined]
            mine = est[(est["analysis"] == a.name).to_numpy()]
            panels, clauses = [], []
            for outcome in dict.fromkeys(mine["outcome"]):
                points = years_of(mine[mine["outcome"] == outcome], last)
                if not points:
                    continue
                o = str(outcome)
                pp = 100.0 if o in PROPORTION_OUTCOMES else 1.0
                panels.append(
                    figures.YearPanel(
                        label(o),
                        points[0][1].scale if points[0][1] else "mean_difference",
                        [
                            figures.YearPoint(
                                j,
                                e.estimate * pp if e else None,
                                e.low * pp if e and e.low is not None else None,
                                e.high * pp if e and e.high is not None else None,
                            )
                            for j, e in points
                        ],
                        y_label,
                    )
                )
                clauses.append(read_by_years(o, points))
            if not panels:
                continue
            parts.append(
                png_img(figures.by_years_since_entry(title, panels), f"question 3: {a.name}")
                + _reading(read_years_figure(clauses))
            )
    if not parts:
        return "<p>No analysis by years since entry is declared in the study config.</p>"
    return "".join(parts) + note(
        "Year 0: less than a whole year since first entry to care; the last year: that many "
        "or more. A year withheld under disclosure control has no point and is named on the "
        "axis. The absence model weights each school year by the inverse probability of the "
        "care received given what was recorded before it (stabilised); the hazard ratios "
        "compare time looked after at each year since entry with time not looked after."
    )


def _protocols(ctx: ReportContext) -> str:
    parts = []
    for a in ctx.analyses:
        protocol = protocol_for(a)
        if protocol is None:
            continue
        rows = pd.DataFrame(protocol_rows(protocol, a), columns=["protocol element", "this study"])
        parts.append(
            f"<p><strong>{html.escape(protocol.title)}</strong> (analysis "
            f"<code>{html.escape(a.name)}</code>)</p>"
            + table(rows, text_cols=2)
            + (note("Caveat: " + html.escape(protocol.caveat)) if protocol.caveat else "")
        )
    return "".join(parts) or "<p>No emulated trial is declared in the study config.</p>"
