"""The truth of the per-trial "enter care now versus not now" contrast on KS4 (issue #20).

Trial k (k = 0, 1, ... years since the first referral): the children in need not yet looked
after when year k begins. Its entrants are the children who enter care during year k. The
contrast, for each entrant: its KS4 score as it is (care from year k) minus the score it would
have had had it **not entered in year k but followed the world's own course afterwards**. In
that course the child is a child in need not in care: new adversity arises at the not-in-care
rate, reviews record it and start plans, and the entry hazard, raised by what they record,
can still bring it into care in a later year. Pooled over the trials, weighted by entrants (as
the estimator pools them), this is the mean over every child looked after before year 11 of
Y(enter at its k) - Y(not at its k). It differs from the world's ``cla_vs_nla`` (care against
*never* being in care) because a deferred child often enters later: the estimand is supported
by the data (every entrant has comparators who did not enter that year), where "never" is
nearly impossible for some entrants (docs/gmethods.md section 5).

How the counterfactual is drawn (:func:`not_now_counterfactual`):

* **Common random numbers.** The yearly draws of :func:`synthetic_data.world.after_referral`
  (new adversity: chance and day; a review's recording; a plan's start) are fixed-size per
  year, so they are replayed exactly from the process's own seed: the counterfactual child
  meets the same new adversity draws, the same reviews and the same recording draws as in its
  factual life. Up to the start of year k its history is the factual one. With the entry of
  year k suppressed, it stays out of care; new adversity then has the not-in-care chance until
  a later entry. The replay is checked against the world (``tests/test_ks4_itt.py``): with entry
  suppressed in every year it gives exactly the world's ``onset_no_care``.
* **A later entry** comes from a fresh threshold: the entry hazard from year k+1 on (the
  world's, raised by the factors the counterfactual reviews record) until its cumulative value
  reaches an Exp(1) draw. This is the world's own entry process for a child still out of care
  when year k ends (by the memorylessness of the exponential threshold, the same law as a
  factual non-entrant's). Without ``after_referral`` (``default``) the hazard is the constant
  one fixed at referral.
* **The care a later entry brings** is the child's own factual care history (periods,
  placements, re-entry) shifted to the later day and cut at follow-up's end: the world draws
  lengths and moves independently of the entry day, so this is a draw from their law.
* ``replicates`` thresholds are drawn per entrant (from their own seed, ``SeedSequence([seed,
  23])``) and the counterfactual outcomes averaged; the truth's own Monte Carlo standard error
  (between replicates) is reported beside the value.

Nothing here draws from the world's generators: the world's files are unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthetic_data.scenario import Scenario, load_scenario
from synthetic_data.world import (
    MAX_REVIEWS,
    REVIEW_DAYS,
    YEAR,
    World,
    add_years,
    after_referral_active,
    expit,
    observed_ks4,
    process_rng,
)

CONTRAST = "enter_now_vs_not_now"
TRUTH_FILE = "ks4_entry_trials.json"
REPLICATES = 10
NEVER = np.iinfo(np.int64).max // 4  # the world's "after the window" entry day
NO_BLOCK = MAX_REVIEWS + 1  # a block year after every review: entry suppressed in every year


@dataclass
class CareCourse:
    """A KS4-relevant care course per child: first entry day (NEVER for none), days looked
    after and placement moves before year 11, and the true adversity onsets."""

    first_entry: np.ndarray
    days_before_ks4: np.ndarray
    moves_before_ks4: np.ndarray
    onset: np.ndarray


def ks4_under(w: World, sc: Scenario, person: np.ndarray, c: CareCourse) -> dict[str, np.ndarray]:
    """The released KS4 score and the level 2 probability of ``person`` under the care course
    ``c`` (the world's ``education`` formula with the child's own Y(0) and noise).
    ``tests/test_ks4_itt.py`` checks that the factual course gives the world's own values."""
    o, e = sc.outcomes, sc.effects
    before = w.ks4_start[person][:, None]
    adv16 = ((c.onset >= 0) & (c.onset < before)).sum(axis=1)
    ons0 = w.onset_no_care[person]
    adv16_0 = ((ons0 >= 0) & (ons0 < before)).sum(axis=1)
    days = c.days_before_ks4
    in_care = days > 0
    long_ = days >= 365
    short = in_care & ~long_
    entered = c.first_entry < NEVER
    n_pre = ((c.onset >= 0) & (c.onset < c.first_entry[:, None]) & entered[:, None]).sum(axis=1)
    age_entry = np.where(entered, (c.first_entry - w.birth[person]) / YEAR, 10.0)
    mediated = o.ks4_per_adversity * (adv16 - adv16_0)
    direct = (
        e.ks4_long_care * long_
        + e.ks4_short_care * short
        + e.ks4_per_placement_move * c.moves_before_ks4
        + in_care
        * (
            e.ks4_care_x_adversity * n_pre
            + e.ks4_care_per_year_in_care * days / YEAR
            + e.ks4_care_per_year_age_at_entry * (age_entry - 10.0)
        )
    )
    y0 = w.ks4_y0[person]
    logit0 = (y0 - 52.0) / 5.0
    level2 = expit(
        logit0
        + mediated / 5.0
        + e.level2_log_or_long * long_
        + e.level2_log_or_short * short
        + e.level2_log_or_care_x_adversity * n_pre * in_care
    )
    return {
        "ks4_score": observed_ks4(y0 + direct + mediated),
        "ks4_latent_effect": direct + mediated,
        "ks4_level2_inclusive": level2,
    }


