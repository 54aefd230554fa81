"""``generate_world``: the synthetic world, its messy extracts and its truth folder."""

from __future__ import annotations

import itertools
import json
import logging
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from ground.errors import ConfigError
from schemas.contracts import SOURCES
from synthetic_data.entry_trials import write_entry_trial_truth
from synthetic_data.extracts import ETH_CODES, NoiseLog, build_sources, iso, text
from synthetic_data.heap import freed_memory_kept
from synthetic_data.layouts import LAYOUT_FILES, layout_names, layout_writer
from synthetic_data.scenario import Scenario, load_scenario, scenario_to_yaml
from synthetic_data.world import (
    ADVERSITIES,
    MAX_YEARS_SINCE_ENTRY,
    YEAR,
    World,
    add_health_events,
    build_world,
    observed_ks4,
)

log = logging.getLogger(__name__)

FileFormat = Literal["csv", "parquet"]
Progress = Callable[[str], None]

CODE_DEFECT: dict[str, tuple[str, str]] = {
    "population_register": ("ethnicity", "ZZZZ"),
    "school_census": ("special_needs", "Q"),
    "attainment": ("key_stage", "KS3"),
    "hospital_admissions": ("admission_method", "99"),
    "emergency_department": ("diagnosis", "9XX"),
    "care_support_census": ("category_of_need", "N0"),
    "looked_after_episodes": ("placement_type", "U9"),
}
PLACEHOLDER_COLUMN: dict[str, str] = {
    "population_register": "date_of_birth",
    "school_census": "date_of_birth",
    "hospital_admissions": "admission_date",
    "emergency_department": "arrival_date",
    "care_support_census": "referral_date",
    "looked_after_episodes": "episode_start",
}
UNPARSEABLE = ["2015-13-45", "31/02/2015", "unknown", "0000-00-00"]


@dataclass(frozen=True)
class StepUsage:
    """The process's resources over one generator step (from its progress message to the
    next; the health and writer threads' work falls in whichever step it overlaps)."""

    step: str
    wall_seconds: float
    user_seconds: float
    system_seconds: float
    minor_faults: int
    peak_gib: float  # the process's peak so far


