"""Linkage error in the estimates, over seeds (not a test): naive, true-link and linkage-aware.

    uv run --locked python benchmarks/linkage_error.py [--seeds 20] [--first-seed 1]
        [--children 20000] [--scenario differential_linkage_error] [--draws 10]
        [--out linkage_error_out] [--workdir DIR] [--no-true-links] [--labels 1000]
        [--main-only]
    uv run --locked python benchmarks/linkage_error.py --report OUT1/x.json [OUT2/y.json ...]

For each seed, in-process in a temporary folder: ``synth`` -> ``validate`` (Great
Expectations off) -> ``link`` -> ``build`` -> ``model`` (the *naive* estimates: the linker's
links taken as true), then

* ``true_links``: every estimate refitted on the world's true links
  (:func:`evaluation.true_links.refit_on_true_links`);
* ``linkage_aware``: ``--draws`` link sets drawn from the scored and candidate pairs, build
  and the analyses per draw, pooled with Rubin's rules
  (:func:`orchestration.link_uncertainty.run_link_uncertainty`); ``--draws 0`` skips it. The
  draw probabilities are recalibrated on ``--labels`` pairs of the review sample, labelled by
  the synthetic truth (``truth_labels``: the truth plays the clerical reviewer); the
  calibration is checked against the truth on every candidate pair, by match-weight band
  (stored per seed under ``timings[seed]["calibration"]``). Each pooled row keeps every
  draw's bias (``draw_bias``), from which ``--report`` gives the Monte Carlo error of the
  pooled estimate.

With draws, the seed is linked with the candidate pairs kept (``candidate_floor`` set to
:data:`DRAW_CANDIDATE_FLOOR`: runs keep none by default, and draws without them cannot recover
a missed link); ``--draws 0`` links without them (only the draws read them; the linker's links
are the same). ``--main-only`` (with ``--draws 0``) fits only the analyses of the main
estimates (:data:`MAIN_ANALYSES`) in the naive and the true-link analysis: at 100,000 children
a seed then costs about the run's link stage plus two builds (docs/linkage_error.md).

``--report`` merges result files (e.g. seed ranges run in parallel into different ``--out``
folders) and prints the summary, the naive and true-link estimates of the same worlds side by
side (:func:`true_link_table`: how much of the error and of the spread over seeds the links
cause), the width ratios and linkage shares, the Monte Carlo error and the calibration bins.

Every estimate with a true value is scored as in ``benchmarks/coverage_seeds.py`` (covers,
bias and width on the fitted scale), with a column ``analysis`` (naive | true_links |
linkage_aware) and, for the pooled rows, ``linkage_share``. Models run with analytic intervals
(``bootstrap_replicates: 0``) throughout, so the three analyses differ only in their links.
Rows go to ``OUT/linkage_error_<scenario>_<children>.json`` after each seed (a rerun skips the
seeds already there); the summary table per (outcome, contrast, method, analysis) is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.coverage_seeds import coverage_table, score, truth_table  # noqa: E402

SECRET = b"linkage-error-benchmark-secret-0123456789"
#: the analyses holding the main estimates (CLA vs NLA: KS4 score and level 2 by regression,
#: IPW and AIPW; every hospital outcome by time-varying Cox and Poisson): ``--main-only`` fits
#: just these, in the naive and true-link analyses alike (each analysis is fitted on its own,
#: so their rows are the same as in a run of every analysis)
MAIN_ANALYSES = ("ks4_cla_vs_nla", "time_to_event")
ANALYSES = ("naive", "true_links", "linkage_aware")
#: the floor of Splink probability below which scored pairs are not kept as candidates for
#: the draws (set explicitly: ``LinkageSettings.candidate_floor`` is off by default)
DRAW_CANDIDATE_FLOOR = 0.001


def truth_labels(candidates: Any, edges: np.ndarray, truth_dir: Path) -> pl.DataFrame:
    """The clerical reviewer, played by the synthetic truth: the representative records of
    ``edges`` with ``is_match`` (same true person)."""
    from linkage.imputation import edge_records

    truth = pl.read_parquet(truth_dir / "record_person.parquet").select(
        "source", "record_id", pl.col("person_id").cast(pl.String)
    )
    r = edge_records(candidates, edges)
    for side in ("l", "r"):
        r = r.join(
            truth.rename(
                {"source": f"source_{side}", "record_id": f"record_id_{side}", "person_id": side}
            ),
            on=[f"source_{side}", f"record_id_{side}"],
            how="left",
            maintain_order="left",
        )
    return r.with_columns(is_match=(pl.col("l") == pl.col("r")).fill_null(False)).drop("l", "r")


def calibration_check(candidates: Any, calibrated: np.ndarray | None, truth_dir: Path) -> list:
    """Splink's and the calibrated probabilities against the truth, by match-weight band,
    for the usual pairs and those only the candidate rules propose (every candidate edge)."""
    from linkage.imputation import calibration_bins

    every = np.arange(candidates.edge_p.size)
    y = truth_labels(candidates, every, truth_dir)["is_match"].to_numpy()
    rule = (
        candidates.edge_candidate_rule
        if candidates.edge_candidate_rule is not None
        else np.zeros(every.size, bool)
    )
    out = []
    for name, p in (("splink", candidates.edge_p), ("calibrated", calibrated)):
        if p is None:
            continue
        for kind, sel in (("blocking_rules", ~rule), ("candidate_rules", rule)):
            bins = calibration_bins(p[sel], y[sel], candidates.weights()[sel])
            out += bins.with_columns(probability=pl.lit(name), pairs_from=pl.lit(kind)).to_dicts()
    return out


def run_seed(
    seed: int,
    *,
    children: int,
    scenario: str,
    draws: int,
    workdir: Path | None = None,
    keep: bool = False,
    true_links: bool = True,
    labels: int = 1000,
    main_only: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One seed: the scored estimates of the three analyses, the stage timings and (under
    ``"calibration"``) Splink's and the calibrated probabilities against the truth.
    ``labels``: pairs labelled (by the truth) to calibrate the draws on; 0: Splink's own.
    ``main_only``: fit only :data:`MAIN_ANALYSES` (naive and true links; not with draws)."""
    from cohort import build_cohort
    from evaluation.true_links import refit_on_true_links
    from ground.run_layout import RunLayout
    from linkage import LinkageSettings, link_run
    from linkage.imputation import review_sample
    from models import run_models
    from models.settings import ModelSettings
    from orchestration.link_uncertainty import calibrate, read_candidates, run_link_uncertainty
    from schemas.analyses import load_run_analyses
    from synthetic_data import generate_world
    from validation import ValidationSettings, validate_delivery

    ms = ModelSettings(bootstrap_replicates=0)
    base = Path(tempfile.mkdtemp(prefix=f"linkerr_{scenario}_{seed}_", dir=workdir))
    data, run = base / "world", base / "run"
    times: dict[str, Any] = {}
    try:
        t = time.perf_counter()
        generate_world(n_children=children, seed=seed, scenario=scenario, out_dir=data)
        layout = RunLayout.at(run)
        validate_delivery(
            data_dir=data, layout=layout, settings=ValidationSettings(run_great_expectations=False)
        )
        times["synth_validate"] = time.perf_counter() - t
        t = time.perf_counter()
        # The draws read the candidate pairs below the threshold: keep them explicitly (floor
        # 0.001), as runs no longer do by default. Without draws they are never read: skip
        # scoring them (the candidate rule of date of birth + sex alone made 3.5 million edges at
        # 100,000 children; the narrowed rule of 2026-12-02 about 1 in 80 of its rows).
        # The linker's pairs, clusters and threshold do not depend on them.
        linkage_settings = LinkageSettings(candidate_floor=DRAW_CANDIDATE_FLOOR if draws else None)
        link_run(layout=layout, settings=linkage_settings, secret=SECRET)
        times["link"] = time.perf_counter() - t
        t = time.perf_counter()
        build_cohort(layout=layout)
        analyses = None
        if main_only:
            declared = load_run_analyses(layout.cohort_dir / "study_config.yaml")
            analyses = [a for a in declared if a.name in MAIN_ANALYSES]
            if {a.name for a in analyses} != set(MAIN_ANALYSES):
                raise SystemExit(f"the study config does not declare all of {MAIN_ANALYSES}")
        run_models(layout=layout, settings=ms, analyses=analyses)
        times["build_model"] = time.perf_counter() - t
        truth = truth_table(data / "truth")
        parts = [
            score(pd.read_csv(layout.results_dir / "estimates.csv"), truth).assign(analysis="naive")
        ]
        if true_links:
            t = time.perf_counter()
            est = refit_on_true_links(
                run_dir=run,
                truth_dir=data / "truth",
                out_dir=base / "true_links",
                secret=SECRET,
                model_settings=ms,
                analyses=analyses,
            )
            times["true_links"] = time.perf_counter() - t
            parts.append(score(est, truth).assign(analysis="true_links"))
        if draws:
            candidates = read_candidates(layout)
            rule = candidates.edge_candidate_rule
            if rule is None or not rule.any():
                raise SystemExit(
                    f"seed {seed}: the linkage zone holds no candidate-rule pairs, so the draws "
                    "could not recover a missed link; link with candidate_floor set"
                )
            label_frame = None
            calibrated = None
            if labels:
                edges = review_sample(candidates, labels, np.random.default_rng(seed))
                label_frame = truth_labels(candidates, edges, data / "truth")
                calibrated = calibrate(candidates, label_frame).probabilities(candidates)
            times["calibration"] = calibration_check(candidates, calibrated, data / "truth")
            times["candidate_edges"] = int(candidates.edge_p.size)
            t = time.perf_counter()
            summary = run_link_uncertainty(
                run_dir=run,
                draws=draws,
                seed=seed,
                model_settings=ms,
                labels=label_frame,
                uncalibrated=not labels,
            )
            times["link_draws"] = time.perf_counter() - t
            pooled = summary.table
            keys = ["outcome", "contrast", "method", "scale"]
            scored = score(pooled, truth).merge(
                pooled[[*keys, "linkage_share", "between_var", "total_var", "width_ratio"]],
                on=keys,
            )
            # each draw's estimate on the fitted scale, for the Monte Carlo error against M
            per_draw = (
                pd.concat(
                    [
                        score(d, truth)[[*keys, "bias"]].assign(draw=i)
                        for i, d in enumerate(summary.draw_estimates)
                    ]
                )
                .groupby(keys)["bias"]
                .apply(list)
                .rename("draw_bias")
                .reset_index()
            )
            scored = scored.merge(per_draw, on=keys, how="left")
            parts.append(scored.assign(analysis="linkage_aware"))
        rows = pd.concat(parts, ignore_index=True)
        return rows.assign(seed=seed, children=children, scenario=scenario, draws=draws), times
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per estimate and analysis: coverage, mean bias, SD of the estimates, mean width, and
    SD over mean SE (the spread of the estimates relative to what their intervals claim)."""
    parts = []
    for analysis, g in rows.groupby("analysis", sort=False):
        t = coverage_table(g).assign(analysis=analysis)
        se = (
            g.assign(se=g["width"] / (2 * 1.959964))
            .groupby(["outcome", "contrast", "scale", "method"])["se"]
            .mean()
        )
        t = t.merge(
            se.rename("mean_se").reset_index(), on=["outcome", "contrast", "scale", "method"]
        )
        t["sd_over_se"] = t["sd_bias"] / t["mean_se"]
        if "linkage_share" in g and g["linkage_share"].notna().any():
            share = g.groupby(["outcome", "contrast", "scale", "method"])["linkage_share"].mean()
            t = t.merge(
                share.rename("linkage_share").reset_index(),
                on=["outcome", "contrast", "scale", "method"],
            )
        parts.append(t)
    return pd.concat(parts, ignore_index=True)


def to_markdown(table: pd.DataFrame, methods: tuple[str, ...]) -> str:
    t = table[table["method"].isin(methods)].sort_values(
        ["outcome", "contrast", "method", "analysis"]
    )
    lines = [
        "| outcome | contrast | method | analysis | seeds | coverage | mean bias | SD | mean SE "
        "| SD/SE | mean width | linkage share |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in t.itertuples():
        share = getattr(r, "linkage_share", float("nan"))
        lines.append(
            f"| {r.outcome} | {r.contrast} | {r.method} | {r.analysis} | {r.seeds} | "
            f"{r.coverage:.0%} | {r.mean_bias:+.3f} | {r.sd_bias:.3f} | {r.mean_se:.3f} | "
            f"{r.sd_over_se:.2f} | {r.mean_width:.3f} | "
            + ("" if pd.isna(share) else f"{share:.0%}")
            + " |"
        )
    return "\n".join(lines)


def true_link_table(rows: pd.DataFrame) -> pd.DataFrame:
    """How much of the estimates' error and spread the links cause, per main estimate: the
    naive and true-link estimates of the same worlds (seeds holding both), paired.

    ``d = naive - true links`` (fitted scale) is what linkage error did in each world. Over the
    seeds: the naive and true-link SD and SD / mean SE (mean SE: the naive interval width /
    3.92), the mean and SD of ``d``, ``sd_d_over_se`` (the spread linkage adds, in standard
    errors) and ``linkage_share_of_spread = 1 - var(true) / var(naive)``: the share of the
    naive estimates' variance over seeds that goes when the links are made true (negative when
    the true-link estimates happen to spread more)."""
    keys = ["outcome", "contrast", "scale", "method"]
    two = rows[rows["analysis"].isin(["naive", "true_links"])]
    wide = two.pivot_table(
        index=[*keys, "seed"],
        columns="analysis",
        values=["bias", "width", "covers"],
        aggfunc="first",
    ).dropna()
    wide.columns = [f"{v}_{a}" for v, a in wide.columns]
    wide = wide.reset_index()
    wide["d"] = wide["bias_naive"] - wide["bias_true_links"]
    z = 1.959964
    out = (
        wide.groupby(keys)
        .agg(
            seeds=("seed", "nunique"),
            naive_bias=("bias_naive", "mean"),
            naive_sd=("bias_naive", "std"),
            naive_se=("width_naive", lambda w: float(np.mean(w)) / (2 * z)),
            naive_coverage=("covers_naive", "mean"),
            true_bias=("bias_true_links", "mean"),
            true_sd=("bias_true_links", "std"),
            true_se=("width_true_links", lambda w: float(np.mean(w)) / (2 * z)),
            true_coverage=("covers_true_links", "mean"),
            d_mean=("d", "mean"),
            d_sd=("d", "std"),
            d_max_abs=("d", lambda v: float(np.max(np.abs(v)))),
        )
        .reset_index()
    )
    out["naive_sd_over_se"] = out["naive_sd"] / out["naive_se"]
    out["true_sd_over_se"] = out["true_sd"] / out["true_se"]
    out["d_sd_over_se"] = out["d_sd"] / out["naive_se"]
    out["linkage_share_of_spread"] = 1 - out["true_sd"] ** 2 / out["naive_sd"] ** 2
    return out


def true_link_markdown(table: pd.DataFrame, methods: tuple[str, ...]) -> str:
    t = table[table["method"].isin(methods)].sort_values(["outcome", "contrast", "method"])
    lines = [
        "| outcome | contrast | method | seeds | naive: bias, SD/SE, coverage "
        "| true links: bias, SD/SE, coverage | naive - true: mean, SD (in SE) "
        "| share of spread due to linkage |",
        "|---|---|---|---:|---|---|---|---:|",
    ]
    for r in t.itertuples():
        lines.append(
            f"| {r.outcome} | {r.contrast} | {r.method} | {r.seeds} | "
            f"{r.naive_bias:+.4f}, {r.naive_sd_over_se:.2f}, {r.naive_coverage:.0%} | "
            f"{r.true_bias:+.4f}, {r.true_sd_over_se:.2f}, {r.true_coverage:.0%} | "
            f"{r.d_mean:+.4f}, {r.d_sd:.4f} ({r.d_sd_over_se:.3f}) | "
            f"{r.linkage_share_of_spread:+.1%} |"
        )
    return "\n".join(lines)


def monte_carlo_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per pooled estimate (mean over seeds): the width ratio (linkage-aware / naive), the
    share of variance due to linkage, and the Monte Carlo SE of the pooled estimate with the
    draws run, ``sqrt(B / M)``, as a share of its standard error ``sqrt(T)``; and the draws
    needed for that share to be 0.1 (``M = B / (0.01 T)``, about 100 x the linkage share:
    White, Royston and Wood 2011)."""
    la = rows[rows["analysis"] == "linkage_aware"].copy()
    b = la["draw_bias"].map(
        lambda v: np.var(v, ddof=1) if isinstance(v, list) and len(v) > 1 else np.nan
    )
    m = la["draw_bias"].map(lambda v: len(v) if isinstance(v, list) else np.nan)
    la["mc_share"] = np.sqrt(b / m) / np.sqrt(la["total_var"])
    la["draws_for_0.1"] = np.ceil(b / (0.01 * la["total_var"]))
    return (
        la.groupby(["outcome", "contrast", "method"])
        .agg(
            seeds=("seed", "nunique"),
            width_ratio=("width_ratio", "mean"),
            width_ratio_min=("width_ratio", "min"),
            width_ratio_max=("width_ratio", "max"),
            linkage_share=("linkage_share", "mean"),
            mc_share=("mc_share", "mean"),
            draws_for_mc_share_01=("draws_for_0.1", "median"),
        )
        .reset_index()
    )


