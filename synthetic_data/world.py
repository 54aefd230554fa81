"""The latent causal world: people, places, adversity, social services, care, school, health.

Everything is vectorised over people with numpy (no per-person Python loops). Days are integer
days since 1970-01-01. The causal structure (see ``docs/synthetic_world.md``):

    deprivation -> family risk -> adversity (true, with onset) -> referral -> RECORDED factors
    recorded factors + deprivation + authority + age -> entry to care (a hazard constant
        from the first referral; being looked after then varies over time)
    true adversity + deprivation (+ care, the effect under study) -> education and health

Care entry depends only on what social services recorded, so adjusting for recorded pre-care
factors, deprivation, authority and age identifies the effect of care.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from schemas.contracts import load_codelist
from synthetic_data.names import LA_WEIGHTS
from synthetic_data.scenario import Scenario

log = logging.getLogger(__name__)

YEAR = 365.25
ADVERSITIES = (
    "physical_abuse",
    "parental_mental_ill_health",
    "parental_substance_misuse",
    "domestic_abuse",
    "parental_learning_disability",
)
MAX_MOVES = 5
WINDOW_START = int(np.datetime64("2000-01-01", "D").astype(np.int64))


def day(iso: str) -> int:
    return int(np.datetime64(iso, "D").astype(np.int64))


def expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def add_years(days: np.ndarray, years: int) -> np.ndarray:
    """Same calendar day ``years`` later (29 February -> 28 February)."""
    return anniversaries(days, [years])[:, 0]


def anniversaries(days: np.ndarray, years: list[int]) -> np.ndarray:
    """``add_years(days, k)`` for each k in ``years``, as columns (the calendar split of
    ``days`` is done once)."""
    d = days.astype("datetime64[D]")
    start_of_year = d.astype("datetime64[Y]")
    y = start_of_year.astype(np.int64) + 1970
    md = d - start_of_year.astype("datetime64[D]")
    month_in = d.astype("datetime64[M]").astype(np.int64) % 12
    out = np.empty((d.size, len(years)), np.int64)
    for j, k in enumerate(years):
        moved = (y + k - 1970).astype("datetime64[Y]").astype("datetime64[D]") + md
        month_out = moved.astype("datetime64[M]").astype(np.int64) % 12
        # Feb 29 overflow into Mar 1 in a non-leap year: step back one day.
        out[:, j] = np.where(month_out != month_in, moved - np.timedelta64(1, "D"), moved).astype(
            np.int64
        )
    return out


def academic_year_of_birth(birth: np.ndarray) -> np.ndarray:
    """Academic year (starting 1 September) in which a child was born."""
    d = birth.astype("datetime64[D]")
    y = d.astype("datetime64[Y]").astype(np.int64) + 1970
    m = d.astype("datetime64[M]").astype(np.int64) % 12 + 1
    return np.where(m >= 9, y, y - 1)


def sept1(year: np.ndarray) -> np.ndarray:
    return ((year - 1970).astype("datetime64[Y]").astype("datetime64[D]") + 243).astype(
        np.int64
    ) + _leap_fix(year)


def _leap_fix(year: np.ndarray) -> np.ndarray:
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    return leap.astype(np.int64)


def make_date(year: np.ndarray, month: int, dom: int) -> np.ndarray:
    base = (np.asarray(year) - 1970).astype("datetime64[Y]").astype("datetime64[M]")
    return (base + np.timedelta64(month - 1, "M")).astype("datetime64[D]").astype(np.int64) + (
        dom - 1
    )


@dataclass
class World:
    """All latent arrays of one synthetic world (index = person)."""

    n: int
    birth: np.ndarray
    sex_male: np.ndarray
    ethnicity: np.ndarray
    la_birth: np.ndarray
    decile: np.ndarray
    family_risk: np.ndarray
    fu_start: np.ndarray
    fu_end: np.ndarray
    fu_end_reason: np.ndarray  # 0 age18, 1 left, 2 died, 3 window end
    death: np.ndarray  # -1 if none
    disability: np.ndarray
    adversity: np.ndarray  # (n, 5) bool, ever before 18
    onset: np.ndarray  # (n, 5) day, -1 if none
    # residences: flat arrays sorted by person then start
    res_person: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    res_start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    res_end: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    res_la: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    res_area: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    res_seq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # per person: index of the first residence and the number of residences (residence_at)
    res_first: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    res_count: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # social services
    ref1: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    close1: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ref2: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    close2: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    recorded1: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), bool))
    recorded2: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), bool))
    cp1: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cp2: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # entry to care: the yearly hazard from the first referral (0 without one) and the
    # authority at that referral (at follow-up start without one); kept for diagnostics
    # (benchmarks/ipw_oracle.py)
    care_entry_rate: np.ndarray = field(default_factory=lambda: np.zeros(0))
    la_at_referral: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # the authorities' log care-entry multipliers (shared cause of care and the negative control)
    la_care_effect: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # true adversity onsets had the child never entered care (== onset unless new adversity
    # after referral is changed by care; see after_referral)
    onset_no_care: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.int64))
    # true adversity onsets as social services left them, before anything after the first
    # referral (the start of after_referral's replay: synthetic_data/entry_trials.py)
    onset_before_care: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.int64))
    # yearly review assessments that recorded new factors (after_referral): flat, by person
    # then day; rev_known = all factors recorded in the episode by then; rev_cp_start = the
    # category code of a child-protection plan started at the review (-1 none); rev_episode 0/1
    rev_person: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rev_day: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rev_known: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), bool))
    rev_cp_start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rev_episode: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # care periods: flat, sorted by person then start
    care_person: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    care_period: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    care_start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    care_end: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # exclusive
    care_open: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    care_end_reason: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    care_long_plan: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # placements (episodes): flat
    ep_person: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ep_period: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ep_start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ep_end: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ep_reason_start: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    ep_reason_end: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    ep_legal: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    ep_placement: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    # education truth
    ks4_start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ks2_start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # 1 Sep, year 6
    care_days_before_ks2: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ks2_p0: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ks2_p1: np.ndarray = field(default_factory=lambda: np.zeros(0))
    first_entry: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # -1 none
    pre_care_adversity: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), bool))
    care_days_before_ks4: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    moves_before_ks4: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ks4_y0: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ks4_effect: np.ndarray = field(default_factory=lambda: np.zeros(0))
    level2_p0: np.ndarray = field(default_factory=lambda: np.zeros(0))
    level2_p1: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # per pupil-year truth of the school census (extracts._school_census): person_id,
    # academic_year, looked_after_share, years_since_entry, absence_rate_factual/_no_care
    school_years: dict[str, np.ndarray] = field(default_factory=dict)
    # health events: flat
    ev_person: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ev_day: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ev_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def residence_at(self, person: np.ndarray, when: np.ndarray) -> np.ndarray:
        """Index into the residence arrays of each person's address on a day: the person's
        last residence starting on or before the day (the first one if none has started).

        Each person has at most MAX_MOVES + 1 residences, sorted by start, so the index is
        the first one's plus the number of later ones begun by then: a few gathers per query
        instead of a binary search over every residence (ten million queries at 1M)."""
        if self.res_first.size != self.n:  # each person's first residence and their count
            self.res_first = np.searchsorted(self.res_person, np.arange(self.n), side="left")
            self.res_count = np.bincount(self.res_person, minlength=self.n)
        when = np.asarray(when)
        if person.size > CHUNK_ROWS:  # a chunk at a time: small temporaries (see ``chunks``)
            out = np.empty(person.size, self.res_first.dtype)
            for c in chunks(person.size):
                out[c] = self.residence_at(person[c], when[c])
            return out
        first = self.res_first[person]
        idx = first.copy()
        later = np.flatnonzero(self.res_count[person] > 1)
        for j in range(1, int(self.res_count.max(initial=1))):
            pos = first[later] + j
            begun = self.res_start[pos] <= when[later]
            idx[later[begun]] += 1
            later = later[begun]  # only a person whose j-th move has begun can have begun the next
            later = later[self.res_count[person[later]] > j + 1]
        return idx


EVENT_KINDS = (
    "self_harm",
    "emergency",
    "mental_health",
    "appendicitis",
    "ed_injury",
    "elective",
    "dental_caries",
)


def _calibrate_intercept(lp: np.ndarray, target: float) -> float:
    """The intercept ``a`` at which the mean of ``expit(a + lp)`` is ``target`` (bisection).
    Each step computes ``expit(mid + lp)`` exactly as :func:`expit` does, in one reused
    buffer: forty steps on a million children otherwise allocate and fault in 200 arrays."""
    lo, hi = -20.0, 20.0
    buf = np.empty_like(lp, dtype=np.float64)
    for _ in range(40):
        mid = (lo + hi) / 2
        np.add(mid, lp, out=buf)
        np.negative(buf, out=buf)
        np.exp(buf, out=buf)
        np.add(1.0, buf, out=buf)
        np.divide(1.0, buf, out=buf)
        if buf.mean() > target:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def build_people(n: int, sc: Scenario, rng: np.random.Generator) -> World:
    """People, places, follow-up, adversity (with onsets) and disability."""
    pop = sc.population
    start = day(f"{pop.first_birth_year}-01-01")
    stop = day(f"{pop.first_birth_year + pop.birth_years}-01-01")
    birth = np.sort(rng.integers(start, stop, n))
    sex_male = rng.random(n) < 0.512
    eth_codes = list(load_codelist("ethnicity"))
    eth_p = np.array([0.86, 0.035, 0.035, 0.035, 0.012, 0.013, 0.01])
    ethnicity = rng.choice(len(eth_codes), n, p=eth_p / eth_p.sum())
    w = np.array(LA_WEIGHTS, float)
    la_birth = rng.choice(len(w), n, p=w / w.sum())
    la_dep_shift = np.random.default_rng(rng.integers(2**32)).normal(0, 1.1, len(w))
    decile = np.clip(np.round(5.5 + la_dep_shift[la_birth] + rng.normal(0, 2.6, n)), 1, 10)
    decile = decile.astype(np.int64)
    dep_z = (5.5 - decile) / 2.87
    family_risk = sc.adversity.deprivation_loading * dep_z + rng.normal(0, 1, n)
    # minority-ethnic children slightly more deprived on average is already via area; keep simple
    in_mig = rng.random(n) < pop.in_migrant_share
    fu_start = np.where(in_mig, birth + (rng.random(n) * 15 * YEAR).astype(np.int64), birth)
    age18 = add_years(birth, 18)
    window_end = day(pop.window_end)
    leave = fu_start + (rng.exponential(1 / max(pop.leave_region_rate, 1e-9), n) * YEAR).astype(
        np.int64
    )
    death = birth + (rng.exponential(1 / max(pop.death_rate, 1e-9), n) * YEAR).astype(np.int64)
    ends = np.stack([age18, leave, death, np.full(n, window_end)], axis=1)
    reason = ends.argmin(axis=1)
    fu_end = ends.min(axis=1)
    keep = fu_end > fu_start
    if not keep.all():  # entered after the window closed: start one day before end
        fu_start = np.where(keep, fu_start, fu_end - 1)
    died = np.where(reason == 2, death, -1)

    # adversity: shared family risk, calibrated to scenario prevalences
    prev = [getattr(sc.adversity, a) for a in ADVERSITIES]
    loading = sc.adversity.family_risk_loading
    adversity = np.zeros((n, 5), bool)
    onset = np.full((n, 5), -1, np.int64)
    lp = loading * family_risk
    for k, target in enumerate(prev):
        a = _calibrate_intercept(lp, target)
        has = rng.random(n) < expit(a + lp)
        if ADVERSITIES[k] == "parental_learning_disability":
            on = birth.copy()
        else:
            on = birth + (rng.random(n) * 16 * YEAR).astype(np.int64)
        adversity[:, k] = has
        onset[:, k] = np.where(has, on, -1)
    disability = rng.random(n) < expit(-3.6 + 0.3 * adversity.sum(axis=1))
    world = World(
        n=n,
        birth=birth,
        sex_male=sex_male,
        ethnicity=ethnicity,
        la_birth=la_birth,
        decile=decile,
        family_risk=family_risk,
        fu_start=fu_start,
        fu_end=fu_end,
        fu_end_reason=np.where(fu_end >= window_end, 3, reason),
        death=died,
        disability=disability,
        adversity=adversity,
        onset=onset,
    )
    _residences(world, sc, rng)
    return world


def _residences(w: World, sc: Scenario, rng: np.random.Generator) -> None:
    """House moves as a Poisson process; each move a new area (same decile), maybe a new LA."""
    n = w.n
    years = (w.fu_end - w.fu_start) / YEAR
    n_moves = np.minimum(rng.poisson(sc.population.house_move_rate * years), MAX_MOVES)
    n_res = n_moves + 1
    person = np.repeat(np.arange(n), n_res)
    seq = np.arange(person.size) - np.repeat(np.cumsum(n_res) - n_res, n_res)
    span = (w.fu_end - w.fu_start)[person]
    offs = np.where(seq == 0, 0, (rng.random(person.size) * span).astype(np.int64))
    starts = w.fu_start[person] + offs
    order = np.lexsort((starts, person))
    person, starts = person[order], starts[order]
    seq = np.arange(person.size) - np.repeat(np.cumsum(n_res) - n_res, n_res)
    # a move on the same day as the previous start: push by one day
    nxt = np.r_[starts[1:], 0]
    last = np.r_[person[1:] != person[:-1], True]
    ends = np.where(last, w.fu_end[person], nxt - 1)
    ends = np.maximum(ends, starts)
    cross = (rng.random(person.size) < sc.population.cross_la_move_share) & (seq > 0)
    la = w.la_birth[person].copy()
    new_la = rng.integers(0, len(LA_WEIGHTS), person.size)
    # carry LA forward: a cross-LA move sets a new LA for that residence and the following ones
    la = np.where(cross, new_la, -1)
    la = np.where(seq == 0, w.la_birth[person], la)
    idx = np.where(la >= 0, np.arange(la.size), 0)
    np.maximum.accumulate(idx, out=idx)
    la = la[idx]
    area = (la * 10 + (w.decile[person] - 1)) * 1000 + rng.integers(0, 60, person.size)
    w.res_person, w.res_start, w.res_end = person, starts, ends
    w.res_la, w.res_area, w.res_seq = la, area, seq


def social_services(w: World, sc: Scenario, rng: np.random.Generator) -> None:
    """Referrals (episodes of need), imperfect recording, child protection."""
    ss = sc.social_services
    n = w.n
    cand = np.full((n, 6), np.iinfo(np.int64).max)
    for k in range(5):
        trig = w.adversity[:, k] & (rng.random(n) < ss.referral_prob_per_adversity)
        delay = (rng.exponential(1.0, n) * YEAR).astype(np.int64)
        cand[:, k] = np.where(trig, np.maximum(w.onset[:, k], w.fu_start) + delay, cand[:, k])
    bg = w.fu_start + (rng.exponential(1 / ss.background_referral_rate, n) * YEAR).astype(np.int64)
    cand[:, 5] = bg
    ref1 = cand.min(axis=1)
    age17_6 = add_years(w.birth, 18) - 180
    has = (ref1 < w.fu_end) & (ref1 < age17_6)
    ref1 = np.where(has, ref1, -1)
    open_len = (rng.exponential(ss.case_open_years, n) * YEAR).astype(np.int64) + 14
    close1 = np.where(has, ref1 + open_len, -1)
    # second episode of need
    again = has & (rng.random(n) < 0.35)
    ref2 = np.where(again, close1 + 30 + (rng.exponential(2.0, n) * YEAR).astype(np.int64), -1)
    again &= (ref2 < w.fu_end) & (ref2 < age17_6)
    ref2 = np.where(again, ref2, -1)
    close2 = np.where(
        again, ref2 + (rng.exponential(ss.case_open_years, n) * YEAR).astype(np.int64) + 14, -1
    )
    sens = ss.recording_sensitivity
    present1 = w.adversity & (w.onset <= ref1[:, None]) & has[:, None]
    rec1 = present1 & (rng.random((n, 5)) < sens)
    present2 = w.adversity & (w.onset <= ref2[:, None]) & again[:, None]
    rec2 = rec1 | (present2 & ~rec1 & (rng.random((n, 5)) < sens))
    rec2 &= again[:, None]
    # child protection: physical abuse recorded -> PHY; otherwise some neglect / emotional
    cp_codes = {"none": 0, "NEG": 1, "PHY": 2, "SAB": 3, "EMO": 4}
    other = rng.random(n)
    cp1 = np.where(rec1[:, 0], cp_codes["PHY"], 0)
    risk = rec1[:, 1:4].sum(axis=1)
    cp1 = np.where(
        (cp1 == 0) & has & (other < 0.05 + 0.08 * risk),
        np.where(other < 0.03 + 0.05 * risk, cp_codes["NEG"], cp_codes["EMO"]),
        cp1,
    )
    cp2 = np.where(rec2[:, 0], cp_codes["PHY"], np.where(again, cp1, 0))
    w.ref1, w.close1, w.ref2, w.close2 = ref1, close1, ref2, close2
    w.recorded1, w.recorded2, w.cp1, w.cp2 = rec1, rec2, cp1, cp2


def care(
    w: World, sc: Scenario, rng: np.random.Generator, tv_rng: np.random.Generator | None = None
) -> None:
    """Entry to care as a hazard driven by RECORDED factors; periods, placements, re-entry.

    The hazard is fixed at the first referral unless the scenario's ``after_referral`` section
    makes yearly reviews record new factors and start protection plans (:func:`after_referral`,
    drawing from ``tv_rng``), which then raise it."""
    tv_rng = tv_rng if tv_rng is not None else np.random.default_rng(0)
    ss = sc.social_services
    n = w.n
    has = w.ref1 >= 0
    la_sd = sc.population.la_care_propensity_sd
    la_eff = np.random.default_rng(rng.integers(2**32)).normal(0, la_sd, len(LA_WEIGHTS))
    res = w.residence_at(np.arange(n), np.maximum(w.ref1, w.fu_start))
    la_at_ref = w.res_la[res]
    age_ref = (w.ref1 - w.birth) / YEAR
    lp = (
        ss.care_log_hr_recorded_factor * w.recorded1[:, 1:].sum(axis=1)
        + ss.care_log_hr_physical_abuse * w.recorded1[:, 0]
        + ss.care_log_hr_per_deprivation_decile * (10 - w.decile)
        + la_eff[la_at_ref]
        - 0.06 * age_ref
        + 0.5 * (w.cp1 > 0)
    )
    rate = ss.care_base_rate * np.exp(lp)
    w.care_entry_rate, w.la_at_referral = np.where(has, rate, 0.0), la_at_ref
    w.la_care_effect = la_eff
    exp1 = rng.exponential(1.0, n)  # entry when the cumulative hazard from referral reaches it
    t = exp1 / rate
    same_day = rng.random(n) < 0.1 * (1 - np.exp(-rate))
    entry = w.ref1 + (t * YEAR).astype(np.int64)
    if after_referral_active(sc):
        entry = after_referral(w, sc, tv_rng, rate, np.where(same_day, 0.0, exp1))
    entry = np.where(same_day, w.ref1, entry)
    age18 = add_years(w.birth, 18)
    enters = has & (entry < w.fu_end) & (entry < age18 - 30)
    # periods
    people = np.flatnonzero(enters)
    long_plan = rng.random(people.size) < ss.long_care_share
    dur = np.where(
        long_plan,
        rng.integers(365, 365 * 9, people.size),
        rng.integers(14, 365, people.size),
    )
    p_start = entry[people]
    p_end = p_start + dur
    reentry = (~long_plan | (rng.random(people.size) < 0.3)) & (
        rng.random(people.size) < ss.re_entry_prob / 0.6
    )
    gap = rng.integers(60, 700, people.size)
    s2 = p_end + gap
    dur2 = rng.integers(14, 365, people.size)
    persons = np.r_[people, people[reentry]]
    period = np.r_[np.ones(people.size, np.int64), np.full(reentry.sum(), 2)]
    starts = np.r_[p_start, s2[reentry]]
    ends = np.r_[p_end, s2[reentry] + dur2[reentry]]
    longp = np.r_[long_plan, np.zeros(reentry.sum(), bool)]
    limit = np.minimum(w.fu_end[persons], age18[persons])
    keep = starts < limit - 1
    persons, period, starts, ends, longp, limit = (
        a[keep] for a in (persons, period, starts, ends, longp, limit)
    )
    # a period still running when follow-up ends: at 18 it closes as E8 (aged out), at a death
    # as E2 (died in care); on leaving the region or at the end of the window it stays open
    running = ends >= limit
    aged_out = running & (w.fu_end_reason[persons] == 0)
    died = running & (w.fu_end_reason[persons] == 2)
    open_ = running & ~aged_out & ~died
    ends = np.minimum(ends, limit)
    age_end = (ends - w.birth[persons]) / YEAR
    natural = rng.choice(
        np.array(["E4A", "E41", "E11", "E8"], dtype=object), persons.size, p=[0.55, 0.2, 0.1, 0.15]
    )
    natural = np.where((natural == "E11") & (age_end > 8), "E4A", natural)
    reason = np.where(aged_out, "E8", np.where(~longp, "E4A", natural))
    reason = np.where(died, "E2", reason)
    order = np.lexsort((starts, persons))
    w.care_person, w.care_period = persons[order], period[order]
    w.care_start, w.care_end = starts[order], ends[order]
    w.care_open = open_[order]
    w.care_end_reason = reason[order]
    w.care_long_plan = longp[order]
    _placements(w, sc, rng)
    _education_exposure(w)


REVIEW_DAYS = 365  # yearly reviews from the first referral, while an episode of need is open
MAX_REVIEWS = 18


def after_referral_active(sc: Scenario) -> bool:
    """Whether anything can happen after the first referral (else the hazard stays fixed)."""
    ar = sc.after_referral
    return ar.new_adversity_rate > 0 or ar.reassessment_sensitivity > 0


def after_referral(
    w: World, sc: Scenario, rng: np.random.Generator, rate0: np.ndarray, exp1: np.ndarray
) -> np.ndarray:
    """Time-varying confounding: year by year after the first referral, new adversity arises
    (less often once the child has entered care), yearly reviews in an open episode of need
    record present but unrecorded adversities and may start a child-protection plan, and the
    care-entry hazard for the next year is ``rate0`` x exp(``care_log_hr_new_factor`` x factors
    recorded at reviews so far + ``care_log_hr_cp_plan`` x a plan started at a review). Entry
    is the day the cumulative hazard reaches ``exp1`` (the same draw as the fixed hazard).

    Updates the world's true adversity (``adversity``, ``onset``: the factual history), keeps
    ``onset_no_care`` (the same draws had the child never entered care: common random numbers,
    so it differs only after entry) and the review assessments (``rev_*``). Returns the entry
    day (a day after the window for children who never enter). ``exp1`` is 0 for a child who
    enters on the referral day."""
    ar, e = sc.after_referral, sc.effects
    has = np.flatnonzero(w.ref1 >= 0)
    m = has.size
    ref1, close1, ref2, close2 = (a[has] for a in (w.ref1, w.close1, w.ref2, w.close2))
    limit = np.minimum(w.fu_end[has], add_years(w.birth[has], 18))
    onset = w.onset[has].copy()
    onset0 = onset.copy()
    fr = w.family_risk[has]
    known = w.recorded1[has].copy()
    n_new = np.zeros(m, np.int64)
    cp_new = np.zeros(m, bool)
    on_plan = w.cp1[has] > 0
    cum = np.zeros(m)
    entry = np.full(m, np.iinfo(np.int64).max // 4)
    entered = np.zeros(m, bool)
    interval_years = REVIEW_DAYS / YEAR
    rev_p, rev_d, rev_known, rev_cp, rev_ep = [], [], [], [], []
    for k in range(MAX_REVIEWS):
        t0 = ref1 + k * REVIEW_DAYS
        # entry to care during (t0, t0 + 1 year] at this year's hazard
        rate = rate0[has] * np.exp(
            ar.care_log_hr_new_factor * n_new + ar.care_log_hr_cp_plan * cp_new
        )
        reach = ~entered & (cum + rate * interval_years >= exp1[has])  # exp1 0: on referral
        entry = np.where(reach, t0 + ((exp1[has] - cum) / rate * YEAR).astype(np.int64), entry)
        cum = cum + rate * interval_years
        # new adversity during the year: common random numbers for with and without care
        in_care = entry <= t0  # entered care before this year began
        u = rng.random((m, 5))
        when = t0[:, None] + (rng.random((m, 5)) * REVIEW_DAYS).astype(np.int64)
        base = (
            ar.new_adversity_rate
            * interval_years
            * np.exp(ar.new_adversity_log_hr_family_risk * fr)
        )
        p1 = 1 - np.exp(-base * np.exp(e.new_adversity_log_hr_looked_after * in_care))
        p0 = 1 - np.exp(-base)
        ok = when < limit[:, None]
        for o, p in ((onset, p1), (onset0, p0)):
            free = (o < 0) | (o > when)
            new = free & ok & (u < p[:, None])
            o[new] = when[new]
        entered |= reach
        # the review at the end of the year, if an episode of need is open then
        t1 = t0 + REVIEW_DAYS
        ep1 = (t1 >= ref1) & (t1 < close1)
        ep2 = (ref2 >= 0) & (t1 >= ref2) & (t1 < close2)
        review = (ep1 | ep2) & (t1 < limit)
        known |= w.recorded2[has] & ep2[:, None]
        present = (onset >= 0) & (onset <= t1[:, None])
        rec = (
            present & ~known & review[:, None] & (rng.random((m, 5)) < ar.reassessment_sensitivity)
        )
        newly = rec.sum(axis=1)
        known |= rec
        n_new += newly
        start_plan = (
            ~on_plan
            & (newly > 0)
            & (rng.random(m) < 1 - (1 - ar.cp_plan_prob_per_new_factor) ** newly)
        )
        on_plan |= start_plan
        cp_new |= start_plan
        changed = np.flatnonzero(newly > 0)
        if changed.size:
            rev_p.append(has[changed])
            rev_d.append(t1[changed])
            rev_known.append(known[changed].copy())
            # the plan's category: physical abuse if recorded, else neglect (codes as cp1)
            cat = np.where(known[changed, 0], 2, 1)
            rev_cp.append(np.where(start_plan[changed], cat, -1))
            rev_ep.append(np.where(ep2[changed], 1, 0))
    w.onset = w.onset.copy()
    w.onset[has] = onset
    w.adversity = w.onset >= 0
    w.onset_no_care = w.onset.copy()
    w.onset_no_care[has] = onset0
    if rev_p:
        p, d = np.concatenate(rev_p), np.concatenate(rev_d)
        order = np.lexsort((d, p))
        w.rev_person, w.rev_day = p[order], d[order]
        w.rev_known = np.concatenate(rev_known)[order]
        w.rev_cp_start = np.concatenate(rev_cp)[order]
        w.rev_episode = np.concatenate(rev_ep)[order]
    out = np.full(w.n, np.iinfo(np.int64).max // 4)
    out[has] = entry
    return out


def _placements(w: World, sc: Scenario, rng: np.random.Generator) -> None:
    """Split periods into episodes at placement moves (P) and a legal-status change (L).

    A placement move on the day of entry gives a zero-length first episode (start = end), as
    in real returns.
    """
    m = w.care_person.size
    dur = np.maximum(w.care_end - w.care_start, 1)
    n_moves = np.minimum(rng.poisson(sc.social_services.placement_move_rate * dur / YEAR), 12)
    day0 = rng.random(m) < 0.03  # a placement move on the day of entry
    n_moves = np.where(day0, np.maximum(n_moves, 1), n_moves)
    k = n_moves + 1
    idx = np.repeat(np.arange(m), k)
    seq = np.arange(idx.size) - np.repeat(np.cumsum(k) - k, k)
    off = np.maximum((rng.random(idx.size) * dur[idx]).astype(np.int64), 1)
    off = np.where(seq == 0, 0, off)
    off = np.where((seq == 1) & day0[idx], 0, off)
    kind = np.where(seq == 0, "S", "P").astype(object)
    legal_change = w.care_long_plan & (dur > 150)
    lidx = np.flatnonzero(legal_change)
    l_off = np.full(m, np.iinfo(np.int64).max)
    l_off[lidx] = np.minimum(120, dur[lidx] // 2)
    idx = np.r_[idx, lidx]
    off = np.r_[off, l_off[lidx]]
    kind = np.r_[kind, np.full(lidx.size, "L", dtype=object)]
    order = np.lexsort((kind == "L", kind != "S", off, idx))
    idx, off, kind = idx[order], off[order], kind[order]
    start = w.care_start[idx] + off
    nxt_same = np.r_[idx[1:] == idx[:-1], False]
    end = np.where(nxt_same, np.r_[start[1:], 0], w.care_end[idx])
    codes = np.array(["U4", "U6", "U1", "U3", "K2", "R1", "P1", "H5", "Z1"], dtype=object)
    pp = np.array([0.3, 0.35, 0.06, 0.08, 0.06, 0.03, 0.06, 0.03, 0.03])
    placement = rng.choice(codes, idx.size, p=pp)
    prev = np.r_[placement[:1], placement[:-1]]
    placement = np.where(kind == "L", prev, placement)  # a legal change keeps the placement
    legal = np.where(w.care_long_plan[idx], "C1", "V2").astype(object)
    legal = np.where(off >= l_off[idx], "C2", legal)
    last = ~nxt_same
    reason_end = np.where(last, w.care_end_reason[idx], "X1").astype(object)
    is_open = last & w.care_open[idx]
    reason_end[is_open] = None
    w.ep_person, w.ep_period = w.care_person[idx], w.care_period[idx]
    w.ep_start, w.ep_end = start, np.where(is_open, -1, end)
    w.ep_reason_start, w.ep_reason_end = kind, reason_end
    w.ep_legal, w.ep_placement = legal, placement


def _education_exposure(w: World) -> None:
    """Care days and placement moves before 1 September of the KS4 year (year 11); first
    entry; true adversities begun before first entry (the effect modifier)."""
    ay0 = academic_year_of_birth(w.birth)
    w.ks4_start = sept1(ay0 + 15)
    cut = w.ks4_start[w.care_person]
    days = np.clip(np.minimum(w.care_end, cut) - w.care_start, 0, None)
    w.care_days_before_ks4 = np.bincount(w.care_person, weights=days, minlength=w.n).astype(
        np.int64
    )
    w.ks2_start = sept1(ay0 + 11)  # year 6 (reception is the year starting at ay0 + 5)
    cut2 = w.ks2_start[w.care_person]
    days2 = np.clip(np.minimum(w.care_end, cut2) - w.care_start, 0, None)
    w.care_days_before_ks2 = np.bincount(w.care_person, weights=days2, minlength=w.n).astype(
        np.int64
    )
    moves = (np.isin(w.ep_reason_start, ["P", "T"])) & (w.ep_start < w.ks4_start[w.ep_person])
    w.moves_before_ks4 = np.bincount(w.ep_person, weights=moves, minlength=w.n).astype(np.int64)
    w.first_entry = np.full(w.n, -1, np.int64)
    firsts = np.r_[True, w.care_person[1:] != w.care_person[:-1]] if w.care_person.size else []
    w.first_entry[w.care_person[firsts]] = w.care_start[firsts]
    entered = w.first_entry >= 0
    w.pre_care_adversity = w.adversity & (w.onset < w.first_entry[:, None]) & entered[:, None]


KS4_POINTS_RANGE = (0.0, 90.0)  # the released capped points score is the latent one clipped


def observed_ks4(latent: np.ndarray) -> np.ndarray:
    """The KS4 capped points score as released: the latent score clipped to its range."""
    return np.clip(latent, *KS4_POINTS_RANGE)


def education(w: World, sc: Scenario, rng: np.random.Generator) -> None:
    """Latent KS4 potential outcomes and their care effects.

    Y(0) is the score had the child never entered care (true adversity as it would then have
    been: ``onset_no_care``); the effect of the child's own care is the direct effect (by
    length, placement moves, and the scenario's modifiers: pre-care adversity, years in care,
    age at entry) plus the KS4 cost of any new adversity that care prevented or caused."""
    o, e = sc.outcomes, sc.effects
    n = w.n
    before = w.ks4_start[:, None]
    adv16 = ((w.onset >= 0) & (w.onset < before)).sum(axis=1)
    adv16_0 = ((w.onset_no_care >= 0) & (w.onset_no_care < before)).sum(axis=1)
    y0 = (
        o.ks4_intercept
        + o.ks4_per_deprivation_decile * (10 - w.decile)
        + o.ks4_per_adversity * adv16_0
        + o.ks4_family_risk * np.maximum(w.family_risk, -1)
        + 3.0 * ~w.sex_male
        - 8.0 * w.disability
        + rng.normal(0, o.ks4_noise_sd, n)
    )
    days = w.care_days_before_ks4
    long_ = days >= 365
    short = (days > 0) & ~long_
    n_pre = w.pre_care_adversity.sum(axis=1)
    age_entry = np.where(w.first_entry >= 0, (w.first_entry - w.birth) / YEAR, 10.0)
    mediated = o.ks4_per_adversity * (adv16 - adv16_0)
    direct = (
        e.ks4_long_care * long_
        + e.ks4_short_care * short
        + e.ks4_per_placement_move * w.moves_before_ks4
        + (days > 0)
        * (
            e.ks4_care_x_adversity * n_pre
            + e.ks4_care_per_year_in_care * days / YEAR
            + e.ks4_care_per_year_age_at_entry * (age_entry - 10.0)
        )
    )
    w.ks4_y0 = y0
    w.ks4_effect = direct + mediated
    # KS2 expected standard (a flag): probability expit((Y2(0) - 40)/7) without care, where
    # Y2(0) is Y(0) less the KS4 cost of adversities begun since 1 September of year 6 (KS2
    # sees only the adversity begun before its year, the date care before KS2 is counted to);
    # being looked after before year 6 shifts its log odds by ks2_log_or_care
    before_ks2 = w.ks2_start[:, None]
    adv_ks2_0 = ((w.onset_no_care >= 0) & (w.onset_no_care < before_ks2)).sum(axis=1)
    ks2_logit0 = (y0 - o.ks4_per_adversity * (adv16_0 - adv_ks2_0) - 40.0) / 7.0
    w.ks2_p0 = expit(ks2_logit0)
    w.ks2_p1 = expit(ks2_logit0 + e.ks2_log_or_care * (w.care_days_before_ks2 > 0))
    logit0 = (y0 - 52.0) / 5.0
    w.level2_p0 = expit(logit0)
    w.level2_p1 = expit(
        logit0
        + mediated / 5.0
        + e.level2_log_or_long * long_
        + e.level2_log_or_short * short
        + e.level2_log_or_care_x_adversity * n_pre * (days > 0)
    )


def care_log_hr(w: World, sc: Scenario, gamma: float) -> np.ndarray:
    """Each person's log hazard ratio of being looked after at 0 years since first entry:
    the kind's ``gamma`` + ``log_hr_care_x_adversity`` x true adversities begun before entry."""
    return gamma + sc.effects.log_hr_care_x_adversity * w.pre_care_adversity.sum(axis=1)