def _usage() -> tuple[float, float, float, int, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt, r.ru_maxrss / 2**20


@dataclass
class SynthSummary:
    """What was written: rows per source, and where; the resources of each step."""

    out_dir: Path
    scenario: str
    n_children: int
    seed: int
    row_counts: dict[str, int] = field(default_factory=dict)
    steps: list[StepUsage] = field(default_factory=list)

    def steps_markdown(self) -> str:
        lines = [
            "| step | wall s | user s | system s | minor faults | peak GiB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {u.step} | {u.wall_seconds:.1f} | {u.user_seconds:.1f} | {u.system_seconds:.1f}"
            f" | {u.minor_faults:,} | {u.peak_gib:.2f} |"
            for u in self.steps
        ]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = [
            f"Synthetic world `{self.scenario}`: {self.n_children:,} children, seed {self.seed}",
            "",
            "| source | rows |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {v:,} |" for k, v in self.row_counts.items()]
        return "\n".join(lines)


def _inject_defects(
    source: str,
    cols: dict[str, pl.Series],
    sc: Scenario,
    rng: np.random.Generator,
    file_format: FileFormat,
) -> tuple[dict[str, pl.Series], list[tuple[str, str]], np.ndarray, np.ndarray]:
    """Apply each defect to a disjoint random set of rows. Returns the columns, the defect log,
    the rows to write in order (a duplicated row twice) and which of those are malformed."""
    d = sc.defects
    m = cols["record_id"].len()
    perm = rng.permutation(m)
    used = np.zeros(m, bool)
    defects: list[tuple[str, str]] = []

    def take(rate: float, eligible: np.ndarray | None = None) -> np.ndarray:
        """Rows for one defect, disjoint from the rows of every earlier defect."""
        k = int(rng.binomial(m, rate)) if m else 0
        cand = perm[~used[perm]]
        if eligible is not None:
            cand = cand[eligible[cand]]
        chosen = np.sort(cand[:k])
        used[chosen] = True
        return chosen

    rid = cols["record_id"]

    def log_rows(rows: np.ndarray, defect: str) -> None:
        defects.extend((r, defect) for r in rid.gather(rows).to_list())

    if source in PLACEHOLDER_COLUMN:
        rows = take(d.placeholder_date)
        cols[PLACEHOLDER_COLUMN[source]].scatter(rows, "1900-01-01")
        log_rows(rows, "placeholder_date")
        dates = [c.name for c in SOURCES[source].columns if c.dtype == "date"]
        rows = take(d.unparseable_date)
        which = rng.integers(0, len(dates), rows.size)
        for j, col in enumerate(dates):
            sel = rows[which == j]
            cols[col].scatter(sel, text(UNPARSEABLE, rng.integers(0, len(UNPARSEABLE), sel.size)))
        log_rows(rows, "unparseable_date")
    col, bad = CODE_DEFECT[source]
    rows = take(d.code_outside_list)
    cols[col].scatter(rows, bad)
    log_rows(rows, "code_outside_list")
    if "nhs_number" in cols:
        nhs = cols["nhs_number"]
        rows = take(d.nhs_number_wrong_length, nhs.is_not_null().to_numpy())
        nhs.scatter(rows, nhs.gather(rows) + "7")
        log_rows(rows, "nhs_number_wrong_length")
    if source == "care_support_census":
        referral = cols["referral_date"]
        valid_ref = (
            referral.str.slice(0, 2).is_in(["19", "20"])
            & (referral.str.len_bytes() == 10)
            & (referral.str.slice(4, 1) == "-")
            & (referral != "1900-01-01")
        )
        rows = take(d.referral_after_closure, valid_ref.fill_null(False).to_numpy())
        ref = referral.gather(rows).str.to_date("%Y-%m-%d").cast(pl.Int64).to_numpy()
        cols["closure_date"].scatter(rows, iso(ref - rng.integers(1, 60, rows.size)))
        log_rows(rows, "referral_after_closure")
    malformed = np.zeros(0, np.int64)
    if file_format == "csv":
        malformed = take(d.malformed_line)
        log_rows(malformed, "malformed_line")
    dup = take(d.duplicate_row)
    log_rows(dup, "duplicate_row")
    reps = np.ones(m, np.int64)
    reps[dup] = 2
    rows_out = np.repeat(np.arange(m), reps)  # a duplicated row follows its original
    keep_mal = np.zeros(m, bool)
    keep_mal[malformed] = True
    malformed = np.flatnonzero(keep_mal[rows_out] & np.r_[True, rows_out[1:] != rows_out[:-1]])
    return cols, defects, rows_out, malformed


def _frame(cols: dict[str, pl.Series]) -> pl.DataFrame:
    """The columns as a frame, each series named by its column; ``cols`` is emptied."""
    return pl.DataFrame([cols.pop(k).alias(k) for k in list(cols)])


def _typed_frame(data: dict[str, object]) -> pl.DataFrame:
    """A frame from numpy arrays and String series; object (text) arrays become String."""
    out: dict[str, object] = {}
    for k, v in data.items():
        if isinstance(v, pl.Series):
            out[k] = v.alias(k)
            continue
        arr = np.asarray(v)
        out[k] = pl.Series(k, arr.tolist(), dtype=pl.String) if arr.dtype == object else arr
    return pl.DataFrame(out)


CSV_CHUNK_ROWS = 1_000_000


def _write_extract(
    df: pl.DataFrame,
    rows_out: np.ndarray,
    malformed: np.ndarray,
    path: Path,
    file_format: FileFormat,
) -> None:
    """Write ``df``'s rows in the order ``rows_out`` gives. CSV: the good rows a million at a
    time (so no second copy of a large frame is alive), then each malformed row with one field
    too many."""
    if file_format == "parquet":  # every column as text, as the CSV reader sees it
        df = df.with_columns(pl.exclude(pl.String).cast(pl.String))
        df.gather(rows_out).write_parquet(path, compression="zstd", statistics=False)
        return
    bad = np.zeros(rows_out.size, bool)
    bad[malformed] = True
    with path.open("wb") as fh:
        for start in range(0, max(rows_out.size, 1), CSV_CHUNK_ROWS):
            stop = start + CSV_CHUNK_ROWS
            df.gather(rows_out[start:stop][~bad[start:stop]]).write_csv(
                fh,
                include_header=start == 0,
                null_value="",
                quote_style="necessary",
                line_terminator="\n",
            )
    if malformed.size:
        text = df.gather(rows_out[malformed]).write_csv(
            include_header=False, null_value="", quote_style="necessary", line_terminator="\n"
        )
        with path.open("a", encoding="utf-8", newline="") as fh2:
            for line in text.splitlines():
                fh2.write(line + ",EXTRA\n")  # one field too many


def _write_source(
    source: str,
    cols: dict[str, pl.Series],
    sc: Scenario,
    rng: np.random.Generator,
    file_format: FileFormat,
    out: Path,
    layouts: tuple[str, ...] = (),
) -> tuple[str, int, list[tuple[str, str]]]:
    """Inject the source's defects and write its file; returns the source, its row count and
    its defect log (record id, defect)."""
    contract = SOURCES[source]
    c, defects, rows_out, malformed = _inject_defects(source, cols, sc, rng, file_format)
    for other in out.glob(f"{contract.file_stem}.*"):
        other.unlink()
    layout_writes = layout_writer(layouts, source)
    if layout_writes is not None:  # a return layout instead
        layout_writes(_frame(c), rows_out, malformed, out)
        return source, rows_out.size, defects
    path = out / f"{contract.file_stem}.{file_format}"
    _write_extract(_frame(c), rows_out, malformed, path, file_format)
    return source, rows_out.size, defects


def _persons_truth(w: World, ks4_has: np.ndarray, ks2_has: np.ndarray) -> pl.DataFrame:
    first_entry = np.full(w.n, -1, np.int64)
    firsts = np.r_[True, w.care_person[1:] != w.care_person[:-1]]
    first_entry[w.care_person[firsts]] = w.care_start[firsts]
    care_days = np.bincount(w.care_person, weights=w.care_end - w.care_start, minlength=w.n)
    moves = np.bincount(w.ep_person, weights=np.isin(w.ep_reason_start, ["P", "T"]), minlength=w.n)
    long_first = np.zeros(w.n, bool)
    first_len = (w.care_end - w.care_start)[firsts]
    long_first[w.care_person[firsts]] = first_len >= 365
    reasons = np.array(["age18", "left_region", "died", "window_end"], dtype=object)
    data: dict[str, object] = {
        "person_id": np.arange(w.n),
        "date_of_birth": w.birth.astype("datetime64[D]"),
        "sex": np.where(w.sex_male, "M", "F"),
        "ethnicity": np.array(ETH_CODES, dtype=object)[w.ethnicity],
        "deprivation_decile": w.decile,
        "family_risk": w.family_risk,
        "disability": w.disability.astype(np.int8),
    }
    for k, a in enumerate(ADVERSITIES):
        data[f"true_{a}"] = w.adversity[:, k].astype(np.int8)
        data[f"{a}_onset"] = iso(w.onset[:, k])
        data[f"recorded_{a}"] = w.recorded1[:, k].astype(np.int8)
        data[f"pre_care_{a}"] = w.pre_care_adversity[:, k].astype(np.int8)
        data[f"{a}_onset_no_care"] = iso(w.onset_no_care[:, k])
    data |= {
        "ever_cin": (w.ref1 >= 0).astype(np.int8),
        "first_cin_date": iso(w.ref1),
        "ever_looked_after": (first_entry >= 0).astype(np.int8),
        "first_care_entry": iso(first_entry),
        "care_days_total": care_days.astype(np.int64),
        "placement_moves": moves.astype(np.int64),
        "care_long": long_first.astype(np.int8),
        "care_days_before_ks4": w.care_days_before_ks4,
        "moves_before_ks4": w.moves_before_ks4,
        "ks4_year_start": iso(w.ks4_start),
        "has_ks4": ks4_has.astype(np.int8),
        "care_days_before_ks2": w.care_days_before_ks2,
        "ks2_year_start": iso(w.ks2_start),
        "has_ks2": ks2_has.astype(np.int8),
        "follow_up_start": iso(w.fu_start),
        "follow_up_end": iso(w.fu_end),
        "follow_up_end_reason": reasons[w.fu_end_reason],
    }
    return _typed_frame(data)


def _effects(
    w: World,
    sc: Scenario,
    ks4_has: np.ndarray,
    absence: list[dict[str, object]] | None = None,
    ks2_has: np.ndarray | None = None,
) -> dict[str, object]:
    """True effects on the scale each estimator targets (ATT among the exposed children)."""
    e = sc.effects
    eligible = (w.ref1 >= 0) & ks4_has & (w.ref1 < w.ks4_start)
    days = w.care_days_before_ks4
    groups = {
        "cla_vs_nla": eligible & (days > 0),
        "long_vs_nla": eligible & (days >= 365),
        "short_vs_nla": eligible & (days > 0) & (days < 365),
    }
    est: list[dict[str, object]] = []
    # the effect on the score as released (clipped to 0-90), which is what any estimator on the
    # data targets: at the floor a child cannot lose points, so it is smaller than the latent
    # effect (about -1.54 vs -1.64 points under `default`)
    observed_effect = observed_ks4(w.ks4_y0 + w.ks4_effect) - observed_ks4(w.ks4_y0)
    for contrast, sel in groups.items():
        n = int(sel.sum())
        est.append(
            {
                "outcome": "ks4_score",
                "contrast": contrast,
                "scale": "mean_difference",
                "value": float(observed_effect[sel].mean()) if n else 0.0,
                "latent_value": float(w.ks4_effect[sel].mean()) if n else 0.0,
                "description": f"ATT: mean effect on the released KS4 score among {n} exposed "
                "children (care before year 11); latent_value: on the unclipped latent score",
            }
        )
        est.append(
            {
                "outcome": "ks4_level2_inclusive",
                "contrast": contrast,
                "scale": "risk_difference",
                "value": float((w.level2_p1[sel] - w.level2_p0[sel]).mean()) if n else 0.0,
                "description": "ATT: mean change in probability of level 2 inclusive",
            }
        )
    est.append(
        {
            "outcome": "ks4_score",
            "contrast": "per_placement_move",
            "scale": "mean_difference",
            "value": e.ks4_per_placement_move,
            "description": "KS4 points per placement move before year 11",
        }
    )
    est.append(
        {
            "outcome": "ks4_level2_inclusive",
            "contrast": "long_vs_nla",
            "scale": "odds_ratio",
            "value": float(np.exp(e.level2_log_or_long)),
            "description": "conditional on the latent KS4 score (not identifiable from data)",
        }
    )
    est += _modified_ks4_effects(w, groups["cla_vs_nla"], observed_effect)
    ks2_exposed = (
        (w.ref1 >= 0)
        & (w.ref1 < w.ks2_start)
        & (ks2_has if ks2_has is not None else True)
        & (w.care_days_before_ks2 > 0)
    )
    n2 = int(ks2_exposed.sum())
    est.append(
        {
            "outcome": "ks2_expected_standard",
            "contrast": "cla_vs_nla",
            "scale": "risk_difference",
            "value": float((w.ks2_p1 - w.ks2_p0)[ks2_exposed].mean()) if n2 else 0.0,
            "description": f"ATT: mean change in probability of the KS2 expected standard among "
            f"{n2} children in need looked after before the KS2 year (year 6)",
        }
    )
    est += _absence_effects(w) if absence is None else absence
    for outcome, lhr in (
        ("self_harm", e.log_hr_self_harm),
        ("emergency_admission", e.log_hr_emergency_admission),
        ("mental_health_admission", e.log_hr_mental_health_admission),
        ("appendicitis", 0.0),
        ("dental_caries", 0.0),
    ):
        affected = lhr != 0.0 or outcome not in NEGATIVE_CONTROLS
        est.append(
            {
                "outcome": outcome,
                "contrast": "cla_vs_nla",
                "scale": "hazard_ratio",
                "value": float(np.exp(lhr)),
                "description": "hazard ratio while looked after (time-varying)"
                + (
                    "; negative control (shares care's causes: adversity, deprivation, authority)"
                    if outcome == "dental_caries"
                    else "; negative control"
                    if outcome in NEGATIVE_CONTROLS
                    else "; for a child with no pre-care adversity in the first year after "
                    "entry when the scenario modifies it"
                ),
            }
        )
        if not affected:
            continue
        for j in range(MAX_YEARS_SINCE_ENTRY + 1):
            est.append(
                {
                    "outcome": outcome,
                    "contrast": f"cla_vs_nla_year_since_entry_{j}",
                    "scale": "hazard_ratio",
                    "value": float(np.exp(lhr + e.log_hr_care_per_year_since_entry * j)),
                    "description": f"hazard ratio while looked after, {j}"
                    + ("+" if j == MAX_YEARS_SINCE_ENTRY else "")
                    + " whole years after first entry, no pre-care adversity",
                }
            )
        est.append(
            {
                "outcome": outcome,
                "contrast": "cla_vs_nla_per_pre_care_adversity",
                "scale": "ratio_of_hazard_ratios",
                "value": float(np.exp(e.log_hr_care_x_adversity)),
                "description": "how much each true adversity begun before entry multiplies the "
                "hazard ratio of being looked after",
            }
        )
    return {"scenario": sc.name, "estimands": est}


NEGATIVE_CONTROLS = ("appendicitis", "dental_caries")
ENTRY_AGE_BANDS = ((0, 5), (5, 11), (11, 18))  # whole years at first entry: 0-4, 5-10, 11-17


def _with_without(
    outcome: str,
    contrast: str,
    scale: str,
    effect: np.ndarray,
    exposed: np.ndarray,
    modifier: np.ndarray,
    what: str,
) -> list[dict[str, object]]:
    """ATT among the exposed with and without a modifier, and their difference."""
    rows: list[dict[str, object]] = []
    means = {}
    for label, sel in (("with", exposed & modifier), ("without", exposed & ~modifier)):
        n = int(sel.sum())
        means[label] = float(effect[sel].mean()) if n else 0.0
        rows.append(
            {
                "outcome": outcome,
                "contrast": f"{contrast}_{label}_{what}",
                "scale": scale,
                "value": means[label],
                "description": f"ATT among the {n} exposed {label} {what} (begun before entry)",
            }
        )
    rows.append(
        {
            "outcome": outcome,
            "contrast": f"{contrast}_with_minus_without_{what}",
            "scale": f"difference_in_{scale}",
            "value": means["with"] - means["without"],
            "description": f"ATT with {what} minus ATT without it (effect modification)",
        }
    )
    return rows


def _modified_ks4_effects(
    w: World, exposed: np.ndarray, observed_effect: np.ndarray
) -> list[dict[str, object]]:
    """KS4 score and level 2 among exposed children (care before year 11) by each pre-care
    adversity and by age at first entry."""
    rows: list[dict[str, object]] = []
    l2 = w.level2_p1 - w.level2_p0
    for k, a in enumerate(ADVERSITIES):
        pre = w.pre_care_adversity[:, k]
        rows += _with_without(
            "ks4_score", "cla_vs_nla", "mean_difference", observed_effect, exposed, pre, a
        )
        rows += _with_without(
            "ks4_level2_inclusive", "cla_vs_nla", "risk_difference", l2, exposed, pre, a
        )
    age = np.where(w.first_entry >= 0, (w.first_entry - w.birth) // YEAR, -1)
    for lo, hi in ENTRY_AGE_BANDS:
        sel = exposed & (age >= lo) & (age < hi)
        n = int(sel.sum())
        rows.append(
            {
                "outcome": "ks4_score",
                "contrast": f"cla_vs_nla_entry_age_{lo}_{hi - 1}",
                "scale": "mean_difference",
                "value": float(observed_effect[sel].mean()) if n else 0.0,
                "description": f"ATT among the {n} exposed children first entering care aged "
                f"{lo}-{hi - 1}",
            }
        )
    return rows


def _absence_effects(w: World) -> list[dict[str, object]]:
    """Absence: ATT over looked-after school years (looked after on at least one day of the
    academic year), overall, by whole years since first entry and by pre-care adversity."""
    sy = w.school_years
    if not sy:
        return []
    effect = sy["absence_rate_factual"].astype(np.float64) - sy["absence_rate_no_care"]
    exposed = sy["looked_after_share"] > 0
    n = int(exposed.sum())
    rows: list[dict[str, object]] = [
        {
            "outcome": "absence_rate",
            "contrast": "looked_after_year",
            "scale": "mean_difference",
            "value": float(effect[exposed].mean()) if n else 0.0,
            "description": f"ATT over the {n} looked-after pupil-years (looked after on at least "
            "one day of the academic year 1 September - 31 August)",
        }
    ]
    share = sy["looked_after_share"].astype(np.float64)
    rows.append(
        {
            "outcome": "absence_rate",
            "contrast": "looked_after_share",
            "scale": "mean_difference",
            "value": float((effect[exposed] / share[exposed]).mean()) if n else 0.0,
            "description": "effect per full academic year looked after: mean over the "
            f"{n} looked-after pupil-years of the effect divided by the share of the year "
            "looked after (for a model with the share as exposure)",
        }
    )
    since = sy["years_since_entry"]
    for j in range(MAX_YEARS_SINCE_ENTRY + 1):
        sel = exposed & ((since == j) if j < MAX_YEARS_SINCE_ENTRY else (since >= j))
        m = int(sel.sum())
        rows.append(
            {
                "outcome": "absence_rate",
                "contrast": f"looked_after_year_since_entry_{j}",
                "scale": "mean_difference",
                "value": float(effect[sel].mean()) if m else 0.0,
                "description": f"ATT over the {m} looked-after pupil-years starting {j}"
                + ("+" if j == MAX_YEARS_SINCE_ENTRY else "")
                + " whole years after first entry",
            }
        )
    person = sy["person_id"]
    for k, a in enumerate(ADVERSITIES):
        rows += _with_without(
            "absence_rate",
            "looked_after_year",
            "mean_difference",
            effect,
            exposed,
            w.pre_care_adversity[person, k],
            a,
        )
    return rows


def generate_world(
    *,
    n_children: int,
    seed: int,
    scenario: str | Path | Scenario = "default",
    out_dir: str | Path,
    file_format: FileFormat = "csv",
    progress: Progress | None = None,
    layout: str | Sequence[str] | None = None,
) -> SynthSummary:
    """Generate a synthetic world and write its seven extracts and ``truth/`` to ``out_dir``.

    The same ``n_children``, ``seed`` and scenario give byte-identical files.
    """
    with freed_memory_kept():  # see synthetic_data/heap.py: a third less system time at 1M
        return _generate_world(
            n_children=n_children,
            seed=seed,
            scenario=scenario,
            out_dir=out_dir,
            file_format=file_format,
            progress=progress,
            layout=layout,
        )


def _generate_world(
    *,
    n_children: int,
    seed: int,
    scenario: str | Path | Scenario,
    out_dir: str | Path,
    file_format: FileFormat,
    progress: Progress | None,
    layout: str | Sequence[str] | None,
) -> SynthSummary:
    if n_children < 100:
        raise ConfigError(f"--children must be at least 100 (got {n_children})")
    if file_format not in ("csv", "parquet"):
        raise ConfigError(f"--format must be csv or parquet (got {file_format!r})")
    layouts = layout_names(layout)  # the delivery's return layouts (ConfigError if wrong)
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    report = progress or (lambda msg: log.info("%s", msg))
    marks: list[tuple[str, tuple[float, float, float, int, float]]] = []

    def step(msg: str) -> None:
        marks.append((msg, _usage()))
        report(msg)

    out = Path(out_dir)
    truth = out / "truth"
    if truth.exists():
        shutil.rmtree(truth)
    truth.mkdir(parents=True, exist_ok=True)
    for pattern in LAYOUT_FILES:  # a return layout's files from an earlier world
        for stale in out.glob(pattern):
            stale.unlink()
    step("simulating people, adversity, social services, care, school and health")
    w = build_world(n_children, sc, seed, with_health=False)
    step("writing records with identifier noise")
    nlog = NoiseLog()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    summary = SynthSummary(out, sc.name, n_children, seed)
    record_person = []
    ks4_has = np.zeros(w.n, bool)
    ks2_has = np.zeros(w.n, bool)
    absence: list[dict[str, object]] = []
    # Two threads beside this one (polars and most of numpy release the GIL, so the two cores
    # overlap):
    # - the health events are drawn while the identities and the population register are
    #   built, and are waited for before the school census is built (both at once would
    #   double the peak memory at 1M);
    # - each source is written (defects, frame, file) by one writer thread, in source order
    #   (so the defect generator draws in the same order), while the next sources are built:
    #   this thread never waits for a write, so the school census (ten million rows at 1M)
    #   is written while everything after it is built and the truth is written. The sources
    #   after it are small (together about a quarter of its cells).
    writes: list[Future[tuple[str, int, list[tuple[str, str]]]]] = []
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-health") as health_thread,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-writer") as writer,
    ):
        health = health_thread.submit(add_health_events, w, sc, seed)
        for source, source_cols, owner in build_sources(w, sc, seed, nlog):
            if source == "attainment":
                ks4_has[owner[(source_cols["key_stage"] == "KS4").to_numpy()]] = True
                ks2_has[owner[(source_cols["key_stage"] == "KS2").to_numpy()]] = True
            record_person.append(
                pl.DataFrame({"record_id": source_cols["record_id"], "person_id": owner}).select(
                    source=pl.lit(source), record_id="record_id", person_id="person_id"
                )
            )
            step(f"writing {source}")
            writes.append(
                writer.submit(
                    _write_source, source, source_cols, sc, rng, file_format, out, layouts
                )
            )
            del source_cols, owner
            if source == "population_register":
                health.result()
            if source == "school_census":  # its per-pupil-year truth, then freed
                absence = _absence_effects(w)
                pl.DataFrame(w.school_years).write_parquet(
                    truth / "school_years.parquet", statistics=False
                )
                w.school_years = {}
        step("writing truth")
        _write_world_truth(w, sc, seed, truth, record_person, ks4_has, ks2_has, absence, nlog)
        defect_rows = []
        for done in writes:
            source, rows, defects = done.result()
            summary.row_counts[source] = rows
            defect_rows += [(source, r, d) for r, d in defects]
    (out / "delivery.json").write_text(
        json.dumps(
            {
                "generator": "synthetic_data",
                "scenario": sc.name,
                "seed": seed,
                "n_children": n_children,
                "format": file_format,
                **({"layouts": list(layouts)} if layouts else {}),
            },
            sort_keys=True,
        )
        + "\n",
        encoding="utf-8",
    )
    pl.DataFrame(
        defect_rows,
        schema={"source": pl.String, "record_id": pl.String, "defect": pl.String},
        orient="row",
    ).sort("source", "record_id", "defect").write_parquet(
        truth / "defects.parquet", statistics=False
    )
    marks.append(("", _usage()))
    # each interval is named by what the main thread did in it (the health and writer threads
    # work alongside): the simulation, building each source ("writing X" is reported once X is
    # built), then the truth while the last extracts are written
    for i, ((_, a), (end, b)) in enumerate(itertools.pairwise(marks)):
        built = end.removeprefix("writing ")
        if i == 0:
            name = "simulating the world"
        elif built in SOURCES:
            name = f"building {built}"
        elif not end:
            name = "writing truth, the last extracts and the defect log"
        else:
            continue  # handing the last source to the writer: nothing is done
        summary.steps.append(
            StepUsage(name, b[0] - a[0], b[1] - a[1], b[2] - a[2], b[3] - a[3], peak_gib=b[4])
        )
    return summary


