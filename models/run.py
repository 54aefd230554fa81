"""The model stage of a run: one loop over the declared analyses, then the outputs.

``run_models`` loads the cohort tables, reads the analyses the cohort was built with
(``RUN/cohort/study_config.yaml``'s ``analyses:`` section, :func:`schemas.analyses.load_run_analyses`;
an explicit ``analyses`` argument wins), checks every declaration against the estimator it names
before fitting anything (:func:`models.estimators.estimator_for`), fits each analysis in order
(:func:`run_analyses`) and writes results/, the figures and release/ (:mod:`models.outputs`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ground.db import connect
from ground.errors import RunStateError
from ground.run_layout import RunLayout
from models.disclosure import WITHHELD
from models.estimators import (
    AnalysisEstimator,
    CohortData,
    Diagnostic,
    estimator_for,
    fit_propensity,
)
from models.outputs import (
    km_outcomes,
    rows_of,
    savefig,
    sensitivity_table,
    table_one,
    write_figures,
    write_release,
    write_results,
)
from models.runtime import forked_map, model_fitting, shared
from models.settings import ModelSettings
from schemas.analyses import Analysis, check_unique, load_run_analyses

log = logging.getLogger(__name__)


@dataclass
class ModelSummary:
    estimates: pd.DataFrame
    warnings: list[str]
    row_counts: dict[str, int] = field(default_factory=dict)
    # release/estimates.csv as written (text, disclosure-controlled): what artifacts show
    released: pd.DataFrame | None = None
    disclosure_label: str = ""
    # the released rows the analyses name as headline estimates (``headline_methods``)
    headline: pd.DataFrame | None = None

    def to_markdown(self) -> str:
        """The headline estimates as released (withheld ones stay withheld), for the artifact."""
        main = self.headline if self.headline is not None else pd.DataFrame()
        lines = [
            f"Released estimates ({self.disclosure_label}).",
            "",
            "| outcome | method | scale | estimate | 95% CI | note |",
            "|---|---|---|---:|---|---|",
        ]
        lines += [
            f"| {r.outcome} | {r.method} | {r.scale} | {r.estimate} | "
            + (f"{r.ci_low} to {r.ci_high}" if r.estimate != WITHHELD else "")
            + f" | {r.note} |"
            for r in main.itertuples()
        ]
        if self.warnings:
            lines += ["", "Fit warnings: see results/diagnostics.csv (secure)."]
        return "\n".join(lines)


def load_cohort(layout: RunLayout) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """cohort.children (with the two columns the models derive), cohort.person_time and
    cohort.school_years of a built run."""
    if not layout.analysis_db.exists():
        raise RunStateError(f"{layout.analysis_db} not found: run `cohort build` first")
    con = connect(layout.analysis_db, read_only=True)
    try:
        children = con.sql("SELECT * FROM cohort.children ORDER BY person_key").df()
        pt = con.sql(
            "SELECT * FROM cohort.person_time ORDER BY person_key, outcome, start_day"
        ).df()
        sy = con.sql("SELECT * FROM cohort.school_years ORDER BY person_key, academic_year").df()
    except Exception as exc:
        raise RunStateError(
            f"cohort tables missing in {layout.analysis_db}: run `cohort build` ({exc})"
        ) from None
    finally:
        con.close()
    # care before year 11 depends on the time left between the index date and year 11, which is
    # not linear in age: a categorical year of age at index lets the propensity model follow it
    children["age_band_at_index"] = np.floor(children["age_at_index"]).clip(0, 17).astype(int)
    children["sex_male"] = (children["sex"] == "M").astype(float)
    return children, pt, sy


@dataclass
class AnalysisResults:
    """What the loop over the analyses produced, in declaration order."""

    estimates: pd.DataFrame
    # the analysis (name) of each row of ``estimates``
    row_analysis: list[str]
    diagnostics: list[Diagnostic]
    balance: list[pd.DataFrame]


def check_analyses(analyses: Sequence[Analysis], s: ModelSettings) -> None:
    """Every declaration names a registered estimator with valid options (a ConfigError naming
    the analysis and the key otherwise): what a flow can check before any stage runs."""
    check_unique(analyses)
    for a in analyses:
        estimator_for(a, s)


@dataclass
class _Fitted:
    """What one analysis's fit produced."""

    rows: list[dict[str, Any]]
    diagnostics: list[Diagnostic]
    balance: list[pd.DataFrame]


def _fit_one(est: AnalysisEstimator, cohort: CohortData) -> _Fitted:
    a = est.analysis
    t0, cpu0 = time.perf_counter(), time.process_time()
    est.fit(cohort)
    # wall and CPU seconds (all of the process's threads): where the stage's time goes
    log.info(
        "analysis %s done in %.1f s (CPU %.1f s)",
        a.name,
        time.perf_counter() - t0,
        time.process_time() - cpu0,
    )
    keep = a.population == "all"  # diagnostics and balance of the main population only
    return _Fitted(
        [e.row() for e in est.estimates_],
        est.diagnostics_ if keep else [],
        est.balance_ if keep else [],
    )


def _fit_unit(unit: list[int]) -> list[tuple[int, _Fitted]]:
    """In a worker of :func:`models.runtime.forked_map`: fit the analyses of one unit, in order."""
    cohort, estimators = shared("cohort"), shared("estimators")
    return [(i, _fit_one(estimators[i], cohort)) for i in unit]


