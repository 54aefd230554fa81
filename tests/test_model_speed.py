"""The model stage's speed-ups change no estimate: each is checked against the slower path it
replaces (issue #20, the model stage at 1,000,000 children)."""

from __future__ import annotations

import gc
import itertools
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.estimators import proportional_hazards_check
from models.gmethods import split_at_entry_anniversaries
from models.survival import (
    PiecewisePoissonFitter,
    TimeVaryingCoxFitter,
    age_month_intervals,
    merge_unexposed_intervals,
)


def _person_time(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Day-scale person_time as cohort.person_time has it: care from a random day to another,
    every child's follow-up also cut at a few days where nothing the survival models see
    changes (as 1 September and later records cut it), the first event ending follow-up."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(2, 14, n)
    x = rng.binomial(1, 0.4, n)
    la_code = rng.choice(["E1", "E2", "E3"], n)
    entry = np.where(rng.random(n) < 0.3, rng.integers(30, 2000, n), -1)
    rows = []
    for i in range(n):
        end = int((18 - age[i]) * 365.25)
        cuts = set(rng.integers(1, end, 6).tolist())
        leave = -1
        if entry[i] > 0:
            leave = entry[i] + int(rng.integers(30, 1500))
            cuts |= {int(entry[i]), leave}
        bounds = sorted({0, end, *(c for c in cuts if 0 < c < end)})
        rate = 0.0004 * np.exp(0.5 * x[i])
        for a, b in itertools.pairwise(bounds):
            la = int(entry[i] > 0 and entry[i] <= a < leave)
            t_ev = rng.exponential(1 / (rate * (1.8 if la else 1.0)))
            if t_ev < b - a:
                rows.append((f"p{i:05d}", "self_harm", a, a + int(t_ev) + 1, la, 1))
                break
            rows.append((f"p{i:05d}", "self_harm", a, b, la, 0))
    pt = pd.DataFrame(
        rows, columns=["person_key", "outcome", "start_day", "stop_day", "looked_after", "event"]
    )
    index = pd.Timestamp("2010-01-01")
    kids = pd.DataFrame(
        {
            "person_key": [f"p{i:05d}" for i in range(n)],
            "age_at_index": age,
            "x": x.astype(float),
            "la_code": la_code,
            "index_date": index,
            "care_entry_date": [
                index + pd.Timedelta(days=int(d)) if d > 0 else pd.NaT for d in entry
            ],
        }
    )
    return pt, kids


def _survival_rows(pt: pd.DataFrame, kids: pd.DataFrame) -> pd.DataFrame:
    rows = age_month_intervals(pt, kids)
    return rows.drop(columns=["age_at_index"]).merge(
        kids[["person_key", "x", "la_code"]], on="person_key"
    )


def test_merging_unexposed_intervals_changes_no_survival_fit() -> None:
    pt, kids = _person_time(1500, 11)
    merged = merge_unexposed_intervals(pt)
    assert len(merged) < 0.5 * len(pt)  # the point of it
    # every child's person-time, events and looked-after days are the same
    for frame in (pt, merged):
        frame["days"] = frame["stop_day"] - frame["start_day"]
    for col in ("days", "event"):
        assert (
            pt.groupby(["person_key", "looked_after"])[col].sum()
            == merged.groupby(["person_key", "looked_after"])[col].sum()
        ).all()
    full, short = _survival_rows(pt, kids), _survival_rows(merged, kids)
    for fit in (
        lambda r: TimeVaryingCoxFitter().fit(r, ["x"], strata=["la_code"]),
        lambda r: TimeVaryingCoxFitter(robust=True).fit(r, ["x"], strata=["la_code"]),
        lambda r: PiecewisePoissonFitter().fit(r, ["x"]),
    ):
        a, b = fit(full), fit(short)
        assert np.isclose(a.hazard_ratio_, b.hazard_ratio_, rtol=1e-9, atol=0)
        assert np.allclose(a.ci_, b.ci_, rtol=1e-9, atol=0)
    # looked-after rows are kept as they were: the PH check's looked_after x log age is too
    p_full = proportional_hazards_check(full, ["x"], "self_harm", ["la_code"])["value"]
    p_short = proportional_hazards_check(short, ["x"], "self_harm", ["la_code"])["value"]
    assert np.isclose(p_full, p_short, rtol=1e-7)
    # and so is the split by years since entry
    terms = [f"looked_after_{j}" for j in range(5)]
    split_full = _survival_rows(split_at_entry_anniversaries(pt, kids), kids)
    split_short = _survival_rows(split_at_entry_anniversaries(merged, kids), kids)
    a = TimeVaryingCoxFitter().fit(split_full, [*terms[1:], "x"], exposure=terms[0])
    b = TimeVaryingCoxFitter().fit(split_short, [*terms[1:], "x"], exposure=terms[0])
    assert np.allclose(a.summary["coef"], b.summary["coef"], rtol=1e-8, atol=1e-12)
    assert np.allclose(a.summary["se(coef)"], b.summary["se(coef)"], rtol=1e-8)


def test_merging_never_moves_an_event_or_bridges_a_gap() -> None:
    pt = pd.DataFrame(
        {
            "person_key": ["a", "a", "a", "a", "b", "b", "a"],
            "outcome": "o",
            "start_day": [0, 10, 20, 35, 0, 5, 50],
            "stop_day": [10, 20, 30, 40, 5, 9, 60],
            "looked_after": [0, 0, 0, 0, 0, 1, 0],
            "event": [0, 1, 0, 0, 0, 0, 0],
        }
    )
    m = merge_unexposed_intervals(pt)
    # (0,10] and (10,20] merge and keep the event at 20; (20,30] follows an event; (35,40]
    # follows a gap; b's looked-after row stays; a's last row is not next to its others
    assert m[["person_key", "start_day", "stop_day", "event"]].values.tolist() == [
        ["a", 0, 20, 1],
        ["a", 20, 30, 0],
        ["a", 35, 40, 0],
        ["b", 0, 5, 0],
        ["b", 5, 9, 0],
        ["a", 50, 60, 0],
    ]


def test_vectorised_gee_pinned_to_statsmodels() -> None:
    import statsmodels.api as sm

    from models.effects import fit_exchangeable_gee

    rng = np.random.default_rng(5)
    n_children = 800
    size = rng.integers(1, 10, n_children)
    child = np.repeat(np.arange(n_children), size)
    rng.shuffle(child)  # rows of a child need not be together
    u = rng.normal(0, 0.05, n_children)[child]  # the within-child correlation
    x = np.c_[np.ones(len(child)), rng.binomial(1, 0.2, len(child)), rng.normal(size=len(child))]
    y = 0.08 + 0.03 * x[:, 1] + 0.01 * x[:, 2] + u + rng.normal(0, 0.04, len(child))
    groups = np.array([f"k{c:04d}" for c in child])
    ref = sm.GEE(
        y, x, groups=groups, family=sm.families.Gaussian(), cov_struct=sm.cov_struct.Exchangeable()
    ).fit()
    mine = fit_exchangeable_gee(y, x, groups)
    assert mine.converged
    assert 0.3 < mine.rho < 0.8
    assert np.isclose(mine.rho, ref.cov_struct.dep_params, rtol=1e-9)
    assert np.allclose(mine.params, ref.params, rtol=1e-10, atol=0)
    assert np.allclose(mine.bse, ref.bse, rtol=1e-9, atol=0)
    assert np.allclose(mine.pvalues, ref.pvalues, rtol=1e-7, atol=1e-300)


def _confounded(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    x1 = rng.binomial(1, 0.3, n)
    x2 = rng.normal(0, 1, n)
    x3 = rng.binomial(1, 0.1, n)
    t = rng.binomial(1, 1 / (1 + np.exp(-(-1.0 + 1.2 * x1 + 0.8 * x2 + 0.5 * x3))))
    y = 30 - 8 * x1 - 4 * x2 + 3 * x3 + 2.0 * t + rng.normal(0, 8, n)
    return y, t, pd.DataFrame({"x1": x1.astype(float), "x2": x2, "x3": x3.astype(float)})


def test_a_bootstrap_replicate_on_frequency_weights_is_the_replicate_on_repeated_rows() -> None:
    """bootstrap_weighting_se fits each replicate on the children drawn, weighted by how often
    each was drawn: the weights, the IPW and AIPW replicate estimates are those of refitting on
    the drawn rows repeated (balancing and likelihood propensities, truncated weights, a
    continuous and a binary outcome)."""
    from models.effects import _aipw_point, _untreated_prediction, ipw_point
    from models.propensity import PropensityScoreFitter, standardise

    y, t, x = _confounded(2000, 7)
    yb = (y > 28).astype(float)
    z = standardise(
        x.to_numpy(float), x.to_numpy(float).mean(axis=0), x.to_numpy(float).std(axis=0)
    )
    rng = np.random.default_rng(1)
    fitters = [
        PropensityScoreFitter("ATT", truncate=None, method="balancing").fit(x, t),
        PropensityScoreFitter("ATT", truncate=None, method="likelihood").fit(x, t),
        PropensityScoreFitter("ATT", truncate=99.0, method="likelihood").fit(x, t),
    ]
    for ps in fitters:
        refit = ps.bootstrap_refitter(x, t)
        for _ in range(3):
            drawn = np.r_[
                rng.choice(np.flatnonzero(t == 1), int(t.sum())),
                rng.choice(np.flatnonzero(t == 0), int((1 - t).sum())),
            ]
            count = np.bincount(drawn, minlength=len(t))
            rows = np.flatnonzero(count)
            c = count[rows].astype(float)
            w_rep, w_freq = refit(drawn), refit(rows, c)
            summed = np.bincount(np.searchsorted(rows, drawn), w_rep, len(rows))
            assert np.allclose(w_freq, summed, rtol=1e-7, atol=1e-12), ps.method_
            for out, binary in ((y, False), (yb, True)):
                a = ipw_point(out[drawn], t[drawn], w_rep)
                b = ipw_point(out[rows], t[rows], w_freq, c)
                assert np.isclose(a, b, rtol=1e-9, atol=1e-9)
                m_rep = _untreated_prediction(out[drawn], t[drawn], z[drawn], binary)
                m_freq = _untreated_prediction(out[rows], t[rows], z[rows], binary, counts=c)
                a = _aipw_point(out[drawn], t[drawn], m_rep, w_rep)
                b = _aipw_point(out[rows], t[rows], m_freq, w_freq, c)
                assert np.isclose(a, b, rtol=1e-7, atol=1e-7), (ps.method_, binary, a, b)


def test_every_analysis_is_fitted_on_one_thread_and_ordinary_pages(
    monkeypatch: object,
) -> None:
    """`run_analyses` fits each analysis with every BLAS and OpenMP library limited to one
    thread (on two BLAS threads a 1M-child KS4 analysis took twice the wall time and 2.5 times
    the CPU, same estimates; two processes use the cores instead) and numpy's huge-page madvise
    off (models/runtime.py), all restored afterwards; in its own process and in the forked
    ones (``processes``). Shown failing with the `with` removed from run_analyses, and from
    forked_map's tasks, and with only BLAS limited (OpenMP then has two threads)."""
    import sklearn.ensemble  # noqa: F401  (loads the OpenMP runtime its gradient boosting uses)
    from threadpoolctl import threadpool_info, threadpool_limits

    from models.estimators import ESTIMATORS, AnalysisEstimator, CohortData, diagnostic
    from models.run import run_analyses
    from models.settings import ModelSettings
    from schemas.analyses import Analysis

    def threads(api: str) -> list[int]:
        return [int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == api]

    def madvise_hugepage() -> bool:
        from numpy._core.multiarray import _set_madvise_hugepage

        on = _set_madvise_hugepage(False)  # returns the setting it replaces
        _set_madvise_hugepage(on)
        return bool(on)

    class ThreadProbe(AnalysisEstimator):
        # reports through its diagnostics: a forked worker's own lists never come back
        name = "thread_probe"

        def _fit(self, cohort: CohortData) -> None:
            self.diagnostics_ += [
                diagnostic(self.analysis.name, "blas_threads", max(threads("blas"))),
                diagnostic(self.analysis.name, "openmp_threads", max(threads("openmp"))),
                diagnostic(self.analysis.name, "huge_pages", float(madvise_hugepage())),
            ]

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setitem(ESTIMATORS, "thread_probe", ThreadProbe)
    kids = pd.DataFrame(
        {"person_key": ["a", "b"], "group": ["CLA", "NLA"], "ks4_score": [1.0, 2.0]}
    )
    cohort = CohortData(kids, pd.DataFrame({"outcome": []}), pd.DataFrame())
    probe = Analysis(name="probe", label="probe", estimator="thread_probe", outcomes=("ks4_score",))
    probes = [probe, probe.model_copy(update={"name": "probe_2"})]
    for processes in (1, 2):
        with threadpool_limits(2):  # as on a machine of two or more cores
            before = threads("blas") + threads("openmp")
            fitted = run_analyses(cohort, probes, ModelSettings(processes=processes))
            after = threads("blas") + threads("openmp")
        assert threads("openmp") and before and set(before) == {2}
        seen = {(d["analysis"], d["item"]): d["value"] for d in fitted.diagnostics}
        assert seen == {
            (name, item): value
            for name in ("probe", "probe_2")
            for item, value in [("blas_threads", 1), ("openmp_threads", 1), ("huge_pages", 0.0)]
        }, processes
        assert after == before
        assert madvise_hugepage() is True


_TWO_PROCESSES = """
import sys
import pandas as pd
from ground.run_layout import RunLayout
from models.estimators import CohortData, ExposureEffect
from models.run import load_cohort, run_analyses
from models.settings import ModelSettings
from schemas.analyses import DEFAULT_ANALYSES

names = ["ks4_cla_vs_nla", "ks4_long_vs_nla", "absence_looked_after_year", "time_to_event",
         "hazard_by_years_since_entry", "ks4_cla_vs_nla_high_quality_links"]
analyses = [a for a in DEFAULT_ANALYSES if a.name in names]
assert len(analyses) == len(names)
cohort_tables = load_cohort(RunLayout.at(sys.argv[1]))

def fit(processes):
    s = ModelSettings(processes=processes, bootstrap_replicates=0)
    got = run_analyses(CohortData(*[t.copy() for t in cohort_tables]), analyses, s)
    balance = pd.concat(got.balance, ignore_index=True) if got.balance else pd.DataFrame()
    est = got.estimates.assign(analysis=got.row_analysis)
    return est, pd.DataFrame(got.diagnostics), balance

one, two = fit(1), fit(2)
assert len(one[0]) > 20 and len(one[1]) > 10
for a, b in zip(one, two, strict=True):
    pd.testing.assert_frame_equal(a, b)
# the planted error: without `shares` the second contrast chooses its design again
ExposureEffect.shares = None
unshared = fit(2)
print("same" if one[1].equals(unshared[1]) else "planted error seen")
"""


def test_analyses_fitted_in_two_processes_give_the_same_results_as_in_one(
    full_run: Path,
) -> None:
    """The declared analyses that share a computed value (the KS4 contrasts' outcome design,
    the survival models' merged person-time) and some that share none, fitted by one process
    and by two forked ones (``ModelSettings.processes``): the same estimates, diagnostics and
    balance tables, in the same order. Shown failing when the KS4 contrasts do not declare what
    they share (each process then chooses the design again and reports it twice). Run in a
    fresh process, as the stage is, so that what this pytest worker holds plays no part."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, "-c", _TWO_PROCESSES, str(full_run)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(root)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-3:] == ["planted", "error", "seen"], r.stdout


def _collect_garbage(_: int) -> int:
    return gc.collect()


def _die(_: int) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_model_workers_never_collect_what_they_inherit() -> None:
    """A DuckDB connection left in a reference cycle by an earlier stage run in this process
    (as `make test-slow`'s coverage seeds run validation and linkage before the models) must
    not be freed by a forked worker's garbage collector: freed there, in a process without the
    connection's threads, it crashed the worker (a segmentation fault). Shown failing with
    forked_map's gc.collect / gc.freeze removed: the workers die and WorkerDied is raised."""
    import duckdb

    from models.runtime import forked_map

    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT range AS i FROM range(100000)")
    con.execute("SELECT sum(i) FROM t").fetchall()
    cycle: dict[str, object] = {"connection": con, "relation": con.sql("SELECT * FROM t")}
    cycle["self"] = cycle
    del con, cycle
    done = dict(forked_map(_collect_garbage, [1, 2, 3], 2))
    assert sorted(done) == [0, 1, 2]


def test_a_worker_that_dies_is_an_error_not_a_hang() -> None:
    """A worker killed (or crashed in native code) mid-fit raises WorkerDied naming the
    signal; the other worker is ended and nothing waits for the lost item."""
    from models.runtime import WorkerDied, forked_map

    with pytest.raises(WorkerDied, match="SIGKILL.*processes: 1"):
        list(forked_map(_die, [1, 2], 2))
