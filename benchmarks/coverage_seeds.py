"""Coverage of the whole pipeline against the synthetic truth, over seeds (not a test).

    uv run --locked python benchmarks/coverage_seeds.py [--seeds 20] [--first-seed 1]
        [--children 20000] [--scenario default] [--out coverage_out] [--keep]

For each seed: ``synth`` -> ``validate`` (Great Expectations off; the DuckDB row rules still
run) -> ``link`` -> ``build`` -> ``model``, in-process, in a temporary folder. Every estimate
in ``results/estimates.csv`` that has a true value in ``truth/effects.json`` (same outcome,
contrast and scale) is scored: does its 95% interval cover the truth, and by how much does it
miss. Prints a markdown table per (outcome, contrast, method): coverage, mean bias, mean
interval width; writes ``OUT/coverage_<scenario>_<children>.json`` with every per-seed row.
Seeds already scored in that JSON are not run again (resume after an interruption).
``--retruth`` re-scores the stored estimates against the truth the current generator writes
(after a change to an estimand's definition), without rerunning the pipeline.

:func:`run_seed` and :func:`coverage_table` are what ``tests/test_truth_coverage.py`` uses.

``--scenario time_varying_confounding`` measures what baseline-only adjustment costs when later
recorded adversity drives entry to care (docs/synthetic_world.md, section 6); with
``--settings`` naming a YAML that holds ``model: {bootstrap_replicates: 0}`` the IPW and AIPW
intervals are the analytic ones (about 4 minutes a seed at 20,000 children instead of far more).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from ground.run_layout import RunLayout
    from linkage import LinkageSettings

SECRET = b"coverage-benchmark-secret-0123456789"

# The estimators whose coverage the study claims (see README "Linkage and estimates against the
# synthetic truth"): weighting (IPW), doubly robust (AIPW), regression and time-varying Cox.
MAIN_METHODS = ("regression", "ipw", "aipw", "cox_tv", "poisson_pw")
ADJUSTED_METHODS = ("ipw", "aipw", "cox_tv")
UNADJUSTED_METHODS = ("unadjusted", "cox_tv_unadjusted")
RATIO_SCALES = ("hazard_ratio", "odds_ratio")


def truth_table(truth_dir: Path) -> pd.DataFrame:
    """The identifiable true effects: outcome, contrast, scale, truth."""
    eff = json.loads((truth_dir / "effects.json").read_text(encoding="utf-8"))
    t = pd.DataFrame(eff["estimands"]).rename(columns={"value": "truth"})
    # the conditional odds ratio is marked as not identifiable from data: no estimator targets it
    t = t[~t["description"].str.contains("not identifiable")]
    return t[["outcome", "contrast", "scale", "truth"]]


def score(estimates: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Join estimates to the truth; ``covers``, ``bias`` and interval ``width`` per estimate."""
    m = estimates.merge(truth, on=["outcome", "contrast", "scale"], how="inner")
    m = m[~m["method"].str.endswith("_high_quality_links")].copy()
    m["covers"] = (m["ci_low"] <= m["truth"]) & (m["truth"] <= m["ci_high"])
    # bias on the scale the model is fitted on: log for ratios, as is for differences
    ratio = m["scale"].isin(RATIO_SCALES)
    m["bias"] = np.where(
        ratio, np.log(m["estimate"]) - np.log(m["truth"]), m["estimate"] - m["truth"]
    )
    m["width"] = np.where(
        ratio, np.log(m["ci_high"]) - np.log(m["ci_low"]), m["ci_high"] - m["ci_low"]
    )
    return m[
        [
            "outcome",
            "contrast",
            "method",
            "scale",
            "truth",
            "estimate",
            "ci_low",
            "ci_high",
            "covers",
            "bias",
            "width",
        ]
    ]


