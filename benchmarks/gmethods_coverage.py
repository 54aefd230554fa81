"""Coverage of the g-method estimators against the synthetic truth, over seeds (not a test).

    uv run --locked python benchmarks/gmethods_coverage.py prepare --scenario S --seeds 1-20
        [--children 20000] [--workdir /work/logs/h8/worlds]
    uv run --locked python benchmarks/gmethods_coverage.py score --scenario S [--children 20000]
        [--workdir ...] [--out coverage_out]
    uv run --locked python benchmarks/gmethods_coverage.py score-msm ...   (only the hazard MSM)
    uv run --locked python benchmarks/gmethods_coverage.py score-itt [--bootstrap 100] ...
        (only the KS4 trials: never, and not now in each form (weighting, doubly robust,
        optionally its bootstrap), scored against both truths)
    uv run --locked python benchmarks/gmethods_coverage.py time-itt --seeds 1-5 ...   (CPU
        seconds of each not-now form on the kept cohorts of the seeds stacked into one)

``prepare`` runs ``synth -> validate (no Great Expectations) -> link -> build`` once per seed and
keeps the world and the built run (``WORKDIR/gm_<scenario>_<children>_<seed>/``): the model
stage is then cheap to repeat. ``score`` loads each kept cohort, fits the g-method analyses of
``cohort/study_default.yaml`` (sequential trial emulation of care entry for KS4, the marginal
structural models of absence by years since entry and of the hospital outcomes' hazards)
beside the baseline-only KS4 estimators (regression, IPW, AIPW with analytic standard
errors), joins every estimate to the world's own
``truth/effects.json`` and prints per estimator: coverage, mean bias (with its Monte Carlo SE),
the SD of the estimates across seeds over their mean SE, and the mean estimate.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.coverage_seeds import SECRET, score, truth_table  # noqa: E402
from schemas.analyses import Analysis  # noqa: E402


def seed_dir(workdir: Path, scenario: str, children: int, seed: int) -> Path:
    return workdir / f"gm_{scenario}_{children}_{seed}"


def prepare_seed(seed: int, scenario: str, children: int, workdir: Path) -> Path:
    """synth -> validate -> link -> build for one seed, kept under ``workdir`` (skipped when
    already built)."""
    from cohort import build_cohort
    from ground.run_layout import RunLayout
    from linkage import link_run
    from orchestration.settings import load_run_settings
    from synthetic_data import generate_world
    from validation import ValidationSettings, validate_delivery

    base = seed_dir(workdir, scenario, children, seed)
    data, run = base / "world", base / "run"
    if (base / "built").exists():
        return base
    base.mkdir(parents=True, exist_ok=True)
    generate_world(n_children=children, seed=seed, scenario=scenario, out_dir=data)
    layout = RunLayout.at(run)
    validate_delivery(
        data_dir=data, layout=layout, settings=ValidationSettings(run_great_expectations=False)
    )
    link_run(layout=layout, settings=load_run_settings(None).linkage, secret=SECRET)
    build_cohort(layout=layout)
    (base / "built").write_text("ok\n", encoding="utf-8")
    return base


def seeds_of(text: str) -> list[int]:
    """``"1-20"`` or ``"3"`` or ``"1,4,7"``."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def scored_analyses() -> list[Analysis]:
    """The declared g-method analyses, their baseline-only twins (weights without the
    time-varying confounders) and the baseline-only KS4 estimators with analytic SEs."""
    from schemas.analyses import DEFAULT_ANALYSES

    declared = [a for a in DEFAULT_ANALYSES if a.estimator in GMETHOD_ESTIMATORS]
    twins = [
        a.model_copy(
            update={
                "name": f"{a.name}_baseline_only",
                "options": {
                    **a.options,
                    "confounders": [],
                    "method": f"{a.options.get('method', DEFAULT_METHOD[a.estimator])}"
                    "_baseline_only",
                },
            }
        )
        for a in declared
        if a.estimator in DEFAULT_METHOD
    ]
    ks4 = next(a for a in DEFAULT_ANALYSES if a.name == "ks4_cla_vs_nla")
    baseline = ks4.model_copy(
        update={
            "options": {
                **ks4.options,
                "methods": ["regression", "ipw", "aipw"],
                "bootstrap": False,
            }
        }
    )
    trials = next(a for a in declared if a.estimator == "sequential_trials")
    doubly_robust = trials.model_copy(
        update={
            "name": f"{trials.name}_dr",
            "options": {**trials.options, "augment": True, "method": "trial_emulation_dr"},
        }
    )
    return [*declared, doubly_robust, *twins, baseline]