def calibration_report(timings: dict[str, Any]) -> pd.DataFrame:
    """Splink's and the calibrated probabilities against the truth, summed over seeds."""
    cal = [r for t in timings.values() for r in t.get("calibration", [])]
    if not cal:
        return pd.DataFrame()
    c = pd.DataFrame(cal)
    c["matches"] = c["pairs"] * c["observed"]
    c["expected"] = c["pairs"] * c["predicted"]
    out = (
        c.groupby(["pairs_from", "probability", "match_weight"], sort=False)[
            ["pairs", "expected", "matches"]
        ]
        .sum()
        .reset_index()
    )
    out["predicted"] = out["expected"] / out["pairs"]
    out["observed"] = out["matches"] / out["pairs"]
    return out.drop(columns=["expected", "matches"])


def report(paths: list[str]) -> None:
    """Merge result files and print the tables of the docs."""
    rows: list[dict[str, Any]] = []
    timings: dict[str, Any] = {}
    for path in paths:
        stored = json.loads(Path(path).read_text(encoding="utf-8"))
        rows += stored["rows"]
        timings.update(stored.get("timings", {}))
    df = pd.DataFrame(rows)
    seeds = sorted(int(s) for s in df["seed"].unique())
    main_methods = ("regression", "ipw", "aipw", "cox_tv", "poisson_pw")
    sys.stdout.write(f"seeds {seeds}\n\n{to_markdown(summary_table(df), main_methods)}\n\n")
    if {"naive", "true_links"} <= set(df["analysis"]):
        paired = true_link_table(df[df["contrast"] == "cla_vs_nla"])
        sys.stdout.write(
            "naive against true links, CLA vs NLA\n\n"
            + true_link_markdown(paired, main_methods)
            + "\n\n"
        )
    if "draw_bias" in df:
        mc = monte_carlo_table(df)
        sys.stdout.write(mc[mc["method"].isin(main_methods)].to_string(index=False) + "\n\n")
    for seed, t in sorted(timings.items(), key=lambda kv: int(kv[0])):
        brief = {k: v for k, v in t.items() if k != "calibration"}
        sys.stdout.write(f"seed {seed}: {brief}\n")
    cal = calibration_report(timings)
    if not cal.empty:
        sys.stdout.write("\n" + cal.to_string(index=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--children", type=int, default=20_000)
    p.add_argument("--scenario", default="differential_linkage_error")
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--out", default="linkage_error_out")
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--no-true-links", action="store_true", help="skip the refit on the true links")
    p.add_argument(
        "--labels",
        type=int,
        default=1000,
        help="pairs labelled by the truth to calibrate the draws (0: Splink's probabilities)",
    )
    p.add_argument(
        "--main-only",
        action="store_true",
        help=f"fit only the analyses of the main estimates ({', '.join(MAIN_ANALYSES)}); "
        "needs --draws 0",
    )
    p.add_argument("--report", nargs="+", help="merge these result files and print the tables")
    a = p.parse_args(argv)
    if a.report:
        report(a.report)
        return
    if a.main_only and a.draws:
        p.error("--main-only needs --draws 0 (the draws fit the run's every analysis)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"linkage_error_{a.scenario}_{a.children}.json"
    done: list[dict[str, Any]] = []
    timings: dict[str, Any] = {}
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
        done, timings = stored["rows"], stored.get("timings", {})
    have = {r["seed"] for r in done}
    workdir = Path(a.workdir) if a.workdir else None
    if workdir:
        workdir.mkdir(parents=True, exist_ok=True)
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        if seed in have:
            continue
        t0 = time.perf_counter()
        rows, times = run_seed(
            seed,
            children=a.children,
            scenario=a.scenario,
            draws=a.draws,
            workdir=workdir,
            keep=a.keep,
            true_links=not a.no_true_links,
            labels=a.labels,
            main_only=a.main_only,
        )
        done += rows.to_dict("records")
        timings[str(seed)] = {
            k: round(v, 1) if isinstance(v, float) else v for k, v in times.items()
        }
        path.write_text(
            json.dumps(
                {"scenario": a.scenario, "children": a.children, "rows": done, "timings": timings},
                indent=1,
            ),
            encoding="utf-8",
        )
        brief = {k: v for k, v in timings[str(seed)].items() if k != "calibration"}
        sys.stderr.write(f"seed {seed}: {time.perf_counter() - t0:.0f} s {brief}\n")
    rows_df = pd.DataFrame(done)
    rows_df = rows_df[rows_df["seed"].between(a.first_seed, a.first_seed + a.seeds - 1)]
    table = summary_table(rows_df)
    sys.stdout.write(
        f"scenario {a.scenario}, {a.children:,} children, seeds {sorted(rows_df['seed'].unique())}"
        f", draws {a.draws}\n\n"
        + to_markdown(table, ("regression", "ipw", "aipw", "cox_tv", "poisson_pw", "gee"))
        + "\n"
    )
    (out / f"linkage_error_table_{a.scenario}_{a.children}.json").write_text(
        table.to_json(orient="records", indent=1), encoding="utf-8"
    )


if __name__ == "__main__":
    main()