def _write_world_truth(
    w: World,
    sc: Scenario,
    seed: int,
    truth: Path,
    record_person: list[pl.DataFrame],
    ks4_has: np.ndarray,
    ks2_has: np.ndarray,
    absence: list[dict[str, object]],
    nlog: NoiseLog,
) -> None:
    """Every truth file but the defects (written once every source is): who each record
    belongs to, the persons, their care history, identifier noise, potential outcomes, the
    scenario, the true effects and the truth of the KS4 "enter now versus not now" trials."""
    pl.concat(record_person).write_parquet(truth / "record_person.parquet", statistics=False)
    _persons_truth(w, ks4_has, ks2_has).write_parquet(truth / "persons.parquet", statistics=False)
    _typed_frame(
        {
            "person_id": w.ep_person,
            "period": w.ep_period,
            "start": iso(w.ep_start),
            "end": iso(w.ep_end),
            "reason_start": w.ep_reason_start,
            "placement_type": w.ep_placement,
            "legal_status": w.ep_legal,
        }
    ).with_columns(
        placement_seq=pl.int_range(pl.len()).over("person_id", "period") + 1
    ).write_parquet(truth / "care_history.parquet", statistics=False)
    _noise_frame(nlog).write_parquet(truth / "identifier_noise.parquet", statistics=False)
    pl.DataFrame(
        {
            "person_id": np.arange(w.n),
            "ks4_y0": w.ks4_y0,
            "ks4_effect": w.ks4_effect,
            "level2_p0": w.level2_p0,
            "level2_p1": w.level2_p1,
            "ks2_p0": w.ks2_p0,
            "ks2_p1": w.ks2_p1,
        }
    ).write_parquet(truth / "potential_outcomes.parquet", statistics=False)
    (truth / "scenario.yaml").write_text(scenario_to_yaml(sc), encoding="utf-8")
    (truth / "effects.json").write_text(
        json.dumps(_effects(w, sc, ks4_has, absence, ks2_has), indent=2, sort_keys=True) + "\n",
        encoding="utf-8",
    )
    write_entry_trial_truth(w, sc, seed, ks4_has, truth)


def _noise_frame(nlog: NoiseLog) -> pl.DataFrame:
    return nlog.frame("noise")