def build_seed_cohort(
    seed: int,
    children: int,
    scenario: str,
    data: Path,
    run: Path,
    linkage_settings: LinkageSettings | None = None,
) -> RunLayout:
    """``synth`` -> ``validate`` (Great Expectations off; the DuckDB row rules still run) ->
    ``link`` -> ``build`` for one seed: the world in ``data``, the run folder (up to the cohort
    tables) in ``run``."""
    from cohort import build_cohort
    from ground.run_layout import RunLayout
    from linkage import LinkageSettings, link_run
    from synthetic_data import generate_world
    from validation import ValidationSettings, validate_delivery

    generate_world(n_children=children, seed=seed, scenario=scenario, out_dir=data)
    layout = RunLayout.at(run)
    validate_delivery(
        data_dir=data, layout=layout, settings=ValidationSettings(run_great_expectations=False)
    )
    link_run(layout=layout, settings=linkage_settings or LinkageSettings(), secret=SECRET)
    build_cohort(layout=layout)
    return layout


def run_seed(
    seed: int,
    *,
    children: int = 20_000,
    scenario: str = "default",
    workdir: Path | None = None,
    keep: bool = False,
    settings_path: str | None = None,
) -> pd.DataFrame:
    """Run the whole pipeline for one seed; return the scored estimates (one row per estimate).
    ``settings_path``: a run-settings YAML (its `model` and `linkage` sections are used)."""
    from models import run_models
    from orchestration.settings import load_run_settings

    run_settings = load_run_settings(settings_path)
    base = Path(tempfile.mkdtemp(prefix=f"coverage_{scenario}_{seed}_", dir=workdir))
    data, run = base / "world", base / "run"
    try:
        layout = build_seed_cohort(seed, children, scenario, data, run, run_settings.linkage)
        run_models(layout=layout, settings=run_settings.model)
        est = pd.read_csv(layout.results_dir / "estimates.csv")
        scored = score(est, truth_table(data / "truth"))
        return scored.assign(seed=seed, children=children, scenario=scenario)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def rescore_kept(workdir: Path, scenario: str, children: int) -> pd.DataFrame:
    """Re-run only the model stage on run folders kept by ``--keep`` (after a change to
    ``models/``, minutes instead of a whole pipeline per seed) and score them."""
    from ground.run_layout import RunLayout
    from models import run_models

    out = []
    for base in sorted(workdir.glob(f"coverage_{scenario}_*_*")):
        data, run = base / "world", base / "run"
        delivery = json.loads((data / "delivery.json").read_text(encoding="utf-8"))
        if delivery["n_children"] != children or not (run / "results" / "estimates.csv").exists():
            continue
        layout = RunLayout.at(run)
        run_models(layout=layout)
        est = pd.read_csv(layout.results_dir / "estimates.csv")
        scored = score(est, truth_table(data / "truth"))
        out.append(scored.assign(seed=delivery["seed"], children=children, scenario=scenario))
        sys.stderr.write(f"rescored seed {delivery['seed']}\n")
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def retruth(rows: pd.DataFrame, scenario: str, children: int) -> pd.DataFrame:
    """Score stored estimates against the truth the current generator writes for each seed
    (after a change to how ``truth/effects.json`` defines an estimand; the estimates stand)."""
    from synthetic_data import generate_world

    out = []
    for seed, est in rows.groupby("seed", sort=True):
        with tempfile.TemporaryDirectory(prefix=f"retruth_{scenario}_{seed}_") as tmp:
            generate_world(n_children=children, seed=int(seed), scenario=scenario, out_dir=tmp)
            truth = truth_table(Path(tmp) / "truth")
        cols = ["outcome", "contrast", "method", "scale", "estimate", "ci_low", "ci_high"]
        scored = score(est[cols], truth)
        out.append(scored.assign(seed=seed, children=children, scenario=scenario))
        sys.stderr.write(f"new truth for seed {seed}\n")
    return pd.concat(out, ignore_index=True)