CARE_AFFECTED_KINDS = ("self_harm", "emergency", "mental_health")
MAX_YEARS_SINCE_ENTRY = 4  # effects by years since entry: 0, 1, 2, 3, 4 and more
CHUNK_ROWS = 1 << 20  # rows (health-event segments, pupil-years) computed at once


def chunks(m: int) -> Iterator[slice]:
    """Consecutive slices of ``CHUNK_ROWS`` covering rows 0 to ``m``.

    A value derived from ten or twenty million rows (1M children) is computed a chunk at a
    time into its result, so each temporary is a few MB that the C heap keeps and reuses
    (``synthetic_data/heap.py``) instead of 80-160 MB faulted in afresh, which on the
    benchmark VM costs system time. A random draw taken chunk after chunk from one generator
    is the same as one draw over all rows (numpy draws element by element), as long as no
    other draw from that generator comes in between."""
    return (slice(lo, min(lo + CHUNK_ROWS, m)) for lo in range(0, m, CHUNK_ROWS))


def adversities_begun(onset: np.ndarray, person: np.ndarray, day: np.ndarray) -> np.ndarray:
    """How many of each row's person's adversities (``onset``: person x adversity, -1 for
    none) had begun by the row's day."""
    n = np.zeros(person.size, np.int8)
    for k in range(onset.shape[1]):
        o = onset[person, k]
        n += (o >= 0) & (o <= day)
    return n