DEFAULT_METHOD = {
    "sequential_trials": "trial_emulation",
    "absence_msm": "msm_iptw",
    "hazard_msm": "msm_iptw_hazard",
}
GMETHOD_ESTIMATORS = (*DEFAULT_METHOD, "hazard_by_years_since_entry")


# control weights truncated at these percentiles (SequentialTrialEmulation's
# ``truncate_percentile``, not an option of the declared analysis): truncation's bias, measured
TRUNCATION_PERCENTILES = (99.0, 95.0)


@contextmanager
def trials_truncated_at(percentile: float) -> Iterator[None]:
    """Within the block the study's ``sequential_trials`` estimator fits with its control
    weights truncated at ``percentile`` (it builds ``models.gmethods.SequentialTrialEmulation``
    when it fits, so the class is swapped for one with the cap set)."""
    import models.gmethods as gm

    original = gm.SequentialTrialEmulation

    class Truncated(original):  # type: ignore[valid-type,misc]
        def __init__(
            self,
            replicates: int = 0,
            seed: int = 20240601,
            augment: bool = False,
            comparator: str = "never",
        ):
            super().__init__(
                replicates, seed, augment, truncate_percentile=percentile, comparator=comparator
            )

    gm.SequentialTrialEmulation = Truncated  # type: ignore[misc]
    try:
        yield
    finally:
        gm.SequentialTrialEmulation = original  # type: ignore[misc]


def truncated_trials(cohort: Any) -> pd.DataFrame:
    """The declared trial emulation refitted with its control weights truncated at each of
    :data:`TRUNCATION_PERCENTILES` (method ``trial_emulation_trunc<p>``)."""
    from models.run import run_analyses
    from models.settings import ModelSettings
    from schemas.analyses import DEFAULT_ANALYSES

    trials = next(a for a in DEFAULT_ANALYSES if a.estimator == "sequential_trials")
    parts = []
    for pct in TRUNCATION_PERCENTILES:
        method = f"{trials.options.get('method', 'trial_emulation')}_trunc{pct:g}"
        a = trials.model_copy(
            update={
                "name": f"{trials.name}_trunc{pct:g}",
                "options": {**trials.options, "method": method},
            }
        )
        with trials_truncated_at(pct):
            fitted = run_analyses(cohort, [a], ModelSettings())
        parts.append(fitted.estimates.assign(analysis=fitted.row_analysis))
    return pd.concat(parts, ignore_index=True)


def score_hazard_msm(base: Path) -> pd.DataFrame:
    """Only the declared ``hazard_msm`` analysis and its baseline-only twin on one kept
    cohort, scored (seconds, not minutes)."""
    from ground.run_layout import RunLayout
    from models.estimators import CohortData
    from models.run import load_cohort, run_analyses
    from models.settings import ModelSettings

    cohort = CohortData(*load_cohort(RunLayout.at(base / "run")))
    msm = [a for a in scored_analyses() if a.estimator == "hazard_msm"]
    fitted = run_analyses(cohort, msm, ModelSettings())
    return score(fitted.estimates, truth_table(base / "world" / "truth"))


def with_entry_trial_truth(truth: pd.DataFrame, world: Path) -> pd.DataFrame:
    """The world's truth table plus the KS4 "enter now versus not now" truth
    (``truth/ks4_entry_trials.json``, computed for an older world)."""
    from evaluation.cohort_truth import ks4_enter_now_vs_not_now

    rows = pd.DataFrame(ks4_enter_now_vs_not_now(world)).rename(columns={"value": "truth"})
    return pd.concat([truth, rows[["outcome", "contrast", "scale", "truth"]]], ignore_index=True)