def coverage_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per estimator: seeds, mean truth, coverage, mean bias, SD of the bias (the spread the
    interval should reflect) and mean interval width; bias, SD and width on the log scale for
    ratios. A failed fit (no interval) counts as not covering."""
    r = rows.assign(covers=rows["covers"].astype(bool))
    g = r.groupby(["outcome", "contrast", "scale", "method"], sort=True)
    out = g.agg(
        seeds=("seed", "nunique"),
        failed=("estimate", lambda v: int(v.isna().sum())),
        truth=("truth", "mean"),
        coverage=("covers", "mean"),
        mean_estimate=("estimate", "mean"),
        mean_bias=("bias", "mean"),
        sd_bias=("bias", "std"),
        mean_width=("width", "mean"),
    ).reset_index()
    return out


def to_markdown(table: pd.DataFrame) -> str:
    lines = [
        "| outcome | contrast | scale | method | seeds | truth (mean) | coverage | mean bias "
        "| SD of bias | mean CI width |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table.itertuples():
        scale = f"log {r.scale}" if r.scale in RATIO_SCALES else r.scale
        lines.append(
            f"| {r.outcome} | {r.contrast} | {scale} | {r.method} | {r.seeds} | {r.truth:.3f} | "
            f"{r.coverage:.0%} | {r.mean_bias:+.3f} | {r.sd_bias:.3f} | {r.mean_width:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--children", type=int, default=20_000)
    p.add_argument("--scenario", default="default")
    p.add_argument("--out", default="coverage_out")
    p.add_argument("--workdir", default=None, help="parent of the per-seed temp folders")
    p.add_argument("--keep", action="store_true", help="keep each seed's world and run folder")
    p.add_argument(
        "--rescore",
        action="store_true",
        help="only re-run the model stage on the runs kept in --workdir (needs --keep earlier)",
    )
    p.add_argument("--settings", default=None, help="run-settings YAML (model, linkage)")
    p.add_argument(
        "--retruth",
        action="store_true",
        help="re-score the stored estimates against the current generator's truth (no rerun)",
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"coverage_{a.scenario}_{a.children}.json"
    done: list[dict[str, Any]] = []
    if path.exists():
        done = json.loads(path.read_text(encoding="utf-8"))["rows"]
    have = {r["seed"] for r in done}
    workdir = Path(a.workdir) if a.workdir else None
    if workdir:
        workdir.mkdir(parents=True, exist_ok=True)
    if a.rescore:
        if workdir is None:
            raise SystemExit("--rescore needs --workdir (the folder given with --keep)")
        path = out / f"coverage_{a.scenario}_{a.children}_rescored.json"
        done = rescore_kept(workdir, a.scenario, a.children).to_dict("records")
        path.write_text(
            json.dumps({"scenario": a.scenario, "children": a.children, "rows": done}, indent=1),
            encoding="utf-8",
        )
        have = {r["seed"] for r in done}
    if a.retruth:
        if not done:
            raise SystemExit(f"--retruth: no stored estimates in {path}")
        path = out / f"coverage_{a.scenario}_{a.children}_retruth.json"
        done = retruth(pd.DataFrame(done), a.scenario, a.children).to_dict("records")
        path.write_text(
            json.dumps({"scenario": a.scenario, "children": a.children, "rows": done}, indent=1),
            encoding="utf-8",
        )
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        if seed in have or a.rescore or a.retruth:
            continue
        t0 = time.perf_counter()
        rows = run_seed(
            seed,
            children=a.children,
            scenario=a.scenario,
            workdir=workdir,
            keep=a.keep,
            settings_path=a.settings,
        )
        done += rows.to_dict("records")
        path.write_text(
            json.dumps({"scenario": a.scenario, "children": a.children, "rows": done}, indent=1),
            encoding="utf-8",
        )
        main_rows = rows[rows["method"].isin(ADJUSTED_METHODS)]
        missed = main_rows[~main_rows["covers"]]
        sys.stderr.write(
            f"seed {seed}: {time.perf_counter() - t0:.0f} s, adjusted estimates missing: "
            + (
                ", ".join(f"{r.outcome}/{r.contrast}/{r.method}" for r in missed.itertuples())
                or "none"
            )
            + "\n"
        )
    rows_df = pd.DataFrame(done)
    if rows_df.empty:
        raise SystemExit("nothing scored")
    rows_df = rows_df[
        rows_df["seed"].between(a.first_seed, a.first_seed + a.seeds - 1)
    ].reset_index(drop=True)
    table = coverage_table(rows_df)
    sys.stdout.write(
        f"Coverage of 95% intervals, scenario {a.scenario}, {a.children:,} children, "
        f"seeds {a.first_seed}..{a.first_seed + a.seeds - 1}\n\n" + to_markdown(table) + "\n"
    )
    (
        out
        / (
            f"coverage_table_{a.scenario}_{a.children}"
            f"{'_rescored' if a.rescore else ''}{'_retruth' if a.retruth else ''}.json"
        )
    ).write_text(table.to_json(orient="records", indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