def work_units(estimators: Sequence[AnalysisEstimator]) -> list[list[int]]:
    """The analyses (indices) grouped into units a process fits in order: those that share a
    :class:`CohortData` cache (``shares``) form one unit, every other analysis its own; units
    ordered by their first analysis."""
    units: list[list[int]] = []
    by_cache: dict[str, list[int]] = {}
    for i, est in enumerate(estimators):
        if est.shares is None:
            units.append([i])
        elif est.shares in by_cache:
            by_cache[est.shares].append(i)
        else:
            by_cache[est.shares] = [i]
            units.append(by_cache[est.shares])
    return units


def run_analyses(
    cohort: CohortData,
    analyses: Sequence[Analysis],
    s: ModelSettings,
    progress: Callable[[str], None] = lambda m: None,
) -> AnalysisResults:
    """Fit every analysis; results in declaration order. Diagnostics and balance tables are
    kept for the main population only: a sensitivity population (high-quality links)
    contributes estimates; when it is the whole cohort its analyses are skipped, with one
    diagnostic saying so.

    With ``s.processes`` above 1 (Linux) the analyses are fitted by that many forked
    processes side by side (:func:`work_units`, :func:`models.runtime.forked_map`); the
    results are the same as from one process, row for row."""
    check_unique(analyses)
    estimators = [estimator_for(a, s) for a in analyses]  # every declaration checked first
    for est in estimators:
        est.check_outcomes(cohort)
    runnable = [est for est in estimators if cohort.population(est.analysis.population) is not None]
    fitted: dict[int, _Fitted] = {}
    units = work_units(runnable)
    n = len(runnable)
    if s.processes > 1 and len(units) > 1 and sys.platform == "linux":
        progress(f"fitting {n} analyses in {min(s.processes, len(units))} processes")
        items = forked_map(_fit_unit, units, s.processes, cohort=cohort, estimators=runnable)
        for _, done in items:
            for i, one in done:
                fitted[i] = one
                a = runnable[i].analysis
                progress(f"{a.name}: {a.label} (done, {len(fitted)} of {n})")
    else:
        # one thread per thread pool and ordinary pages: far faster for these fits (models/runtime.py)
        with model_fitting():
            for i, est in enumerate(runnable):
                progress(f"{est.analysis.name}: {est.analysis.label}")
                fitted[i] = _fit_one(est, cohort)
    results = iter(fitted[i] for i in range(n))
    rows: list[dict[str, Any]] = []
    row_analysis: list[str] = []
    diag: list[Diagnostic] = []
    balance: list[pd.DataFrame] = []
    noted: set[str] = set()
    for est in estimators:  # in declaration order, skipped populations' notes where they were
        a = est.analysis
        if cohort.population(a.population) is None:
            if a.population not in noted:
                diag.append(cohort.skipped_note(a.population))
                noted.add(a.population)
            continue
        one = next(results)
        rows += one.rows
        row_analysis += [a.name] * len(one.rows)
        diag += one.diagnostics
        balance += one.balance
    return AnalysisResults(pd.DataFrame(rows), row_analysis, diag, balance)


def run_models(
    *,
    layout: RunLayout,
    settings: ModelSettings | None = None,
    analyses: Sequence[Analysis] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ModelSummary:
    """Fit every declared analysis on the run's cohort tables; write results/, figures and
    release/. ``analyses``: the declarations to run (default: the run's study config's)."""
    import matplotlib

    matplotlib.use("Agg")

    s = settings or ModelSettings()
    report = progress or (lambda m: log.info("%s", m))
    if analyses is None:
        analyses = load_run_analyses(layout.cohort_dir / "study_config.yaml")
    layout.ensure()
    (layout.results_dir / "model_settings.yaml").write_text(
        yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
    )
    children, pt, sy = load_cohort(layout)
    if children.empty:
        raise RunStateError("cohort.children is empty: nothing to model")
    cohort = CohortData(children, pt, sy)
    fitted = run_analyses(cohort, analyses, s, report)
    estimates, row_analysis = fitted.estimates, fitted.row_analysis
    warnings_list = [
        f"{r.outcome}/{r.contrast}/{r.method}: {r.warning}"
        for r in estimates.itertuples()
        if r.warning
    ]
    warnings_list += [
        f"{d['analysis']}: {d['warning']}" for d in fitted.diagnostics if d["warning"]
    ]
    report("writing results, figures and release tables")
    sens = sensitivity_table(estimates, row_analysis, analyses, children)
    write_results(layout, estimates, row_analysis, sens, fitted.balance, fitted.diagnostics)
    # overall CLA-vs-NLA propensity for table 1 and the weighted KM curves
    t_all = (children["group"] == "CLA").to_numpy().astype(int)
    w_all = None
    if 0 < t_all.sum() < len(t_all):
        ps_all, _, _ = fit_propensity(children, t_all, s, None, "propensity:ever_looked_after")
        w_all = ps_all.weights_
        savefig(ps_all.plot().figure, layout.figures_dir / "propensity_overlap.png")
        savefig(ps_all.plot_balance().figure, layout.figures_dir / "love_plot.png")
    t1 = table_one(children, w_all)
    t1.to_csv(layout.results_dir / "table1.csv", index=False)
    km = km_outcomes(analyses)
    release = write_release(layout, estimates, t1, children, pt, s.disclosure, km)
    write_figures(layout, children, pt, estimates, row_analysis, analyses, w_all, release)
    released = release.tables["estimates"]
    headline = released[rows_of(estimates, row_analysis, analyses, "headline_methods").to_numpy()]
    return ModelSummary(
        estimates,
        warnings_list,
        {"results.estimates": len(estimates)},
        released=released,
        disclosure_label=s.disclosure.label,
        headline=headline,
    )