def factual_course(w: World, person: np.ndarray) -> CareCourse:
    """The world's own care course of ``person``."""
    first = w.first_entry[person]
    return CareCourse(
        np.where(first >= 0, first, NEVER),
        w.care_days_before_ks4[person],
        w.moves_before_ks4[person],
        w.onset[person],
    )


def shifted_course(
    w: World, person: np.ndarray, entry: np.ndarray, onset: np.ndarray
) -> CareCourse:
    """Each child's factual care history moved to start on ``entry`` (NEVER: no care), cut at
    the end of follow-up (or 18) and counted before year 11 (``person`` may repeat)."""
    age18 = add_years(w.birth[person], 18)
    limit = np.minimum(w.fu_end[person], age18)
    first = w.first_entry[person]
    # the world's condition for an entry to start care (synthetic_data.world.care)
    enters = (entry < NEVER) & (first >= 0) & (entry < w.fu_end[person]) & (entry < age18 - 30)
    shift = np.where(enters, entry - first, 0)
    ks4 = w.ks4_start[person]
    days = np.zeros(person.size, np.int64)
    moves = np.zeros(person.size, np.int64)
    # rows of the world's care periods and placements per child (both sorted by person)
    for starts_of, ends_of, kind in (
        (w.care_start, w.care_end, "days"),
        (w.ep_start, None, "moves"),
    ):
        owner = w.care_person if kind == "days" else w.ep_person
        lo = np.searchsorted(owner, person, "left")
        hi = np.searchsorted(owner, person, "right")
        count = np.where(enters, hi - lo, 0)
        row = np.repeat(lo, count) + (
            np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        )
        who = np.repeat(np.arange(person.size), count)
        start = starts_of[row] + shift[who]
        if kind == "days":
            assert ends_of is not None
            end = np.minimum(np.minimum(ends_of[row] + shift[who], limit[who]), ks4[who])
            keep = start < limit[who] - 1
            days += np.bincount(
                who, weights=np.where(keep, np.clip(end - start, 0, None), 0), minlength=person.size
            ).astype(np.int64)
        else:
            move = np.isin(w.ep_reason_start[row], ["P", "T"]) & (start < ks4[who])
            moves += np.bincount(who, weights=move, minlength=person.size).astype(np.int64)
    return CareCourse(np.where(enters, entry, NEVER), days, moves, onset)


