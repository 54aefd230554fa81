"""Linkage-aware intervals: multiple linkage imputation over a finished run.

``cohort link-uncertainty --run RUN --draws 10`` (and :func:`run_link_uncertainty`):

1. read the run's scored pairs, the candidate pairs below the linker's floor, and the
   deterministic components from the linkage zone (:func:`linkage.imputation.load_candidates`;
   the pairs are not scored again); with clerical-review labels (``labels``: a labelled
   :func:`write_review_sample`), recalibrate the draw probabilities on them
   (:func:`linkage.imputation.fit_calibration`). Without labels the command stops and says
   how to get them, unless ``uncalibrated`` asks for Splink's own probabilities (they are
   over-confident on these data, so draws from them chain different people together: see
   :data:`UNCALIBRATED_WARNING`);
2. for each draw, one plausible link set (:func:`linkage.imputation.draw_record_person`) is
   written as the analysis zone of ``RUN/link_draws/draw_NN/``, and the later stages run there
   as in the run: ``cohort build`` (the run's saved study config) and the run's analyses (the
   model stage's fits, without its figures and release tables);
3. every estimate is pooled over the draws with Rubin's rules (:func:`models.pooling.rubin_pool`)
   and written beside the run's own: ``RUN/results/linkage_uncertainty.csv`` (full precision:
   the main estimate and interval, the pooled one, the share of variance due to linkage) and
   ``RUN/results/linkage_uncertainty.json`` (draws, seed, timings).

The draws' folders hold pseudonymous analysis zones only (no identifiers); they are removed
after pooling unless ``keep_draws``. The model settings are the run's (``results/
model_settings.yaml``) unless given; with bootstrap intervals each draw costs a bootstrap, so
``bootstrap_replicates: 0`` (analytic intervals) is the usual choice for the draws.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import yaml

from cohort import build_cohort
from cohort.config import load_study_config
from ground.errors import ConfigError, RunStateError
from ground.run_layout import RunLayout
from linkage.imputation import (
    CandidateLinks,
    LinkCalibration,
    draw_record_person,
    edge_labels,
    edge_records,
    fit_calibration,
    load_candidates,
    review_sample,
    write_link_set_zone,
)
from linkage.settings import LinkageSettings
from models.estimators import CohortData
from models.pooling import KEYS, rubin_pool
from models.run import load_cohort, run_analyses
from models.settings import ModelSettings
from schemas.analyses import Analysis, load_run_analyses

log = logging.getLogger(__name__)

DRAWS_DIR = "link_draws"

#: why draws need labelled pairs: measured on a 100,000-child differential world (seed 5,
#: docs/linkage_error.md "Draws need calibrated probabilities")
UNCALIBRATED_WARNING = (
    "Splink's match probabilities are not calibrated on these data (pairs it scores 0.98 are "
    "true matches about half the time), so draws from them link too much: on a "
    "100,000-child world they made 95,000 persons where the truth has 100,000 and "
    "calibrated draws 102,600, and their pooled estimates move with the false links"
)


@dataclass
class LinkUncertaintySummary:
    draws: int
    seconds_per_draw: float
    seconds_total: float
    table: pd.DataFrame
    #: each draw's estimates table (for the Monte Carlo error of the pooled estimate)
    draw_estimates: list[pd.DataFrame] = field(default_factory=list)
    calibration: LinkCalibration | None = None

    def to_markdown(self) -> str:
        drawn_from = (
            f"probabilities recalibrated on {self.calibration.labelled} labelled pairs"
            if self.calibration is not None
            else "**Splink's uncalibrated probabilities** (no labelled pairs; see "
            "docs/linkage_error.md before reading these intervals)"
        )
        lines = [
            f"{self.draws} link draws from {drawn_from}, {self.seconds_per_draw:.0f} s a draw "
            f"({self.seconds_total:.0f} s in all).",
            "",
            "| outcome | contrast | method | main (95% CI) | linkage-aware (95% CI) "
            "| width ratio | share of variance from linkage |",
            "|---|---|---|---|---|---:|---:|",
        ]
        for r in self.table.itertuples():
            lines.append(
                f"| {r.outcome} | {r.contrast} | {r.method} | "
                f"{r.main_estimate:.3g} ({r.main_ci_low:.3g}, {r.main_ci_high:.3g}) | "
                f"{r.estimate:.3g} ({r.ci_low:.3g}, {r.ci_high:.3g}) | "
                f"{r.width_ratio:.2f} | {r.linkage_share:.0%} |"
            )
        return "\n".join(lines)


def select_analyses(run: RunLayout, names: Sequence[str] | None) -> tuple[Analysis, ...]:
    """The run's declared analyses (its saved study config), or those of them named, in
    declared order; a clear error for a name the run does not declare."""
    declared = load_run_analyses(run.cohort_dir / "study_config.yaml")
    if names is None:
        return declared
    unknown = sorted(set(names) - {a.name for a in declared})
    if unknown or not names:
        raise ConfigError(
            f"--analyses {', '.join(unknown) or '(empty)'}: not an analysis of {run.root} "
            f"(its study config declares {', '.join(a.name for a in declared)}); name one or "
            "more of those, separated by commas"
        )
    return tuple(a for a in declared if a.name in set(names))


def _draw_estimates(
    run: RunLayout,
    draw_layout: RunLayout,
    record_person: pd.DataFrame | object,
    linkage_settings: LinkageSettings,
    model_settings: ModelSettings,
    analyses: tuple[Analysis, ...],
) -> tuple[pd.DataFrame, dict[str, float]]:
    """One draw's estimates: its analysis zone, build, and ``analyses`` fitted (the
    estimates only: the draws need no figures, release tables or table 1); with the seconds
    each of the three took."""
    seconds = {}
    t = time.perf_counter()
    write_link_set_zone(run.linkage_db, record_person, draw_layout, linkage_settings)  # type: ignore[arg-type]
    seconds["zone"] = time.perf_counter() - t
    t = time.perf_counter()
    build_cohort(layout=draw_layout, config=load_study_config(run.cohort_dir / "study_config.yaml"))
    children, person_time, school_years = load_cohort(draw_layout)
    seconds["build"] = time.perf_counter() - t
    if children.empty:
        raise RunStateError(f"{draw_layout.root}: the drawn link set gave an empty cohort")
    t = time.perf_counter()
    fitted = run_analyses(CohortData(children, person_time, school_years), analyses, model_settings)
    seconds["analyses"] = time.perf_counter() - t
    return fitted.estimates, seconds


def run_settings_of(run: RunLayout) -> tuple[LinkageSettings, ModelSettings]:
    """The linkage and model settings the run used (saved beside its outputs)."""
    lset = run.linkage_dir / "linkage_settings.yaml"
    mset = run.results_dir / "model_settings.yaml"
    for p, stage in (
        (lset, "link"),
        (mset, "model"),
        (run.cohort_dir / "study_config.yaml", "build"),
    ):
        if not p.exists():
            raise RunStateError(f"{p} not found: run `cohort {stage}` on {run.root} first")
    return (
        LinkageSettings.model_validate(yaml.safe_load(lset.read_text(encoding="utf-8"))),
        ModelSettings.model_validate(yaml.safe_load(mset.read_text(encoding="utf-8"))),
    )


def compare_with_main(main: pd.DataFrame, pooled: pd.DataFrame) -> pd.DataFrame:
    """The pooled estimates beside the run's own (``main_*``), with the ratio of interval
    widths (linkage-aware over main, on the fitted scale)."""
    m = main[[*KEYS, "estimate", "ci_low", "ci_high"]].rename(
        columns={"estimate": "main_estimate", "ci_low": "main_ci_low", "ci_high": "main_ci_high"}
    )
    out = m.merge(pooled, on=KEYS, how="inner")
    ratio = out["scale"].isin(("hazard_ratio", "odds_ratio", "rate_ratio", "risk_ratio"))
    with np.errstate(divide="ignore", invalid="ignore"):
        w_main = np.where(
            ratio,
            np.log(out["main_ci_high"]) - np.log(out["main_ci_low"]),
            out["main_ci_high"] - out["main_ci_low"],
        )
        w_pool = np.where(
            ratio, np.log(out["ci_high"]) - np.log(out["ci_low"]), out["ci_high"] - out["ci_low"]
        )
        out["width_ratio"] = w_pool / w_main
    return out


REVIEW_TABLE = "linkage.link_review_sample"


def read_candidates(run: RunLayout) -> CandidateLinks:
    """The run's candidate links (the linkage zone opened read-only)."""
    if not run.linkage_db.exists():
        raise RunStateError(f"{run.linkage_db} not found: run `cohort link` first")
    con = duckdb.connect(str(run.linkage_db), read_only=True)
    try:
        return load_candidates(con)
    finally:
        con.close()


