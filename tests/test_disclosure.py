"""Disclosure control as a whole: what leaves the secure environment (release/, report.html,
Prefect artifacts) carries no small count, exact or recoverable by subtraction across tables."""

from __future__ import annotations

import base64
import html
import itertools
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from models.disclosure import (
    SUPPRESSED,
    WITHHELD,
    DisclosureSettings,
    control_release,
    km_yearly,
    recoverable_cells,
)
from models.outputs import read_release_csv, write_release_csv
from tests.e2e import _cohort, _env

RELEASED_TABLES = ("attrition", "table1_counts", "estimates")


def read_release(release_dir: Path) -> dict[str, pd.DataFrame]:
    return {
        n: read_release_csv(release_dir / f"{n}.csv")
        for n in RELEASED_TABLES
        if (release_dir / f"{n}.csv").exists()
    }


def as_released_text(tables: dict[str, pd.DataFrame], tmp: Path) -> dict[str, pd.DataFrame]:
    """Write in the release file format and read back, as a reader would get them."""
    tmp.mkdir(parents=True, exist_ok=True)
    for n, df in tables.items():
        write_release_csv(df, tmp / f"{n}.csv")
    return read_release(tmp)


def true_tables(run: Path) -> dict[str, pd.DataFrame]:
    """The full-precision tables behind a run's release (secure side)."""
    from ground.db import connect

    con = connect(run / "analysis_zone.duckdb", read_only=True)
    try:
        att = con.sql("SELECT * FROM cohort.attrition ORDER BY step").df()
    finally:
        con.close()
    t1 = pd.read_csv(run / "results" / "table1.csv")
    est = pd.read_csv(run / "results" / "estimates.csv", keep_default_na=False, na_values=[""])
    est["warning"] = est["warning"].fillna("")
    return {
        "attrition": att,
        "table1_counts": t1[["characteristic", "n_CLA", "n_NLA"]].fillna(0),
        "estimates": est,
    }


# --- 1. estimates: events behind each estimate, withheld with their counts ---------------------


def _hazard_rows(children: pd.DataFrame, outcome: str) -> dict[str, object]:
    """One release-input row from a patient-level table (person, looked_after, event)."""
    exp = children["looked_after"] == 1
    return {
        "outcome": outcome,
        "contrast": "cla_vs_nla",
        "method": "cox_tv",
        "scale": "hazard_ratio",
        "estimate": 2.3456789,
        "ci_low": 1.1234567,
        "ci_high": 4.987654,
        "p_value": 0.0123456,
        "n_exposed": int(exp.sum()),
        "n_unexposed": int((~exp).sum()),
        "events_exposed": int(children.loc[exp, "event"].sum()),
        "events_unexposed": int(children.loc[~exp, "event"].sum()),
        "warning": "no events while looked after" if children.loc[exp, "event"].sum() == 0 else "",
    }


def _children(n_exp: int, ev_exp: int, n_unexp: int, ev_unexp: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "person": range(n_exp + n_unexp),
            "looked_after": [1] * n_exp + [0] * n_unexp,
            "event": [1] * ev_exp
            + [0] * (n_exp - ev_exp)
            + [1] * ev_unexp
            + [0] * (n_unexp - ev_unexp),
        }
    )


def test_estimates_on_few_events_are_withheld_with_their_counts() -> None:
    est = pd.DataFrame(
        [
            _hazard_rows(_children(120, 31, 900, 200), "self_harm"),
            _hazard_rows(_children(120, 3, 900, 200), "mental_health_admission"),
            _hazard_rows(_children(120, 0, 900, 12), "appendicitis"),
            _hazard_rows(_children(120, 40, 900, 4), "emergency_admission"),
        ]
    )
    out = control_release({"estimates": est}).tables["estimates"]
    cols = ["outcome", "estimate", "ci_low", "ci_high", "p_value"]
    cols += ["n_exposed", "n_unexposed", "events_exposed", "events_unexposed", "note"]
    expected = pd.DataFrame(
        [
            ["self_harm", "2.35", "1.12", "4.99", "0.012", "120", "900", "30", "200", ""],
            ["mental_health_admission", *[WITHHELD] * 4, *[SUPPRESSED] * 4, "withheld"],
            ["appendicitis", *[WITHHELD] * 4, *[SUPPRESSED] * 4, "withheld"],
            ["emergency_admission", *[WITHHELD] * 4, *[SUPPRESSED] * 4, "withheld"],
        ],
        columns=cols,
    )
    got = out[cols].copy()
    got["note"] = got["note"].str.split(":").str[0]
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected)
    # the fitter's free text ("no events while looked after") never reaches the release, and no
    # note carries a number
    assert not out.apply(lambda c: c.astype(str).str.contains("no events")).any().any()
    assert not out["note"].str.contains(r"\d").any()