def not_now_counterfactual(
    w: World,
    sc: Scenario,
    seed: int,
    person: np.ndarray,
    block: np.ndarray,
    threshold: np.ndarray,
    yearly_rate: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Replay the world's after-referral years for ``person`` (world rows, may repeat) with
    entry suppressed up to and including year ``block`` since the first referral and, from the
    next year, entry when the cumulative hazard from then reaches ``threshold``. Returns the
    counterfactual entry day (NEVER for none) and true adversity onsets.

    The yearly draws are the world's (``after_referral``'s generator replayed from its seed,
    every draw the same size every year): common random numbers. ``yearly_rate``: a list the
    entry hazard of each year is appended to (diagnostics: the world's true entry
    probabilities, docs/gmethods.md section 6)."""
    ar, e = sc.after_referral, sc.effects
    rate0 = w.care_entry_rate[person]
    ref1 = w.ref1[person]
    if not after_referral_active(sc):
        # the hazard fixed at referral; new adversity is not drawn after referral
        t = ref1 + (block + 1) * REVIEW_DAYS
        entry = t + (threshold / np.maximum(rate0, 1e-300) * YEAR).astype(np.int64)
        return np.where(rate0 > 0, entry, NEVER), w.onset[person].copy()
    has = np.flatnonzero(w.ref1 >= 0)
    m = has.size
    pos = np.searchsorted(has, person)
    rng = process_rng(seed, 5)
    close1, ref2, close2 = w.close1[person], w.ref2[person], w.close2[person]
    limit = np.minimum(w.fu_end[person], add_years(w.birth[person], 18))
    onset = w.onset_before_care[person].copy()
    fr = w.family_risk[person]
    known = w.recorded1[person].copy()
    recorded2 = w.recorded2[person]
    q = person.size
    n_new = np.zeros(q, np.int64)
    cp_new = np.zeros(q, bool)
    on_plan = w.cp1[person] > 0
    cum = np.zeros(q)
    entry = np.full(q, NEVER)
    entered = np.zeros(q, bool)
    interval_years = REVIEW_DAYS / YEAR
    for k in range(MAX_REVIEWS):
        t0 = ref1 + k * REVIEW_DAYS
        rate = rate0 * np.exp(ar.care_log_hr_new_factor * n_new + ar.care_log_hr_cp_plan * cp_new)
        if yearly_rate is not None:
            yearly_rate.append(rate)
        at_risk = k > block
        reach = at_risk & ~entered & (cum + rate * interval_years >= threshold)
        entry = np.where(reach, t0 + ((threshold - cum) / rate * YEAR).astype(np.int64), entry)
        cum = cum + np.where(at_risk, rate * interval_years, 0.0)
        in_care = entry <= t0
        u = rng.random((m, 5))[pos]
        when = t0[:, None] + (rng.random((m, 5))[pos] * REVIEW_DAYS).astype(np.int64)
        base = (
            ar.new_adversity_rate
            * interval_years
            * np.exp(ar.new_adversity_log_hr_family_risk * fr)
        )
        p = 1 - np.exp(-base * np.exp(e.new_adversity_log_hr_looked_after * in_care))
        new = ((onset < 0) | (onset > when)) & (when < limit[:, None]) & (u < p[:, None])
        onset[new] = when[new]
        entered |= reach
        t1 = t0 + REVIEW_DAYS
        ep1 = (t1 >= ref1) & (t1 < close1)
        ep2 = (ref2 >= 0) & (t1 >= ref2) & (t1 < close2)
        review = (ep1 | ep2) & (t1 < limit)
        known |= recorded2 & ep2[:, None]
        present = (onset >= 0) & (onset <= t1[:, None])
        rec = (
            present
            & ~known
            & review[:, None]
            & (rng.random((m, 5))[pos] < ar.reassessment_sensitivity)
        )
        newly = rec.sum(axis=1)
        known |= rec
        n_new += newly
        start_plan = (
            ~on_plan
            & (newly > 0)
            & (rng.random(m)[pos] < 1 - (1 - ar.cp_plan_prob_per_new_factor) ** newly)
        )
        on_plan |= start_plan
        cp_new |= start_plan
    return entry, onset


@dataclass
class EntryTrialTruth:
    """Per entrant (children referred before year 11 with a KS4 result, looked after before
    it): its trial, its factual outcomes and the mean of its ``replicates`` counterfactual
    outcomes had it not entered in its trial's year; ``replicate_effect`` is the pooled effect
    in each replicate (its spread gives the truth's Monte Carlo error)."""

    person: np.ndarray
    trial: np.ndarray
    factual: dict[str, np.ndarray]
    not_now: dict[str, np.ndarray]
    later_entry_share: np.ndarray
    replicate_effect: dict[str, np.ndarray]


def entrants(w: World, ks4_has: np.ndarray) -> np.ndarray:
    """The world rows of the trials' entrants: referred before year 11, KS4 result, looked after
    before year 11 (the world's ``cla_vs_nla`` exposed children)."""
    return np.flatnonzero(
        (w.ref1 >= 0) & ks4_has & (w.ref1 < w.ks4_start) & (w.care_days_before_ks4 > 0)
    )


def entry_trial_truth(
    w: World, sc: Scenario, seed: int, ks4_has: np.ndarray, replicates: int = REPLICATES
) -> EntryTrialTruth:
    """The counterfactual "not now" outcomes of every entrant (module docstring)."""
    who = entrants(w, ks4_has)
    trial = (w.first_entry[who] - w.ref1[who]) // REVIEW_DAYS
    factual = ks4_under(w, sc, who, factual_course(w, who))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 23]))
    person = np.tile(who, replicates)
    block = np.tile(trial, replicates)
    threshold = rng.exponential(1.0, person.size)
    entry, onset = not_now_counterfactual(w, sc, seed, person, block, threshold)
    course = shifted_course(w, person, entry, onset)
    cf = ks4_under(w, sc, person, course)
    shape = (replicates, who.size)
    later = (course.days_before_ks4 > 0).reshape(shape)
    not_now = {k: v.reshape(shape).mean(axis=0) for k, v in cf.items()}
    rep = {
        k: (factual[k][None, :] - cf[k].reshape(shape)).mean(axis=1)
        for k in ("ks4_score", "ks4_level2_inclusive")
    }
    return EntryTrialTruth(who, trial, factual, not_now, later.mean(axis=0), rep)