def require_candidate_pairs(run: RunLayout) -> None:
    """A clear error unless the run's linkage zone holds ``linkage.candidate_pairs``: link draws
    and review samples need them, and ``cohort link`` keeps them only when the run settings
    set ``linkage.candidate_floor`` (off by default: at 1,000,000 children they cost more
    than the rest of the link stage)."""
    if not run.linkage_db.exists():
        raise RunStateError(f"{run.linkage_db} not found: run `cohort link` first")
    con = duckdb.connect(str(run.linkage_db), read_only=True)
    try:
        found = con.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema = 'linkage' AND table_name = 'candidate_pairs'"
        ).fetchone()
    finally:
        con.close()
    if not found or not found[0]:
        raise RunStateError(
            f"{run.root} was linked without candidate pairs (run settings "
            "linkage.candidate_floor is null, the default), so there is nothing to draw links "
            "from: rerun `cohort link` (or `cohort run`) on it with run settings "
            "`linkage: {candidate_floor: 0.001}`, then `cohort link-uncertainty`"
        )


def write_review_sample(run_dir: str | Path, pairs: int = 1000, seed: int = 2012) -> int:
    """Choose ``pairs`` candidate pairs for clerical review, spread over the calibration's
    strata (:func:`linkage.imputation.review_sample`), and store them in the linkage zone as
    ``linkage.link_review_sample`` (``source_l, record_id_l, source_r, record_id_r`` and an
    empty ``is_match``): reviewers look the records up there and fill ``is_match``; the
    labels never leave the zone. Returns the number of pairs written."""
    run = RunLayout.at(run_dir)
    require_candidate_pairs(run)
    c = read_candidates(run)
    edges = review_sample(c, pairs, np.random.default_rng(seed))
    sample = edge_records(c, edges).with_columns(is_match=pl.lit(None, dtype=pl.Boolean))
    con = duckdb.connect(str(run.linkage_db))
    try:
        con.register("review_frame", sample)
        con.execute(f"CREATE OR REPLACE TABLE {REVIEW_TABLE} AS SELECT * FROM review_frame")
        con.unregister("review_frame")
    finally:
        con.close()
    return sample.height