def test_withheld_effect_modification_rows_go_together() -> None:
    """A withheld within-CLA row would come back as the NLA row plus the interaction row."""
    rows = []
    for contrast, n_e, n_u in (
        ("physical_abuse_x_cla", 95, 115),
        ("physical_abuse_in_cla", 6, 89),  # 6 looked-after children with the adversity
        ("physical_abuse_in_nla", 20, 95),
        ("domestic_abuse_x_cla", 95, 115),
        ("domestic_abuse_in_cla", 30, 65),
        ("domestic_abuse_in_nla", 20, 95),
    ):
        rows.append(
            {
                "outcome": "ks4_score",
                "contrast": contrast,
                "method": "regression",
                "scale": "mean_difference",
                "estimate": -1.5,
                "ci_low": -3.0,
                "ci_high": 0.1,
                "p_value": 0.04,
                "n_exposed": n_e,
                "n_unexposed": n_u,
                "warning": "",
            }
        )
    out = control_release({"estimates": pd.DataFrame(rows)}).tables["estimates"]
    pa = out[out["contrast"].str.startswith("physical_abuse")]
    assert (pa["estimate"] == WITHHELD).all()
    assert (pa[["n_exposed", "n_unexposed"]] == SUPPRESSED).all().all()
    da = out[out["contrast"].str.startswith("domestic_abuse")]
    assert (da["estimate"] != WITHHELD).all()


def _strata_rows() -> pd.DataFrame:
    """KS4 by domestic abuse: the whole comparison and its two strata (6 looked-after
    children with the adversity), as models.estimators.StratifiedEffect names them."""
    rows = []
    for contrast, n_e, n_u in (
        ("cla_vs_nla", 96, 420),
        ("cla_vs_nla_with_domestic_abuse", 6, 130),
        ("cla_vs_nla_without_domestic_abuse", 90, 290),
    ):
        rows.append(
            {
                "outcome": "ks4_score",
                "contrast": contrast,
                "method": "aipw",
                "scale": "mean_difference",
                "estimate": -1.5,
                "ci_low": -3.0,
                "ci_high": 0.1,
                "p_value": 0.04,
                "n_exposed": n_e,
                "n_unexposed": n_u,
                "warning": "",
            }
        )
    return pd.DataFrame(rows)


