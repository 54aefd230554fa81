"""Coverage of the stratum ATTs, their differences and the flexible nuisance option (not a test).

    uv run --locked python benchmarks/heterogeneity_coverage.py prepare --scenario S --seeds N
        [--first-seed 1] [--children 20000] [--workdir DIR]
    uv run --locked python benchmarks/heterogeneity_coverage.py score --scenario S
        [--children 20000] [--workdir DIR] [--out OUT] [--score-seeds A-B] [--bootstrap R]

``prepare`` runs synth -> validate (Great Expectations off) -> link -> build for each seed and
keeps only what scoring needs (the run's analysis database and the world's ``truth/``), so the
estimators can be refitted on the same cohorts after a change in minutes. ``score`` fits the
``stratified_effect`` estimator (parametric and flexible nuisance models) and ``exposure_effect``'s
IPW / AIPW without the bootstrap (analytic SEs) on every prepared seed and scores each estimate
against two truths:

* ``truth/effects.json``: the ATT among the exposed with / without each adversity *begun before
  entry* (true adversity, which the data do not show);
* the identifiable stratum ATT: among the exposed with / without the adversity *recorded at the
  first referral* (what the cohort's covariate is), computed here from ``truth/persons.parquet``
  and ``truth/potential_outcomes.parquet`` exactly as the generator computes the main ATT.

Prints per (outcome, contrast, method, truth): seeds, coverage, mean bias with its Monte Carlo
SE, SD of the estimates and mean SE (their ratio should be 0.8-1.25); writes
``OUT/heterogeneity_<scenario>_<children>.json`` with every per-seed row. ``score`` also reads
the worlds `benchmarks/ks4_interval_spread.py` builds (``--workdir`` its workdir: the same
``<scenario>_<children>_<seed>`` folders, marked ``built``); ``--score-seeds A-B`` limits it to
those seeds. ``--bootstrap R``: the parametric strata and the KS4 contrast with R bootstrap
replicates (the pipeline's default standard errors; boosting left out) and the strata again
with the influence function's SEs (method ``aipw_analytic``), rows in
``OUT/heterogeneity_<scenario>_<children>_boot<R>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECRET = b"coverage-benchmark-secret-0123456789"
ADVERSITIES = (
    "physical_abuse",
    "parental_mental_ill_health",
    "parental_substance_misuse",
    "domestic_abuse",
)


def seed_dir(workdir: Path, scenario: str, children: int, seed: int) -> Path:
    return workdir / f"{scenario}_{children}_{seed}"


def prepare_seed(seed: int, children: int, scenario: str, workdir: Path) -> Path:
    """synth -> validate -> link -> build for one seed; keep run/ and world/truth only."""
    from cohort import build_cohort
    from ground.run_layout import RunLayout
    from linkage import link_run
    from orchestration.settings import load_run_settings
    from synthetic_data import generate_world
    from validation import ValidationSettings, validate_delivery

    base = seed_dir(workdir, scenario, children, seed)
    if (base / "done").exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    data, run = base / "world", base / "run"
    generate_world(n_children=children, seed=seed, scenario=scenario, out_dir=data)
    layout = RunLayout.at(run)
    validate_delivery(
        data_dir=data, layout=layout, settings=ValidationSettings(run_great_expectations=False)
    )
    link_run(layout=layout, settings=load_run_settings(None).linkage, secret=SECRET)
    build_cohort(layout=layout)
    # the extracts and the linkage zone are not needed to refit the models
    for p in data.iterdir():
        if p.name != "truth":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    (base / "done").write_text("ok", encoding="utf-8")
    return base


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["prepare", "score", "time"])
    p.add_argument("--copies", type=int, default=5, help="time: copies of the seed's cohort")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--children", type=int, default=20_000)
    p.add_argument("--scenario", default="effect_modification")
    p.add_argument("--workdir", default="/tmp/heterogeneity_worlds")
    p.add_argument("--out", default="coverage_out")
    p.add_argument("--score-seeds", default=None, help="score: only seeds A-B")
    p.add_argument("--bootstrap", type=int, default=0, help="score: bootstrap replicates")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if a.command == "prepare":
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            t0 = time.perf_counter()
            prepare_seed(seed, a.children, a.scenario, workdir)
            sys.stderr.write(f"{a.scenario} seed {seed}: {time.perf_counter() - t0:.0f} s\n")
        return
    if a.command == "time":
        base = seed_dir(workdir, a.scenario, a.children, a.first_seed)
        print(time_analyses(base, a.copies).to_string(index=False))
        return
    score_main(a, workdir)


def stratum_truths(truth_dir: Path) -> pd.DataFrame:
    """The true stratum ATTs of every ``stratified_effect`` row: by true adversity begun before
    entry (``truth="pre_care"``, as truth/effects.json defines them) and by the adversity
    recorded at the first referral (``truth="recorded"``, the cohort's covariate), plus the
    deprivation strata and the overall ATT (both truths equal there)."""
    from synthetic_data.world import observed_ks4

    p = pd.read_parquet(truth_dir / "persons.parquet")
    po = pd.read_parquet(truth_dir / "potential_outcomes.parquet")
    p = p.merge(po, on="person_id")
    ks4_start = pd.to_datetime(p["ks4_year_start"])
    exposed = (
        (p["ever_cin"] == 1)
        & (p["has_ks4"] == 1)
        & (pd.to_datetime(p["first_cin_date"]) < ks4_start)
        & (p["care_days_before_ks4"] > 0)
    ).to_numpy()
    effects = {
        ("ks4_score", "mean_difference"): observed_ks4(
            p["ks4_y0"].to_numpy() + p["ks4_effect"].to_numpy()
        )
        - observed_ks4(p["ks4_y0"].to_numpy()),
        ("ks4_level2_inclusive", "risk_difference"): (p["level2_p1"] - p["level2_p0"]).to_numpy(),
    }
    rows = []
    for (outcome, scale), eff in effects.items():

        def add(
            contrast: str, truth: str, value: float, sc: str = scale, out: str = outcome
        ) -> None:
            rows.append((out, contrast, sc, truth, value))

        for truth in ("pre_care", "recorded"):
            add("cla_vs_nla", truth, float(eff[exposed].mean()))
            strata: dict[str, tuple[np.ndarray, tuple[str, str]]] = {
                a: (p[f"{truth}_{a}"].to_numpy() == 1, ("with", "without")) for a in ADVERSITIES
            }
            strata["deprivation"] = (
                p["deprivation_decile"].to_numpy() <= 3,
                ("most_deprived", "less_deprived"),
            )
            for m, (sel, (lab_in, lab_out)) in strata.items():
                what = "" if m == "deprivation" else f"_{m}"
                v_in = float(eff[exposed & sel].mean())
                v_out = float(eff[exposed & ~sel].mean())
                add(f"cla_vs_nla_{lab_in}{what}", truth, v_in)
                add(f"cla_vs_nla_{lab_out}{what}", truth, v_out)
                add(
                    f"cla_vs_nla_{lab_in}_minus_{lab_out}{what}",
                    truth,
                    v_in - v_out,
                    f"difference_in_{scale}",
                )
    return pd.DataFrame(rows, columns=["outcome", "contrast", "scale", "truth", "value"])


def analyses(bootstrap: bool = False) -> list[Any]:
    """What ``score`` fits: the stratified ATTs with both kinds of nuisance models and the
    pipeline's KS4 contrast (IPW and AIPW, analytic SEs); with ``bootstrap``, the parametric
    strata and the KS4 contrast with bootstrap SEs."""
    from schemas.analyses import parse_analyses

    common = {"outcomes": ["ks4_score", "ks4_level2_inclusive"], "contrast": "cla_vs_nla"}
    return [
        a
        for a in parse_analyses(
            [
                {
                    "name": "strata",
                    "label": "strata",
                    "estimator": "stratified_effect",
                    **common,
                },
                {
                    "name": "strata_boosting",
                    "label": "strata, boosting",
                    "estimator": "stratified_effect",
                    "options": {"nuisance": "boosting"},
                    **common,
                },
                {
                    "name": "ks4",
                    "label": "ks4",
                    "estimator": "exposure_effect",
                    "options": {
                        "exposed": ["long", "short"],
                        "methods": ["ipw", "aipw"],
                        "bootstrap": bootstrap,
                    },
                    **common,
                },
            ]
        )
        if not (bootstrap and a.name == "strata_boosting")
    ]


def score_seed(base: Path, bootstrap: int = 0) -> pd.DataFrame:
    """Fit :func:`analyses` on one prepared seed (``bootstrap`` replicates: 0 for analytic
    SEs); one row per estimate and truth."""
    from ground.run_layout import RunLayout
    from models.estimators import CohortData, estimator_for
    from models.run import load_cohort
    from models.settings import ModelSettings

    cohort = CohortData(*load_cohort(RunLayout.at(base / "run")))
    rows = []
    todo = [(a, bootstrap, "") for a in analyses(bootstrap > 0)]
    if bootstrap:  # the same strata with the influence function's SEs, beside the bootstrap's
        todo.append((analyses()[0], 0, "_analytic"))
    for a, replicates, tag in todo:
        t0 = time.perf_counter()
        est = estimator_for(a, ModelSettings(bootstrap_replicates=replicates)).fit(cohort)
        seconds = time.perf_counter() - t0
        rows += [
            {**e.row(), "method": e.method + tag, "analysis": a.name, "seconds": seconds}
            for e in est.estimates_
        ]
    est = pd.DataFrame(rows)
    truth = stratum_truths(base / "world" / "truth")
    m = est.merge(truth, on=["outcome", "contrast", "scale"], how="inner")
    m["se"] = (m["ci_high"] - m["ci_low"]) / (2 * 1.959963984540054)
    m["bias"] = m["estimate"] - m["value"]
    m["covers"] = (m["ci_low"] <= m["value"]) & (m["value"] <= m["ci_high"])
    return m


def time_analyses(base: Path, copies: int) -> pd.DataFrame:
    """Seconds per analysis of :func:`analyses` plus the DR-learner on ``copies`` stacked
    copies of one prepared seed's cohort (5 copies of 20,000 children: the education cohort of
    a 100,000-child world; 50: of 1,000,000). Stacking copies repeats children, so it measures
    cost, not estimates."""
    from ground.run_layout import RunLayout
    from models.estimators import CohortData, estimator_for
    from models.run import load_cohort
    from models.settings import ModelSettings
    from schemas.analyses import parse_analyses

    children, pt, sy = load_cohort(RunLayout.at(base / "run"))
    edu = children[children["ks4_care_group"].notna()]
    stacked = pd.concat(
        [edu.assign(person_key=edu["person_key"].astype(str) + f"_{k}") for k in range(copies)],
        ignore_index=True,
    )
    cohort = CohortData(stacked, pt.iloc[:0], sy.iloc[:0])
    s = ModelSettings(bootstrap_replicates=0)
    todo = [
        *analyses()[:2],
        *parse_analyses(
            [
                {
                    "name": "dr",
                    "label": "dr",
                    "estimator": "dr_learner",
                    "outcomes": ["ks4_score"],
                    "contrast": "cla_vs_nla",
                }
            ]
        ),
    ]
    rows = []
    for a in todo:
        t0 = time.perf_counter()
        estimator_for(a, s).fit(cohort)
        rows.append(
            {"analysis": a.name, "children": len(stacked), "seconds": time.perf_counter() - t0}
        )
    return pd.DataFrame(rows)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (outcome, contrast, method, truth): seeds, coverage, mean bias and its Monte Carlo
    SE, SD of the estimates, mean SE and their ratio."""
    g = rows.groupby(["outcome", "contrast", "scale", "method", "truth"], sort=True)
    out = g.agg(
        seeds=("seed", "nunique"),
        truth_mean=("value", "mean"),
        coverage=("covers", "mean"),
        mean_bias=("bias", "mean"),
        sd_bias=("bias", "std"),
        sd_estimate=("estimate", "std"),
        mean_se=("se", "mean"),
    ).reset_index()
    out["mc_se_bias"] = out["sd_bias"] / np.sqrt(out["seeds"])
    out["sd_over_se"] = out["sd_bias"] / out["mean_se"]
    return out