# each trial estimator scored against the other estimand's truth too (method renamed): the
# check can fail, the two truths differ by more than the estimators' error
CROSS_SCORED = {
    "trial_emulation": ("cla_vs_nla", "enter_now_vs_not_now", "trial_emulation_vs_itt_truth"),
    "trial_emulation_itt_weighting": (
        "enter_now_vs_not_now",
        "cla_vs_nla",
        "trial_emulation_itt_weighting_vs_never_truth",
    ),
    "trial_emulation_itt_dr": (
        "enter_now_vs_not_now",
        "cla_vs_nla",
        "trial_emulation_itt_dr_vs_never_truth",
    ),
}


def not_now_forms(bootstrap: int = 0) -> list[Analysis]:
    """The declared not-now trials (``ks4_enter_now_vs_not_now``) in each form, whatever form
    is declared: weighting only (``trial_emulation_itt_weighting``, sandwich SE), doubly
    robust with the analytic sandwich SE (``trial_emulation_itt_dr``) and, with ``bootstrap``
    replicates, doubly robust with bootstrap SEs (``trial_emulation_itt_dr_bootstrap``: the
    analytic SE's check)."""
    from schemas.analyses import DEFAULT_ANALYSES

    itt = next(
        a
        for a in DEFAULT_ANALYSES
        if a.estimator == "sequential_trials" and a.options.get("comparator") == "not_now"
    )
    common = {
        k: v
        for k, v in itt.options.items()
        if k not in ("augment", "bootstrap_replicates", "method")
    }
    forms: dict[str, dict[str, Any]] = {
        "trial_emulation_itt_weighting": {"augment": False},
        "trial_emulation_itt_dr": {"augment": True},
    }
    if bootstrap:
        forms["trial_emulation_itt_dr_bootstrap"] = {
            "augment": True,
            "bootstrap_replicates": bootstrap,
        }
    return [
        itt.model_copy(
            update={"name": f"{itt.name}_{m}", "options": {**common, **opts, "method": m}}
        )
        for m, opts in forms.items()
    ]


def cross_scored(est: pd.DataFrame) -> pd.DataFrame:
    """The rows of :data:`CROSS_SCORED`, filed under the other estimand's contrast."""
    parts = []
    for method, (own, other, renamed) in CROSS_SCORED.items():
        rows = est[(est["method"] == method) & (est["contrast"] == own)]
        parts.append(rows.assign(contrast=other, method=renamed))
    return pd.concat(parts, ignore_index=True)


def score_seed(base: Path) -> pd.DataFrame:
    """Fit :func:`scored_analyses` (and :func:`truncated_trials`) on one kept cohort and score
    them against its truth (with the "enter now versus not now" truth, and each trial
    estimator against the other's truth: :func:`cross_scored`)."""
    from ground.run_layout import RunLayout
    from models.estimators import CohortData
    from models.run import load_cohort, run_analyses
    from models.settings import ModelSettings

    children, pt, sy = load_cohort(RunLayout.at(base / "run"))
    cohort = CohortData(children, pt, sy)
    fitted = run_analyses(cohort, scored_analyses(), ModelSettings())
    est = pd.concat(
        [
            fitted.estimates.assign(analysis=fitted.row_analysis),
            truncated_trials(cohort),
        ],
        ignore_index=True,
    )
    est = pd.concat([est, cross_scored(est)], ignore_index=True)
    truth = with_entry_trial_truth(truth_table(base / "world" / "truth"), base / "world")
    return score(est, truth)


def score_itt(base: Path, bootstrap: int = 0) -> pd.DataFrame:
    """Only the KS4 trials on one kept cohort, scored against both truths (seconds a seed): the
    declared 'never' trials, the not-now trials in each form (:func:`not_now_forms`; with
    ``bootstrap`` replicates also the doubly robust form's bootstrap, about a minute a seed at
    100 on a loaded machine) and the declared not-now trials' baseline-only twin."""
    from ground.run_layout import RunLayout
    from models.estimators import CohortData
    from models.run import load_cohort, run_analyses
    from models.settings import ModelSettings

    cohort = CohortData(*load_cohort(RunLayout.at(base / "run")))
    trials = [a for a in scored_analyses() if a.estimator == "sequential_trials"]
    never = [  # the declared 'never' trials and their baseline-only twin
        a
        for a in trials
        if a.options.get("comparator", "never") == "never" and not a.options.get("augment")
    ]
    not_now_baseline_only = [
        a
        for a in trials
        if a.options.get("comparator") == "not_now" and a.name.endswith("_baseline_only")
    ]
    chosen = [*never, *not_now_forms(bootstrap), *not_now_baseline_only]
    fitted = run_analyses(cohort, chosen, ModelSettings())
    est = fitted.estimates.assign(analysis=fitted.row_analysis)
    est = pd.concat([est, cross_scored(est)], ignore_index=True)
    truth = with_entry_trial_truth(truth_table(base / "world" / "truth"), base / "world")
    return score(est, truth)