def test_a_withheld_stratum_is_not_recoverable_from_its_sibling_and_the_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The strata of a comparison add up to the whole comparison (released too): the attacker's
    check knows it, and secondary suppression protects the small stratum along it."""
    released = control_release({"estimates": _strata_rows()}).tables
    out = released["estimates"].set_index("contrast")
    assert out.loc["cla_vs_nla_with_domestic_abuse", "n_exposed"] == SUPPRESSED
    assert recoverable_cells(as_released_text(released, tmp_path / "controlled")) == []

    # planted error: primary suppression only; the sibling and the whole give the 6 back
    import models.disclosure as d

    monkeypatch.setattr(d, "protect", lambda values, sensitive, *a, **k: set(sensitive))
    leaky = as_released_text(control_release({"estimates": _strata_rows()}).tables, tmp_path / "x")
    found = {r.cell: (r.low, r.high) for r in recoverable_cells(leaky)}
    cell = ("estimates", "ks4_score|cla_vs_nla_with_domestic_abuse|all", "n_exposed")
    assert cell in found and found[cell][0] <= 6 <= found[cell][1], found


# --- 2. complementary suppression that survives differencing ----------------------------------


def test_the_issue_example_is_not_recoverable(tmp_path: Path) -> None:
    """NLA deprivation quintile 5 = 195 - (20+45+75+40) = 15 in the issue; here a small
    quintile next to a released total."""
    t1 = pd.DataFrame(
        {
            "characteristic": [*(f"deprivation_quintile_{q}" for q in range(1, 6)), "children"],
            "n_CLA": [50, 52, 36, 4, 3, 145],
            "n_NLA": [21, 44, 76, 41, 13, 195],
        }
    )
    att = pd.DataFrame(
        {
            "step": [1, 2],
            "description": ["all", "kept"],
            "n_remaining": [346, 340],
            "n_excluded": [0, 6],
        }
    )
    rel = control_release({"attrition": att, "table1_counts": t1}).tables
    assert recoverable_cells(as_released_text(rel, tmp_path)) == []
    q = rel["table1_counts"].set_index("characteristic")
    assert q.loc["deprivation_quintile_4", "n_CLA"] == SUPPRESSED
    assert q.loc["deprivation_quintile_5", "n_CLA"] == SUPPRESSED
    assert rel["attrition"]["n_excluded"].tolist() == ["0", SUPPRESSED]


@pytest.mark.parametrize(
    "settings",
    [
        DisclosureSettings(),
        DisclosureSettings(threshold=15, rounding=5),
        DisclosureSettings(threshold=20, rounding=5),
        DisclosureSettings(threshold=30, rounding=5),
        DisclosureSettings(threshold=60, rounding=10),
    ],
    ids=["10-5", "15-5", "20-5", "30-5", "60-10"],
)
def test_nothing_recoverable_by_differencing_across_a_runs_tables(
    full_run: Path, tmp_path: Path, settings: DisclosureSettings
) -> None:
    """The run's own release, and its true tables released again under stricter thresholds
    (more small cells, longer chains of secondary suppression), read back as text: no [c]
    can be pinned down along any relation, within or across tables."""
    if settings == DisclosureSettings():
        released = read_release(full_run / "release")
        assert released["estimates"]["events_exposed"].ne("").any()
    else:
        released = as_released_text(
            control_release(true_tables(full_run), settings).tables, tmp_path
        )
    assert any((df == SUPPRESSED).any().any() for df in released.values())
    assert recoverable_cells(released, settings) == []


def test_differencing_recovers_cells_when_secondary_suppression_is_off(
    full_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planted error: primary suppression only. The checker must then pin cells down (on the
    issue's example, and on the run's tables for some threshold), and every interval it gives
    must hold the true count (it is a sound attacker)."""
    import models.disclosure as d

    monkeypatch.setattr(d, "protect", lambda values, sensitive, *a, **k: set(sensitive))
    att = pd.DataFrame(
        {
            "step": [1, 2],
            "description": ["all", "kept"],
            "n_remaining": [346, 340],
            "n_excluded": [0, 6],
        }
    )
    found = recoverable_cells(
        as_released_text(control_release({"attrition": att}).tables, tmp_path / "x")
    )
    assert [(r.cell, r.low, r.high) for r in found] == [(("attrition", "2", "n_excluded"), 1, 9)]
    truth = true_tables(full_run)
    values = {}
    for name, df in truth.items():
        for col in d.COUNT_COLUMNS[name]:
            if col in df:
                for key, v in zip(d.row_keys(name, df), df[col], strict=True):
                    if pd.notna(v):
                        values[(name, key, col)] = int(v)
    found = []
    for threshold in (10, 15, 20, 25, 30):
        s = DisclosureSettings(threshold=threshold, rounding=5)
        released = as_released_text(control_release(truth, s).tables, tmp_path / str(threshold))
        found += recoverable_cells(released, s)
    assert found
    for r in found:
        assert r.low <= values[r.cell] <= r.high, r