def score_main(a: Any, workdir: Path) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_boot{a.bootstrap}" if a.bootstrap else ""
    path = out / f"heterogeneity_{a.scenario}_{a.children}{suffix}.json"
    done: list[dict[str, Any]] = []
    if path.exists():
        done = json.loads(path.read_text(encoding="utf-8"))["rows"]
    have = {r["seed"] for r in done}
    wanted = None
    if a.score_seeds:
        first, _, last = a.score_seeds.partition("-")
        wanted = range(int(first), int(last or first) + 1)
    for base in sorted(workdir.glob(f"{a.scenario}_{a.children}_*")):
        seed = int(base.name.rsplit("_", 1)[1])
        prepared = (base / "done").exists() or (base / "built").exists()
        if seed in have or not prepared or (wanted is not None and seed not in wanted):
            continue
        t0 = time.perf_counter()
        rows = score_seed(base, a.bootstrap).assign(seed=seed)
        done += json.loads(rows.to_json(orient="records"))
        path.write_text(json.dumps({"rows": done}, indent=0), encoding="utf-8")
        sys.stderr.write(f"scored {a.scenario} seed {seed}: {time.perf_counter() - t0:.0f} s\n")
    table = summarise(pd.DataFrame([r for r in done if wanted is None or r["seed"] in wanted]))
    with pd.option_context("display.width", 250, "display.max_rows", 500):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