def time_not_now_forms(cohort: Any, bootstrap: int = 0) -> None:
    """Wall and CPU seconds of each not-now form (:func:`not_now_forms`) fitted alone on
    ``cohort``."""
    from models.estimators import estimator_for
    from models.settings import ModelSettings

    for a in not_now_forms(bootstrap):
        wall, cpu = time.perf_counter(), time.process_time()
        estimator_for(a, ModelSettings()).fit(cohort)
        sys.stdout.write(
            f"{a.options['method']}: {time.perf_counter() - wall:.1f} s wall, "
            f"{time.process_time() - cpu:.1f} s CPU\n"
        )


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (outcome, contrast, method): seeds, mean truth, coverage, mean bias and its Monte
    Carlo SE, SD of the estimates' errors, mean SE (interval width / 3.92), SD / SE."""
    g = rows.assign(se=rows["width"] / 3.92, covers=rows["covers"].astype(float)).groupby(
        ["outcome", "contrast", "scale", "method"], sort=True
    )
    out = g.agg(
        seeds=("seed", "nunique"),
        truth=("truth", "mean"),
        coverage=("covers", "mean"),
        mean_bias=("bias", "mean"),
        sd=("bias", "std"),
        mean_se=("se", "mean"),
        mean_estimate=("estimate", "mean"),
    ).reset_index()
    out["mcse_bias"] = out["sd"] / np.sqrt(out["seeds"])
    out["sd_over_se"] = out["sd"] / out["mean_se"]
    intervals = {key: sd_over_se_interval(rows_of) for key, rows_of in g}
    keys = out[["outcome", "contrast", "scale", "method"]].itertuples(index=False, name=None)
    out["sd_over_se_low"], out["sd_over_se_high"] = zip(*(intervals[k] for k in keys), strict=True)
    return out


def sd_over_se_interval(rows: pd.DataFrame, resamples: int = 2000) -> tuple[float, float]:
    """95% interval of SD/SE with the seeds resampled (with replacement): its sampling error,
    which at 20 seeds and a heavy-tailed estimate is large (dental caries' hazard MSM: 1.67 on
    seeds 1-20, 0.71 on seeds 21-40; docs/gmethods.md section 3b)."""
    bias, se = rows["bias"].to_numpy(float), rows["se"].to_numpy(float)
    ok = np.isfinite(bias) & np.isfinite(se)
    bias, se = bias[ok], se[ok]
    if bias.size < 3:
        return float("nan"), float("nan")
    pick = np.random.default_rng(0).integers(0, bias.size, (resamples, bias.size))
    ratio = bias[pick].std(axis=1, ddof=1) / se[pick].mean(axis=1)
    low, high = np.quantile(ratio, [0.025, 0.975])
    return float(low), float(high)


def to_markdown(t: pd.DataFrame) -> str:
    lines = [
        "| outcome | contrast | method | seeds | truth (mean) | coverage | mean bias (MCSE) "
        "| SD | mean SE | SD/SE | SD/SE 95% (seeds resampled) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.outcome} | {r.contrast} | {r.method} | {r.seeds} | {r.truth:.4f} | "
        f"{r.coverage:.0%} | {r.mean_bias:+.4f} ({r.mcse_bias:.4f}) | {r.sd:.4f} | "
        f"{r.mean_se:.4f} | {r.sd_over_se:.2f} | {r.sd_over_se_low:.2f}-{r.sd_over_se_high:.2f} |"
        for r in t.itertuples()
    ]
    return "\n".join(lines)


