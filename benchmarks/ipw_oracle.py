"""Level-2 IPW bias with the TRUE care-entry covariates (a diagnostic, not a test).

    uv run --locked python benchmarks/ipw_oracle.py [--seeds 40] [--children 20000]

Why: the pipeline's level-2 (risk difference) IPW estimate runs about +0.012 above the truth
over 40 seeds of 20,000 children. This script asks whether that comes from the data
(linkage, cohort derivation) or from the propensity model itself. For each seed it generates
the world and, from ``truth/`` only, forms the education cohort the truth defines (children in
need before year 11 with a KS4 result; exposed = looked after before year 11), with the
recorded adversities at the first referral, deprivation, sex, disability, birth year and year
of age at referral: what entry to care depends on, apart from the authority's random effect and
a child-protection plan (noise given the recorded factors). The outcome is each child's expected
level-2 probability under its own exposure (``potential_outcomes.parquet``), so the only error
left is the estimator's. Prints the mean bias (and its standard error over seeds) per
propensity model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))


def truth_cohort(truth_dir: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, float]:
    """Design (true care-entry covariates), exposure, expected level-2 outcome, true ATT."""
    from synthetic_data.world import ADVERSITIES

    p = (
        pl.read_parquet(truth_dir / "persons.parquet")
        .join(pl.read_parquet(truth_dir / "potential_outcomes.parquet"), on="person_id")
        .to_pandas()
    )
    for c in ("date_of_birth", "first_cin_date", "ks4_year_start"):
        p[c] = pd.to_datetime(p[c])
    e = p[(p.ever_cin == 1) & (p.has_ks4 == 1) & (p.first_cin_date < p.ks4_year_start)]
    e = e.reset_index(drop=True)
    t = (e["care_days_before_ks4"] > 0).to_numpy().astype(int)
    x = pd.DataFrame({a: e[f"recorded_{a}"].astype(float) for a in ADVERSITIES})
    x["deprivation_decile"] = e["deprivation_decile"].astype(float)
    x["male"] = (e["sex"] == "M").astype(float)
    x["disability"] = e["disability"].astype(float)
    x["birth_year"] = e["date_of_birth"].dt.year.astype(float)
    age = (e["first_cin_date"] - e["date_of_birth"]).dt.days / 365.25
    band = np.floor(age).clip(0, 16).astype(int)
    x = pd.concat([x, pd.get_dummies(band, prefix="age", drop_first=True).astype(float)], axis=1)
    x = x.loc[:, x.std() > 0]
    years_left = (e["ks4_year_start"] - e["first_cin_date"]).dt.days / 365.25
    x_time = x.assign(log_years_to_year11=np.log(np.maximum(years_left, 1 / 365)))
    y = np.where(t == 1, e["level2_p1"], e["level2_p0"]).astype(float)
    truth = float((e["level2_p1"] - e["level2_p0"])[t == 1].mean())
    return pd.concat({"main": x, "time": x_time}, axis=1), t, y, truth


def main(argv: list[str] | None = None) -> None:
    from models.effects import _ipw_point
    from models.propensity import PropensityScoreFitter
    from synthetic_data import generate_world

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--children", type=int, default=20_000)
    a = ap.parse_args(argv)
    models = {
        "entropy balancing (pipeline default)": ("balancing", "logit", "main"),
        "maximum likelihood, logit": ("likelihood", "logit", "main"),
        "maximum likelihood, cloglog + log years to year 11": ("likelihood", "cloglog", "time"),
    }
    rows = []
    for seed in range(1, a.seeds + 1):
        with tempfile.TemporaryDirectory(prefix=f"ipw_oracle_{seed}_") as tmp:
            generate_world(n_children=a.children, seed=seed, out_dir=tmp, file_format="parquet")
            designs, t, y, truth = truth_cohort(Path(tmp) / "truth")
        for name, (method, link, design) in models.items():
            ps = PropensityScoreFitter("ATT", method=method, link=link).fit(designs[design], t)
            bias = _ipw_point(y, t, ps.weights_) - truth
            rows.append({"seed": seed, "propensity": name, "bias": bias})
        sys.stderr.write(f"seed {seed}: {int(t.sum())} exposed, {int((1 - t).sum())} not\n")
    d = pd.DataFrame(rows).groupby("propensity", sort=False)["bias"]
    table = pd.DataFrame({"mean bias": d.mean(), "SE of mean": d.std() / np.sqrt(d.size())})
    print(f"Level-2 IPW bias, true covariates, {a.seeds} seeds of {a.children:,} children:")
    print(table.round(4).to_string())


if __name__ == "__main__":
    main()