def entry_trial_estimands(t: EntryTrialTruth) -> list[dict[str, object]]:
    """The pooled truth per outcome (as ``truth/effects.json`` rows: outcome, contrast, scale,
    value) plus its Monte Carlo SE, and the same per trial (``trials``)."""
    out: list[dict[str, object]] = []
    n = t.person.size
    for outcome, scale in (
        ("ks4_score", "mean_difference"),
        ("ks4_level2_inclusive", "risk_difference"),
    ):
        effect = t.factual[outcome] - t.not_now[outcome]
        reps = t.replicate_effect[outcome]
        per_trial = [
            {
                "trial": int(k),
                "entrants": int((t.trial == k).sum()),
                "value": float(effect[t.trial == k].mean()),
            }
            for k in np.unique(t.trial)
        ]
        out.append(
            {
                "outcome": outcome,
                "contrast": CONTRAST,
                "scale": scale,
                "value": float(effect.mean()) if n else 0.0,
                "monte_carlo_se": float(reps.std(ddof=1) / np.sqrt(reps.size))
                if reps.size > 1
                else 0.0,
                "replicates": int(reps.size),
                "entrants": int(n),
                "later_entry_before_year_11": float(t.later_entry_share.mean()) if n else 0.0,
                "trials": per_trial,
                "description": f"ATT over {n} entrants pooled over trials by entrants: the "
                "outcome with care from the year of entry minus the mean over replicates of the "
                "outcome had the child not entered that year and followed the world's course "
                "after (later entry possible); monte_carlo_se: between replicates",
            }
        )
    return out


def write_entry_trial_truth(
    w: World, sc: Scenario, seed: int, ks4_has: np.ndarray, truth_dir: Path
) -> None:
    """``truth/ks4_entry_trials.json``: :func:`entry_trial_estimands` of the world (a new file;
    no other truth file changes)."""
    rows = entry_trial_estimands(entry_trial_truth(w, sc, seed, ks4_has))
    (truth_dir / TRUTH_FILE).write_text(
        json.dumps({"estimands": rows}, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def entry_trial_truth_of_delivery(data_dir: str | Path) -> list[dict[str, object]]:
    """The estimands of a generated world's ``truth/ks4_entry_trials.json``; for a world
    generated before the file existed, computed by rebuilding the world in memory from its
    ``delivery.json`` (seed, size), ``truth/scenario.yaml`` and ``truth/persons.parquet``
    (``has_ks4``), and written beside the other truth files."""
    import polars as pl

    from synthetic_data.world import build_world

    data = Path(data_dir)
    truth = data / "truth"
    path = truth / TRUTH_FILE
    if not path.exists():
        delivery = json.loads((data / "delivery.json").read_text(encoding="utf-8"))
        sc = load_scenario(truth / "scenario.yaml")
        n, seed = int(delivery["n_children"]), int(delivery["seed"])
        w = build_world(n, sc, seed, with_health=False)
        persons = pl.read_parquet(truth / "persons.parquet", columns=["person_id", "has_ks4"])
        ks4_has = np.zeros(n, bool)
        ks4_has[persons["person_id"].to_numpy()] = persons["has_ks4"].to_numpy() == 1
        write_entry_trial_truth(w, sc, seed, ks4_has, truth)
    rows: list[dict[str, object]] = json.loads(path.read_text(encoding="utf-8"))["estimands"]
    return rows