def score_main(a: argparse.Namespace, workdir: Path) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in seeds_of(a.seeds):
        base = seed_dir(workdir, a.scenario, a.children, seed)
        if not (base / "built").exists():
            continue
        t0 = time.perf_counter()
        scorer = {
            "score-msm": score_hazard_msm,
            "score-itt": functools.partial(score_itt, bootstrap=a.bootstrap),
        }.get(a.command, score_seed)
        rows.append(scorer(base).assign(seed=seed))
        sys.stderr.write(f"scored seed {seed}: {time.perf_counter() - t0:.0f} s\n")
    if not rows:
        raise SystemExit(f"no prepared seeds in {workdir} for {a.scenario} at {a.children}")
    r = pd.concat(rows, ignore_index=True)
    suffix = {"score-msm": "_msm", "score-itt": "_itt"}.get(a.command, "")
    name = f"gmethods_{a.scenario}_{a.children}{suffix}"
    (out / f"{name}.json").write_text(r.to_json(orient="records", indent=1), encoding="utf-8")
    table = summary_table(r)
    text = (
        f"G-methods against the truth, scenario {a.scenario}, {a.children:,} children, "
        f"seeds {sorted(r['seed'].unique().tolist())}\n\n" + to_markdown(table) + "\n"
    )
    (out / f"{name}.md").write_text(text, encoding="utf-8")
    sys.stdout.write(text)


def stacked_cohort(workdir: Path, scenario: str, children: int, seeds: list[int]) -> Any:
    """The kept cohorts of ``seeds`` stacked into one (person keys prefixed by seed): five
    20,000-child worlds stand in for a 100,000-child one (same tables, five times the rows)
    without building it."""
    from ground.run_layout import RunLayout
    from models.estimators import CohortData
    from models.run import load_cohort

    parts: list[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]] = []
    for seed in seeds:
        base = seed_dir(workdir, scenario, children, seed)
        if not (base / "built").exists():
            continue
        ch, pt, sy = load_cohort(RunLayout.at(base / "run"))
        parts.append(
            tuple(  # type: ignore[arg-type]
                t.assign(person_key=f"s{seed}_" + t["person_key"].astype(str)) for t in (ch, pt, sy)
            )
        )
    cohort = CohortData(*(pd.concat(list(x), ignore_index=True) for x in zip(*parts, strict=True)))
    sys.stdout.write(
        f"{len(parts)} cohorts stacked: {len(cohort.children):,} children, "
        f"{len(cohort.person_time):,} person-time rows, {len(cohort.school_years):,} school years\n"
    )
    return cohort


def time_stacked(workdir: Path, scenario: str, children: int, seeds: list[int]) -> None:
    """Model-stage time of the declared g-method analyses on the kept cohorts of ``seeds``
    stacked into one (:func:`stacked_cohort`)."""
    from models.estimators import estimator_for
    from models.settings import ModelSettings
    from schemas.analyses import DEFAULT_ANALYSES

    cohort = stacked_cohort(workdir, scenario, children, seeds)
    for a in DEFAULT_ANALYSES:
        if a.estimator not in GMETHOD_ESTIMATORS:
            continue
        t0 = time.perf_counter()
        estimator_for(a, ModelSettings()).fit(cohort)
        sys.stdout.write(f"{a.name}: {time.perf_counter() - t0:.1f} s\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "command", choices=["prepare", "score", "score-msm", "score-itt", "time", "time-itt"]
    )
    p.add_argument("--scenario", default="time_varying_confounding")
    p.add_argument("--seeds", default="1-20")
    p.add_argument("--children", type=int, default=20_000)
    p.add_argument("--workdir", default="/work/logs/h8/worlds")
    p.add_argument("--out", default="coverage_out")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        help="score-itt, time-itt: also the doubly robust not-now trials with this many "
        "bootstrap replicates (the analytic SE's check)",
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if a.command == "prepare":
        for seed in seeds_of(a.seeds):
            t0 = time.perf_counter()
            prepare_seed(seed, a.scenario, a.children, workdir)
            sys.stderr.write(
                f"prepared {a.scenario} seed {seed}: {time.perf_counter() - t0:.0f} s\n"
            )
        return
    if a.command == "time":
        time_stacked(workdir, a.scenario, a.children, seeds_of(a.seeds))
        return
    if a.command == "time-itt":
        cohort = stacked_cohort(workdir, a.scenario, a.children, seeds_of(a.seeds))
        time_not_now_forms(cohort, a.bootstrap)
        return
    score_main(a, workdir)


if __name__ == "__main__":
    main()
