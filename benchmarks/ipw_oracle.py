"""Level-2 IPW bias with the TRUE care-entry covariates (a diagnostic, not a test).

    uv run --locked python benchmarks/ipw_oracle.py [--seeds 40] [--children 20000]

Why: the pipeline's level-2 (risk difference) IPW estimate runs about +0.012 above the truth
over 40 seeds of 20,000 children. This script asks whether that comes from the data
(linkage, cohort derivation), from the covariates or form of the propensity model, or from
estimating it at all. For each seed it generates the world and, from ``truth/`` only, forms the
education cohort the truth defines (children in need before year 11 with a KS4 result;
exposed = looked after before year 11). The outcome is each child's expected level-2
probability under its own exposure (``potential_outcomes.parquet``), so the only error left is
the estimator's. Prints the mean bias (and its standard error over seeds) of ATT IPW with:

- the world's own propensity: ``P(entry before year 11)`` from the care-entry hazard the
  generator drew (``World.care_entry_rate``) and the time from the first referral to year 11;
- propensity models fitted on every cause of entry (recorded adversities at the first
  referral, deprivation, the authority at that referral, any child-protection plan, age at
  referral, log years to year 11): cloglog is then the true form, up to same-day entries;
- models fitted on what the pipeline sees of those (no authority random effect, no
  child-protection plan; sex, disability and birth year added; age in yearly bands).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import polars as pl

if TYPE_CHECKING:
    from synthetic_data.world import World

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))


def truth_cohort(
    truth_dir: Path, w: World
) -> tuple[dict[str, pd.DataFrame], np.ndarray, np.ndarray, np.ndarray, float]:
    """Designs, exposure, expected level-2 outcome, true propensity, true ATT."""
    from synthetic_data.world import ADVERSITIES

    p = (
        pl.read_parquet(truth_dir / "persons.parquet")
        .join(pl.read_parquet(truth_dir / "potential_outcomes.parquet"), on="person_id")
        .sort("person_id")
        .to_pandas()
    )
    for c in ("date_of_birth", "first_cin_date", "ks4_year_start"):
        p[c] = pd.to_datetime(p[c])
    sel = ((p.ever_cin == 1) & (p.has_ks4 == 1) & (p.first_cin_date < p.ks4_year_start)).to_numpy()
    e = p[sel].reset_index(drop=True)
    t = (e["care_days_before_ks4"] > 0).to_numpy().astype(int)
    x = pd.DataFrame({a: e[f"recorded_{a}"].astype(float) for a in ADVERSITIES})
    x["deprivation_decile"] = e["deprivation_decile"].astype(float)
    years_left = ((e["ks4_year_start"] - e["first_cin_date"]).dt.days / 365.25).to_numpy()
    log_years = np.log(np.maximum(years_left, 1 / 365))
    age = (e["first_cin_date"] - e["date_of_birth"]).dt.days / 365.25
    band = pd.get_dummies(np.floor(age).clip(0, 16).astype(int), prefix="age", drop_first=True)
    la = pd.get_dummies(w.la_at_referral[sel], prefix="la", drop_first=True)
    causes = pd.concat([x, la.astype(float)], axis=1).assign(
        child_protection_plan=(w.cp1[sel] > 0).astype(float),
        age_at_referral=age.to_numpy(),
        log_years_to_year11=log_years,
    )
    seen = x.assign(
        male=(e["sex"] == "M").astype(float),
        disability=e["disability"].astype(float),
        birth_year=e["date_of_birth"].dt.year.astype(float),
    )
    seen = pd.concat([seen, band.astype(float)], axis=1)
    designs = {
        "causes": causes,
        "seen": seen,
        "seen_time": seen.assign(log_years_to_year11=log_years),
    }
    designs = {k: d.loc[:, d.std() > 0] for k, d in designs.items()}
    # the generator's own propensity: a same-day entry (probability 0.1 (1 - e^-rate)) or an
    # exponential entry time before year 11
    rate = w.care_entry_rate[sel]
    same_day = 0.1 * (1 - np.exp(-rate))
    true_ps = same_day + (1 - same_day) * (1 - np.exp(-rate * np.clip(years_left, 0, None)))
    y = np.where(t == 1, e["level2_p1"], e["level2_p0"]).astype(float)
    truth = float((e["level2_p1"] - e["level2_p0"])[t == 1].mean())
    return designs, t, y, true_ps, truth


def main(argv: list[str] | None = None) -> None:
    from models.effects import ipw_point
    from models.propensity import PropensityScoreFitter
    from synthetic_data import generate_world
    from synthetic_data.scenario import load_scenario
    from synthetic_data.world import build_world

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--children", type=int, default=20_000)
    a = ap.parse_args(argv)
    models = {
        "every cause, maximum likelihood, cloglog": ("likelihood", "cloglog", "causes"),
        "every cause, entropy balancing": ("balancing", "logit", "causes"),
        "pipeline's view, entropy balancing (pipeline default)": ("balancing", "logit", "seen"),
        "pipeline's view, maximum likelihood, logit": ("likelihood", "logit", "seen"),
        "pipeline's view, ML cloglog + log years to year 11": (
            "likelihood",
            "cloglog",
            "seen_time",
        ),
    }
    scenario = load_scenario("default")
    rows = []
    for seed in range(1, a.seeds + 1):
        with tempfile.TemporaryDirectory(prefix=f"ipw_oracle_{seed}_") as tmp:
            generate_world(n_children=a.children, seed=seed, out_dir=tmp, file_format="parquet")
            world = build_world(a.children, scenario, seed)  # the latent arrays, same seed
            designs, t, y, true_ps, truth = truth_cohort(Path(tmp) / "truth", world)
        exact = np.where(t == 1, 1.0, true_ps / (1 - true_ps))
        rows.append(
            {
                "seed": seed,
                "propensity": "the world's own (no estimation)",
                "bias": ipw_point(y, t, exact) - truth,
            }
        )
        for name, (method, link, design) in models.items():
            ps = PropensityScoreFitter("ATT", truncate=None, method=method, link=link).fit(
                designs[design], t
            )
            bias = ipw_point(y, t, ps.weights_) - truth
            rows.append({"seed": seed, "propensity": name, "bias": bias})
        sys.stderr.write(f"seed {seed}: {int(t.sum())} exposed, {int((1 - t).sum())} not\n")
    d = pd.DataFrame(rows).groupby("propensity", sort=False)["bias"]
    table = pd.DataFrame({"mean bias": d.mean(), "SE of mean": d.std() / np.sqrt(d.size())})
    print(f"Level-2 IPW bias, true covariates, {a.seeds} seeds of {a.children:,} children:")
    print(table.round(4).to_string())


if __name__ == "__main__":
    main()