# --- 3. floors and the override label ---------------------------------------------------------


def test_threshold_floor_needs_a_recorded_override() -> None:
    with pytest.raises(ValueError, match="threshold 1 is below the floor of 10"):
        DisclosureSettings(threshold=1, rounding=5)
    with pytest.raises(ValueError, match="rounding 1 is below the floor of 5"):
        DisclosureSettings(threshold=10, rounding=1)
    s = DisclosureSettings(threshold=1, rounding=1, override_reason="methods check, not released")
    assert s.label == (
        "NOT disclosure-controlled: threshold 1, rounding 1 (override: methods check, not released)"
    )
    assert DisclosureSettings().label.startswith("disclosure-controlled")
    est = pd.DataFrame([_hazard_rows(_children(120, 3, 900, 200), "self_harm")])
    readme = control_release({"estimates": est}, s).readme()
    assert readme.startswith("NOT disclosure-controlled") and "override: methods check" in readme


def test_below_floor_settings_are_refused_before_any_work(tmp_path: Path, world: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("model:\n  disclosure: {threshold: 1, rounding: 1}\n", encoding="utf-8")
    out = tmp_path / "run"
    r = _cohort(
        "run", "--data", str(world), "--out", str(out), "--settings", str(settings),
        env=_env(tmp_path), timeout=300,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "model.disclosure" in r.stderr and "threshold 1 is below the floor" in r.stderr
    assert not (out / "linkage_zone.duckdb").exists()


def test_override_changes_the_label_in_release_and_report(full_run: Path, tmp_path: Path) -> None:
    from ground.run_layout import RunLayout
    from models.outputs import write_release
    from orchestration.report import build_report

    run = tmp_path / "run"
    shutil.copytree(full_run, run, ignore=shutil.ignore_patterns("*.wal"))
    layout = RunLayout.at(run)
    ms = yaml.safe_load((layout.results_dir / "model_settings.yaml").read_text())
    ms["disclosure"] = {"threshold": 1, "rounding": 1, "override_reason": "internal QA <only>"}
    (layout.results_dir / "model_settings.yaml").write_text(yaml.safe_dump(ms))
    from models.run import load_cohort
    from models.settings import ModelSettings

    s = ModelSettings.model_validate(ms)
    children, pt, _ = load_cohort(layout)
    truth = true_tables(run)
    write_release(
        layout,
        truth["estimates"],
        pd.read_csv(layout.results_dir / "table1.csv"),
        children,
        pt,
        s.disclosure,
    )
    label = "NOT disclosure-controlled: threshold 1, rounding 1 (override: internal QA <only>)"
    assert (layout.release_dir / "README.txt").read_text().startswith("NOT disclosure-controlled")
    assert label in (layout.release_dir / "README.txt").read_text()
    page = build_report(layout).read_text()
    escaped = label.replace("<", "&lt;").replace(">", "&gt;")
    header = page[page.index("<h1>") : page.index('<section id="data-quality">')]
    assert escaped in header
    disclosure = page[page.index('<section id="disclosure">') :]
    assert escaped in disclosure and "released: disclosure-controlled" not in page


# --- 4. precision ------------------------------------------------------------------------------


def long_floats(release_dir: Path) -> list[tuple[str, str]]:
    """Numbers with a decimal point or exponent and more than 4 significant figures."""
    bad = []
    for f in sorted(release_dir.glob("*.csv")):
        for tok in re.findall(r"-?\d+\.\d+(?:e[-+]?\d+)?|-?\d+e[-+]?\d+", f.read_text()):
            digits = re.sub(r"e.*", "", tok).replace("-", "").replace(".", "").lstrip("0")
            if len(digits) > 4:
                bad.append((f.name, tok))
    return bad


def test_release_csvs_carry_no_long_floats(full_run: Path) -> None:
    assert long_floats(full_run / "release") == []
    est = read_release(full_run / "release")["estimates"]
    shown = est[est["estimate"] != WITHHELD]
    hr = shown[shown["scale"] == "hazard_ratio"]
    assert hr["estimate"].str.fullmatch(r"-?\d+\.\d\d").all()
    assert shown["p_value"].str.fullmatch(r"<0\.001|[01](\.\d{1,4})?|").all()


# --- 5. figures ---------------------------------------------------------------------------------


def test_km_is_coarsened_to_years_with_enough_events_and_children() -> None:
    rng = np.random.default_rng(3)
    d = rng.exponential(4.0, 400).clip(0.01, 12.5)
    e = rng.random(400) < 0.3
    s = DisclosureSettings()
    km = km_yearly(d, e, s)
    assert km["year"].tolist()[0] == 0 and km["at_risk"].iloc[0] == ""
    shown = km["year"].tolist()
    for prev, y in itertools.pairwise(shown):
        assert (e & (d > prev) & (d <= y)).sum() >= s.threshold  # no step on < 10 events
        assert (d >= y).sum() >= s.threshold
    assert all(int(a) % 5 == 0 for a in km["at_risk"].iloc[1:])
    assert float(km["year"].iloc[-1]).is_integer()
    # five events in all: nothing but the origin
    few = km_yearly(d, np.arange(400) < 5, s)
    assert few["year"].tolist() == [0]


def test_report_shows_no_figure_that_could_show_individuals(full_run: Path) -> None:
    page = (full_run / "report.html").read_text()
    figures = full_run / "results" / "figures"
    for secure in ("km_self_harm.png", "km_emergency_admission.png", "propensity_overlap.png"):
        assert base64.b64encode((figures / secure).read_bytes()).decode() not in page, secure
    # the report draws its own Kaplan-Meier from the released yearly curve (numbers at risk under
    # the rule), or says there are too few events to show a point
    assert 'alt="Kaplan-Meier self_harm"' in page or "Too few events in each group" in page
    # and no full-precision table: no 17-digit floats, no exact counts of results/table1.csv
    assert not re.search(r"\d\.\d{6,}", page)


# --- 6. Prefect artifacts -------------------------------------------------------------------------


def artifacts(prefect_db: Path) -> dict[str, str]:
    con = sqlite3.connect(f"file:{prefect_db}?mode=ro", uri=True)
    try:
        return {k: str(data) for k, data in con.execute("SELECT key, data FROM artifact")}
    finally:
        con.close()


def counts_in_artifacts(run: Path, prefect_db: Path) -> dict[str, list[str]]:
    """Numbers in the run's Prefect artifacts other than step numbers, the label of the
    thresholds, text of the study config (attrition descriptions) and released estimates."""
    label = DisclosureSettings().label
    att = pd.read_csv(run / "release" / "attrition.csv", dtype=str)
    est = read_release(run / "release")["estimates"]
    released = {v.lstrip("-") for v in est[["estimate", "ci_low", "ci_high"]].to_numpy().ravel()}
    out = {}
    for key, data in artifacts(prefect_db).items():
        if key == "run-summary":  # stage timings and memory (orchestration): no counts
            continue
        if key == "run-progress":  # the percentage of stages done (orchestration): no count
            assert re.fullmatch(r"\d+(\.\d+)?", data.strip('"')), data
            assert 0 <= float(data.strip('"')) <= 100, data
            continue
        text = data.replace(label, "").replace("95% CI", "")
        for d in att["description"]:
            text = text.replace(d, "")
        numbers = re.findall(r"(?<![\w.])\d(?:[\d,.]*\d)?(?!\w)", text)
        if key == "cohort-attrition":
            numbers = [n for n in numbers if n not in set(att["step"])]
        if key == "main-estimates":
            numbers = [n for n in numbers if n not in released]
        out[key] = numbers
    return out


def test_prefect_artifacts_carry_no_counts(full_run: Path) -> None:
    found = counts_in_artifacts(full_run, full_run.parent / "prefect_home" / "prefect.db")
    assert {"validation-counts", "cohort-attrition", "main-estimates"} <= set(found)
    assert {k: v for k, v in found.items() if v} == {}


@pytest.mark.slow
def test_a_world_with_small_cells_end_to_end(tmp_path: Path) -> None:
    """A 3,000-child world (cohort of about 300: small cells everywhere), run end to end:
    nothing recoverable, no long floats, no counts in artifacts."""
    from synthetic_data import generate_world

    generate_world(n_children=3000, seed=7, out_dir=tmp_path / "world")
    r = _cohort(
        "run", "--data", str(tmp_path / "world"), "--out", str(tmp_path / "run"),
        env=_env(tmp_path), timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    released = read_release(run / "release")
    assert (released["estimates"]["estimate"] == WITHHELD).any()
    assert recoverable_cells(released) == []
    assert long_floats(run / "release") == []
    found = counts_in_artifacts(run, tmp_path / "prefect_home" / "prefect.db")
    assert {k: v for k, v in found.items() if v} == {}


COUNT_HEADERS = re.compile(
    r"^(n_.*|rows_.*|file_records|records|linked|not linked|at_risk|events_.*|total)$"
)


def report_count_cells(page: str) -> list[tuple[str, str]]:
    """(column, value) of every cell of report.html under a count header."""
    out = []
    for table in re.findall(r"<table>(.*?)</table>", page, flags=re.S):
        rows = re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)
        if not rows:
            continue
        head = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", rows[0])]
        for r in rows[1:]:
            cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", r, flags=re.S)]
            out += [(h, c) for h, c in zip(head, cells, strict=False) if COUNT_HEADERS.match(h)]
    return out


def test_every_count_in_the_report_is_controlled(full_run: Path) -> None:
    cells = report_count_cells((full_run / "report.html").read_text())
    assert len(cells) > 100
    bad = [(h, v) for h, v in cells if not (v in ("", SUPPRESSED) or int(v.rstrip("+")) % 5 == 0)]
    assert bad == []


def test_data_quality_counts_are_controlled_with_linkage() -> None:
    from orchestration.report import _delivery_sections, scrub_counts

    dq = {
        "looked_after_episodes": {
            "rows_read": 437,
            "rows_staged": 434,
            "rows_quarantined": 3,
            "conserved": True,
            "expectations": [{"success": True}],
            "warnings": ["3 blank line(s) in the file skipped"],
            "identifier_completeness": {"nhs_number": 1.0},
        }
    }
    lr = {
        "thresholds": {"match_threshold": 0.95, "high_quality_threshold": 0.99},
        "link_rate_to_spine_by_source": {"looked_after_episodes": 1.0},
        "link_rate_to_spine_by_subgroup_school_census": {},
    }
    quality, linkage = _delivery_sections(dq, lr, DisclosureSettings())
    # quarantined 3 is suppressed, and so is staged, here and in the linkage table (else
    # 435 - 435 = 0 < quarantined < 5 by subtraction across the two sections)
    assert "434" not in quality + linkage and "435" not in linkage
    assert ">3 blank" not in quality and "# blank line(s)" in quality
    assert (
        scrub_counts("duplicate_row (16); 40.8% below 70%") == "duplicate_row (#); 40.8% below 70%"
    )


def test_children_without_a_characteristic_are_a_count_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """141 of 145 looked-after children female: '4 are not' by subtraction. The unreleased
    complement is protected like a released small count; with secondary suppression off, the
    checker finds it."""
    import models.disclosure as d

    t1 = pd.DataFrame(
        {"characteristic": ["female", "children"], "n_CLA": [141, 145], "n_NLA": [80, 165]}
    )
    rel = control_release({"table1_counts": t1}).tables
    assert rel["table1_counts"].set_index("characteristic").loc["female", "n_CLA"] == SUPPRESSED
    assert recoverable_cells(as_released_text(rel, tmp_path / "ok")) == []
    monkeypatch.setattr(d, "protect", lambda values, sensitive, *a, **k: set(sensitive))
    rel = control_release({"table1_counts": t1}).tables
    found = recoverable_cells(as_released_text(rel, tmp_path / "planted"))
    assert [(r.cell, r.low, r.high) for r in found] == [
        (("table1_counts", "not female", "n_CLA"), 1, 9)
    ]