def _zone_labels(run: RunLayout) -> pl.DataFrame | None:
    """The labelled rows of ``linkage.link_review_sample``, if reviewers filled any."""
    con = duckdb.connect(str(run.linkage_db), read_only=True)
    try:
        schema, table = REVIEW_TABLE.split(".")
        # fetchall: a result left unfinished (fetchone) makes DuckDB refuse the next query
        (found,) = con.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        ).fetchall()
        if not found[0]:
            return None
        return con.sql(f"SELECT * FROM {REVIEW_TABLE} WHERE is_match IS NOT NULL").pl()
    finally:
        con.close()


def calibrate(candidates: CandidateLinks, labels: pl.DataFrame) -> LinkCalibration:
    """The draw probabilities' calibration from labelled candidate pairs."""
    edges, is_match = edge_labels(candidates, labels)
    if edges.size < labels.height:
        raise ConfigError(
            f"{labels.height - edges.size} of {labels.height} labelled pairs are not candidate "
            "pairs of this run (labels from another run?): label pairs of this run's "
            "linkage.link_review_sample"
        )
    return fit_calibration(candidates, edges, is_match)


def run_link_uncertainty(
    *,
    run_dir: str | Path,
    draws: int,
    seed: int = 2012,
    model_settings: ModelSettings | None = None,
    keep_draws: bool = False,
    progress: Callable[[str], None] | None = None,
    labels: pl.DataFrame | None = None,
    analyses: Sequence[str] | None = None,
    uncalibrated: bool = False,
) -> LinkUncertaintySummary:
    """Draw ``draws`` link sets, rerun build and model on each, pool with Rubin's rules.
    ``seed`` decides every draw, the draws' person keys too (random numbers, never joined to
    the run's keys). ``labels``: labelled candidate pairs (``source_l, record_id_l, source_r,
    record_id_r, is_match``) to recalibrate the draw probabilities on
    (default: the labelled rows of the zone's ``linkage.link_review_sample``; none: Splink's
    own probabilities, only with ``uncalibrated``: otherwise no labels is an error that says
    how to get them). ``analyses``: the names of the run's analyses to fit in each draw
    (default: every one it declares)."""
    step = progress or (lambda m: log.info("%s", m))
    run = RunLayout.at(run_dir)
    require_candidate_pairs(run)
    chosen = select_analyses(run, analyses)
    linkage_settings, run_model_settings = run_settings_of(run)
    ms = model_settings or run_model_settings
    main_path = run.results_dir / "estimates.csv"
    if not main_path.exists():
        raise RunStateError(f"{main_path} not found: run `cohort model` first")
    t0 = time.perf_counter()
    labels = labels if labels is not None else _zone_labels(run)
    if (labels is None or not labels.height) and not uncalibrated:
        raise RunStateError(
            f"{run.root}: no labelled pairs to calibrate the draws on. {UNCALIBRATED_WARNING}. "
            f"Store pairs for clerical review with `cohort link-uncertainty --run {run.root} "
            "--review-sample 1000`, fill is_match in linkage.link_review_sample, then run the "
            "draws again; or pass --uncalibrated to draw from Splink's probabilities anyway."
        )
    candidates = read_candidates(run)
    calibration = None
    if labels is not None and labels.height:
        calibration = calibrate(candidates, labels)
        candidates = candidates.with_probabilities(calibration.probabilities(candidates))
        step(f"draw probabilities recalibrated on {calibration.labelled} labelled pairs")
    else:
        step("no labelled pairs: drawing from Splink's own (uncalibrated) probabilities")
    rng = np.random.default_rng(seed)
    base = run.root / DRAWS_DIR
    estimates = []
    draw_seconds = []
    try:
        for d in range(draws):
            step(f"link draw {d + 1} of {draws}: build and model")
            t = time.perf_counter()
            rp = draw_record_person(candidates, rng)
            drawn = time.perf_counter() - t
            est, seconds = _draw_estimates(
                run, RunLayout.at(base / f"draw_{d:02d}"), rp, linkage_settings, ms, chosen
            )
            del rp
            estimates.append(est)
            seconds = {"draw": drawn, **seconds}
            draw_seconds.append({k: round(v, 1) for k, v in seconds.items()})
            step(
                f"link draw {d + 1} of {draws} done in {sum(seconds.values()):.0f} s: "
                + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
            )
    finally:
        if not keep_draws:
            shutil.rmtree(base, ignore_errors=True)
    pooled = rubin_pool(estimates)
    table = compare_with_main(pd.read_csv(main_path), pooled)
    total = time.perf_counter() - t0
    run.results_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(run.results_dir / "linkage_uncertainty.csv", index=False, float_format="%.6g")
    (run.results_dir / "linkage_uncertainty.json").write_text(
        json.dumps(
            {
                "draws": draws,
                "seed": seed,
                "analyses": [a.name for a in chosen],
                "candidate_edges": int(candidates.edge_p.size),
                "seconds_total": round(total, 1),
                "seconds_per_draw": round(total / max(draws, 1), 1),
                "draw_seconds": draw_seconds,
                "bootstrap_replicates": ms.bootstrap_replicates,
                "draw_probabilities": "uncalibrated" if calibration is None else "calibrated",
                "calibration": None if calibration is None else calibration.to_json(),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return LinkUncertaintySummary(
        draws, total / max(draws, 1), total, table, estimates, calibration
    )
