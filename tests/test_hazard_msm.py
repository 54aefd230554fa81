"""The IPW marginal structural model of the time-to-event outcomes as a declared analysis
(``hazard_msm``: models/gmethods.py, models/estimators.py, docs/gmethods.md section 3b).

* The cell fit is the row-level fit: a plain row-level weighted Poisson regression with a
  child-clustered sandwich, on person-time split by models.survival's own functions, gives the
  same hazard ratio and standard error (the truth check of the estimator itself is
  tests/test_gmethods.py::test_hazard_msm_finds_the_hazard_ratio_where_baseline_weights_do_not).
* The declared analysis writes its rows, diagnostics, release rows and report protocol in a
  whole run (the session's shared ``full_run``).
* The report's sentence reads the model's numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.gmethods import PERIOD_LEVELS, entry_weights, hazard_msm
from tests.test_gmethods import simulate_hazard

CONFOUNDERS = ("new_factors_recorded",)


def row_level_fit(
    person_time: pd.DataFrame, children: pd.DataFrame, baseline: pd.DataFrame
) -> tuple[float, float]:
    """The model :func:`hazard_msm` fits, written out row by row (the code it replaced): rows
    split by ``models.survival.age_month_intervals`` and ``split_at_age_years``, each row
    weighted by :meth:`EntryWeights.of_rows` (truncated at 0.1/99.9), a dense design, Newton's
    method, the sandwich summed per child. Returns (log hazard ratio, its SE)."""
    from models.survival import age_month_intervals, split_at_age_years

    ew = entry_weights(children, person_time, baseline, CONFOUNDERS)
    pos = pd.Series(np.arange(len(children)), index=children["person_key"])
    rows = person_time.assign(child=pos.loc[person_time["person_key"]].to_numpy())
    w = ew.of_rows(rows["child"].to_numpy(), rows["start_day"].to_numpy())
    w = np.clip(w, *np.percentile(w, [0.1, 99.9]))
    pieces = split_at_age_years(age_month_intervals(rows.assign(_w=w), children))
    age = pd.get_dummies(pieces["start"] // 12, prefix="age", drop_first=True, dtype=float)
    since = (pieces["start"] - 12 * pieces["age_at_index"]) // 12
    since = np.clip(since.to_numpy(), 0, PERIOD_LEVELS - 1)
    x = np.c_[
        np.ones(len(pieces)),
        pieces["looked_after"].to_numpy(float),
        age.to_numpy(),
        (since[:, None] == np.arange(1, PERIOD_LEVELS)[None, :]).astype(float),
        baseline.to_numpy(float)[pieces["child"].to_numpy()],
    ]
    x = x[:, np.r_[True, True, x[:, 2:].std(axis=0) > 0]]
    y, wt = pieces["event"].to_numpy(float), pieces["_w"].to_numpy()
    off = np.log((pieces["stop"] - pieces["start"]).to_numpy(float))
    b = np.zeros(x.shape[1])
    b[0] = np.log(np.sum(wt * y) / np.sum(wt * np.exp(off)))
    for _ in range(100):
        mu = np.exp(x @ b + off)
        step = np.linalg.solve((x * (wt * mu)[:, None]).T @ x, x.T @ (wt * (y - mu)))
        b += step
        if np.abs(step).max() < 1e-10:
            break
    mu = np.exp(x @ b + off)
    bread = np.linalg.inv((x * (wt * mu)[:, None]).T @ x)
    u = np.zeros((len(children), x.shape[1]))
    np.add.at(u, pieces["child"].to_numpy(), x * (wt * (y - mu))[:, None])
    return float(b[1]), float(np.sqrt((bread @ (u.T @ u) @ bread)[1, 1]))


@pytest.mark.parametrize("seed", [500, 501])
def test_the_cell_fit_is_the_row_level_fit(seed: int) -> None:
    """Summing the weighted events and person-time of identical design rows into cells loses
    nothing: the hazard ratio and the child-clustered SE equal the row-level ones (to 1e-6).
    Shown failing (2026-12-02) with the cells' events left unweighted (log HR off by 0.08 and
    0.15) and with an emptied month's event dropped instead of moved to the child's last row
    (off by 0.0015 and 0.006)."""
    children, pt = simulate_hazard(3_000, seed)
    log_hr, se = row_level_fit(pt, children, children[["b"]])
    r = hazard_msm(pt, children, children[["b"]], CONFOUNDERS, "self_harm")
    assert np.log(r.hazard_ratio) == pytest.approx(log_hr, abs=1e-6)
    assert r.log_hr_se == pytest.approx(se, rel=1e-6)


def test_declared_hazard_msm_rows_in_a_whole_run(full_run: Path) -> None:
    """The study config's ``hazard_msm`` analysis: a hazard ratio per declared outcome in
    results/estimates.csv, with the counts of the time-varying Cox rows (the same children and
    events, so disclosure control treats them as one group); the same rows released or
    withheld together with the Cox rows; the weights' diagnostics; the label and the protocol
    in the report."""
    from models.outputs import read_release_csv
    from schemas.analyses import DEFAULT_ANALYSES

    declared = next(a for a in DEFAULT_ANALYSES if a.estimator == "hazard_msm")
    est = pd.read_csv(full_run / "results" / "estimates.csv")
    msm = est[est["method"] == "msm_iptw_hazard"].set_index("outcome")
    assert set(msm.index) == set(declared.outcomes)
    assert (msm["contrast"] == "cla_vs_nla").all() and (msm["scale"] == "hazard_ratio").all()
    # an outcome with events while looked after and while not has an estimate and interval;
    # one without (the rarer outcomes in this small world) a blank and the reason
    both = (msm["events_exposed"] > 0) & (msm["events_unexposed"] > 0)
    fitted = msm[both]
    assert {"self_harm", "emergency_admission"} <= set(fitted.index), msm
    assert (fitted["ci_low"] < fitted["estimate"]).all()
    assert (fitted["estimate"] < fitted["ci_high"]).all()
    assert msm.loc[~both, "estimate"].isna().all()
    assert msm.loc[~both, "warning"].str.contains("no events while looked after").all()
    cox = est[est["method"] == "cox_tv"].set_index("outcome").loc[msm.index]
    counts = ["n_exposed", "n_unexposed", "events_exposed", "events_unexposed"]
    pd.testing.assert_frame_equal(msm[counts], cox[counts])

    released = read_release_csv(full_run / "release" / "estimates.csv")
    hazard_ratios = (released["contrast"] == "cla_vs_nla") & (released["scale"] == "hazard_ratio")
    rel = released[hazard_ratios].set_index(["outcome", "method"]).sort_index()
    for outcome in msm.index:
        withheld = rel.loc[(outcome, "msm_iptw_hazard"), "estimate"] == "withheld"
        assert withheld == (rel.loc[(outcome, "cox_tv"), "estimate"] == "withheld"), outcome

    diag = pd.read_csv(full_run / "results" / "diagnostics.csv")
    items = set(diag.loc[diag["analysis"].str.startswith("hazard_msm"), "item"])
    assert {"weight_mean", "weight_max", "effective_sample_size"} <= items

    page = (full_run / "report.html").read_text(encoding="utf-8")
    assert "Marginal structural model of hospital outcomes" in page
    assert "Marginal structural model, hazards" in page


def test_the_adjustment_sentence_reads_the_msm() -> None:
    """The second question's sentence names the hazard MSM's released estimate and what its
    interval shows (planted numbers)."""
    from orchestration.report.answers import Effect, read_adjustment

    crude = Effect("hazard_ratio", 2.0, 1.6, 2.5)
    adjusted = Effect("hazard_ratio", 1.6, 1.3, 2.0)
    msm = Effect("hazard_ratio", 1.4, 0.9, 2.1)
    text = read_adjustment([("self_harm", crude, adjusted)], msm=[("self_harm", msm)])
    assert "marginal structural model" in text and "total effect" in text
    assert "1.40 for self-harm" in text.lower() or "1.4 for self-harm" in text.lower(), text
    assert "includes no difference" in text.split("marginal structural model")[1], text
    assert "marginal structural model" not in read_adjustment([("self_harm", crude, adjusted)])