def health_events(w: World, sc: Scenario, rng: np.random.Generator) -> None:
    """Health events as Poisson processes over segments of constant covariates.

    Segments split follow-up at each birthday, each adversity onset and each care boundary, so
    hazards are exactly piecewise constant: h = base(age) * exp(beta . true adversity(t) +
    deprivation + gamma * looked_after(t)).
    """
    o, e = sc.outcomes, sc.effects
    n = w.n
    bdays = anniversaries(w.birth, list(range(1, 18)))
    care_pts = np.full((n, 4), -1, np.int64)
    first = np.searchsorted(w.care_person, np.arange(n), side="left")
    cnt = np.bincount(w.care_person, minlength=n)
    for j in range(2):
        sel = cnt > j
        pos = first[sel] + j
        care_pts[sel, 2 * j] = w.care_start[pos]
        care_pts[sel, 2 * j + 1] = w.care_end[pos]
    slope = e.log_hr_care_per_year_since_entry
    entry_years = (
        anniversaries(np.where(w.first_entry >= 0, w.first_entry, w.birth), list(range(1, 5)))
        if slope
        else np.zeros((n, 0), np.int64)
    )  # split at entry anniversaries only when the care effect changes with them
    if slope:
        entry_years[w.first_entry < 0] = -1
    # the segment arrays (about 20 million at 1M children) in the smallest types that hold
    # them exactly: days and persons fit 32 bits, ages and counts 8 (same values, same draws)
    pts = np.concatenate(
        [w.fu_start[:, None], bdays, care_pts, w.onset[:, :4], entry_years, w.fu_end[:, None]],
        axis=1,
        dtype=np.int32,
        casting="same_kind",
    )
    fu_start, fu_end = w.fu_start.astype(np.int32), w.fu_end.astype(np.int32)
    np.clip(pts, fu_start[:, None], fu_end[:, None], out=pts)  # in place: 120 MB at 1M
    pts.sort(axis=1)
    a, b = pts[:, :-1], pts[:, 1:]
    valid = b > a
    person = np.broadcast_to(np.arange(n, dtype=np.int32)[:, None], a.shape)[valid]
    s, t = a[valid], b[valid]
    del pts, a, b, valid, bdays, entry_years
    age = np.empty(s.size, np.int8)
    in_care = np.empty(s.size, bool)  # looked after at mid-segment
    n_adv = np.empty(s.size, np.int8)  # adversities (of the first four) begun by mid-segment
    base_lp = np.empty(s.size)  # log hazard ratio from adversity and deprivation
    years = np.empty(s.size)  # segment length
    # care's log HR beyond gamma: pre-care adversity and years since first entry (0-4), an
    # array only when the scenario modifies the effect
    modified = bool(e.log_hr_care_x_adversity or slope)
    care_mod = np.zeros(s.size if modified else 0)
    n_pre = w.pre_care_adversity.sum(axis=1)  # per person
    for c in chunks(s.size):
        pers, mid = person[c], (s[c] + t[c]) // 2
        age[c] = ((mid - w.birth[pers]) / YEAR).astype(np.int8)
        looked_after = np.zeros(mid.size, bool)
        for j in range(2):
            cs, ce = care_pts[pers, 2 * j], care_pts[pers, 2 * j + 1]
            looked_after |= (cs >= 0) & (mid >= cs) & (mid < ce)
        in_care[c] = looked_after
        n_adv[c] = adversities_begun(w.onset[:, :4], pers, mid)
        base_lp[c] = o.log_hr_per_adversity * n_adv[c] + o.log_hr_per_deprivation_decile * (
            10 - w.decile[pers]
        )
        years[c] = (t[c] - s[c]) / YEAR
        mod: np.ndarray | float = 0.0
        if e.log_hr_care_x_adversity:
            mod = e.log_hr_care_x_adversity * n_pre[pers]
        if slope:
            since = np.clip((mid - w.first_entry[pers]) // YEAR, 0, MAX_YEARS_SINCE_ENTRY)
            mod = mod + slope * since
        if modified:
            care_mod[c] = mod
    girl = ~w.sex_male[person]
    del care_pts  # the segment arrays remain

    def care_lhr(gamma: float, c: slice) -> np.ndarray | float:
        """Care's log hazard ratio in segments ``c``."""
        return gamma + care_mod[c] if modified else gamma + 0.0

    def profile(name: str, c: slice) -> tuple[np.ndarray, np.ndarray | float, np.ndarray | float]:
        """Segments ``c``'s baseline rate, log hazard ratio from covariates, and care's log
        hazard ratio (0 for a kind care does not affect)."""
        ag, nadv, pers, lp = age[c], n_adv[c], person[c], base_lp[c]
        if name == "self_harm":
            rate = o.self_harm_base_rate * np.where(ag >= 12, 1.0, np.where(ag >= 10, 0.2, 0.0))
            rate = rate * np.where(girl[c], 1.6, 0.6)
            return rate, lp + 0.3 * nadv, care_lhr(e.log_hr_self_harm, c)
        if name == "emergency":
            rate = o.emergency_base_rate * np.where(ag == 0, 3.0, np.where(ag < 5, 1.5, 1.0))
            return rate, lp, care_lhr(e.log_hr_emergency_admission, c)
        if name == "mental_health":
            rate = o.mental_health_base_rate * np.where(ag >= 12, 1.0, np.where(ag >= 6, 0.4, 0.0))
            return rate, lp + 0.2 * nadv, care_lhr(e.log_hr_mental_health_admission, c)
        if name == "appendicitis":
            return o.appendicitis_rate * (ag >= 4), 0.0, 0.0
        if name == "ed_injury":
            return o.ed_injury_rate * np.ones(ag.size), lp, 0.0
        if name == "dental_caries":  # negative control: care's causes, no care effect
            la_eff = w.la_care_effect[w.la_at_referral][pers]  # authority at referral
            lp = lp + o.dental_caries_log_hr_per_la_propensity * la_eff
            return o.dental_caries_rate * (ag >= 2), lp, 0.0
        return o.elective_rate * np.ones(ag.size), 0.0, 0.0

    # rates a chunk of segments at a time (about 20 million segments at 1M children; see
    # ``chunks``): the Poisson draws of a kind follow each other in segment order
    ev_p, ev_d, ev_k = [], [], []
    for k, name in enumerate(EVENT_KINDS):
        affected = name in CARE_AFFECTED_KINDS
        segs = []
        for c in chunks(s.size):
            base, lp, care = profile(name, c)
            rate = base * np.exp(lp + (care * in_care[c] if affected else 0.0))
            count = rng.poisson(rate * years[c])
            segs.append(np.repeat(np.arange(c.start, c.stop), count))
        seg = np.concatenate(segs)
        when = s[seg] + (rng.random(seg.size) * (t[seg] - s[seg])).astype(np.int64)
        ev_p.append(person[seg])
        ev_d.append(when)
        ev_k.append(np.full(seg.size, k))
    p, d, k_ = np.concatenate(ev_p), np.concatenate(ev_d), np.concatenate(ev_k)
    order = np.lexsort((k_, d, p))
    w.ev_person, w.ev_day, w.ev_kind = p[order].astype(np.int64), d[order], k_[order]


def _process_rngs(seed: int) -> list[np.random.Generator]:
    """One generator per causal process, each from its own child seed."""
    seeds = np.random.SeedSequence(seed).spawn(6)  # the first five as before the sixth
    return [np.random.default_rng(s) for s in seeds]


def process_rng(seed: int, process: int) -> np.random.Generator:
    """A fresh generator of one causal process (the same stream ``build_world`` gives it): 2 is
    care entry, 5 what happens after the first referral. Replaying one re-draws exactly the
    world's numbers (synthetic_data/entry_trials.py)."""
    return _process_rngs(seed)[process]


def build_world(n: int, sc: Scenario, seed: int, *, with_health: bool = True) -> World:
    """Run every causal process in order, each from its own child seed. ``with_health=False``
    stops before the health events (``add_health_events`` adds the same events later)."""
    rngs = _process_rngs(seed)
    w = build_people(n, sc, rngs[0])
    log.info("people and places: %d children", n)
    social_services(w, sc, rngs[1])
    w.onset_no_care = w.onset
    w.onset_before_care = w.onset  # after_referral replaces w.onset, never changes this array
    care(w, sc, rngs[2], rngs[5])
    log.info(
        "social services: %d children in need, %d looked after",
        int((w.ref1 >= 0).sum()),
        int(np.unique(w.care_person).size),
    )
    education(w, sc, rngs[3])
    if with_health:
        add_health_events(w, sc, seed)
    return w


def add_health_events(w: World, sc: Scenario, seed: int) -> None:
    """The health events of a world built with ``with_health=False`` (they read only what the
    earlier processes wrote, from their own child seed, so they are the same whenever they
    are drawn)."""
    health_events(w, sc, _process_rngs(seed)[4])
    log.info("health: %d events", w.ev_person.size)
