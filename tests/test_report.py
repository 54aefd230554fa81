"""report.html (orchestration/report/): every section there and filled, the figures for the
populations analysed, Kaplan-Meier for every time-to-event outcome, and screenshots from
headless Chromium kept as test artifacts (their folder is printed: run with -rP to see it)."""

from __future__ import annotations

import base64
import html
import io
import os
import re
import shutil
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import yaml

from models.disclosure import DisclosureSettings
from tests.e2e import chromium, headless_chromium

SCREENSHOT_SECTIONS = ("top", "answers", "table1", "estimates", "km")


def section_html(page: str, sid: str) -> str:
    """The HTML of ``<section id="sid">`` (to the next section), "" when absent."""
    m = re.search(rf'<section id="{re.escape(sid)}">(.*?)</section>', page, flags=re.S)
    return m.group(1) if m else ""


# what a finished run's report must have (written out here, not read from the report's own
# list: a section dropped from orchestration.report.SECTIONS must fail the test)
REQUIRED_SECTIONS = (
    "summary", "answers", "provenance", "data-quality", "linkage", "attrition", "table1", "estimates",
    "km", "diagnostics", "sensitivity", "disclosure",
)  # fmt: skip


def missing_sections(page: str) -> list[str]:
    """Sections of :data:`REQUIRED_SECTIONS` absent or "not available"."""
    return [
        sid
        for sid in REQUIRED_SECTIONS
        if not section_html(page, sid) or "<em>not available</em>" in section_html(page, sid)
    ]


def images(part: str) -> list[str]:
    """The alt texts of the inlined PNGs of an HTML fragment."""
    return re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', part)


# --- the page as a whole --------------------------------------------------------------------------


def test_every_section_is_there_and_filled(full_run: Path) -> None:
    page = (full_run / "report.html").read_text(encoding="utf-8")
    assert missing_sections(page) == []
    # summary and contents first: the contents list links every section, in page order
    summary = section_html(page, "summary")
    # the study's three questions come first after the summary
    assert (
        page.index('<section id="summary">')
        < page.index('<section id="answers">')
        < page.index('<section id="provenance">')
    )
    from orchestration.report import SECTIONS

    assert re.findall(r'<li><a href="#([\w-]+)">', summary) == [sid for sid, _, _ in SECTIONS]
    assert "Headline estimates" in summary


def test_a_missing_section_is_found(full_run: Path) -> None:
    """The check above fails on a page with one section removed or left empty."""
    page = (full_run / "report.html").read_text(encoding="utf-8")
    without_km = re.sub(r'<section id="km">.*?</section>', "", page, flags=re.S)
    assert missing_sections(without_km) == ["km"]
    empty = page.replace(
        section_html(page, "table1"), "<h2>Table 1</h2><p><em>not available</em></p>"
    )
    assert missing_sections(empty) == ["table1"]


def test_provenance_names_the_commit_hashes_and_manifest(full_run: Path) -> None:
    import json

    part = section_html((full_run / "report.html").read_text(encoding="utf-8"), "provenance")
    stamp = json.loads((full_run / ".run.json").read_text(encoding="utf-8"))
    assert stamp["code"]["git_commit"] in part
    assert stamp["settings"] in part
    for name, digest in stamp["inputs"].items():
        assert name in part and digest in part
    assert '<a href="manifest.json">' in part
    assert (full_run / "manifest.json").exists()


def test_attrition_is_a_flow_diagram_with_the_released_table(full_run: Path) -> None:
    part = section_html((full_run / "report.html").read_text(encoding="utf-8"), "attrition")
    assert [html.unescape(a) for a in images(part)] == [
        "flow diagram of the cohort's inclusion steps"
    ]
    assert "<details><summary>Attrition table</summary><table>" in part


def test_table1_has_counts_means_and_standardised_differences_under_labels(
    full_run: Path,
) -> None:
    part = section_html((full_run / "report.html").read_text(encoding="utf-8"), "table1")
    head = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", part)]
    assert head == [
        "characteristic", "n_CLA", "% or mean (SD) CLA", "n_NLA", "% or mean (SD) NLA",
        "SMD before", "SMD after weighting",
    ]  # fmt: skip
    rows = [
        [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", r)]
        for r in re.findall(r"<tr>(.*?)</tr>", part)[1:]
    ]
    by_name = {r[0]: r for r in rows}
    assert "Physical abuse" in by_name and "physical_abuse" not in by_name
    age = by_name["Age at first social-services contact (years), mean (SD)"]
    assert re.fullmatch(r"\d+\.\d \(\d+\.\d\)", age[2]) and re.fullmatch(r"-?\d\.\d\d", age[5])
    # every row has its SMD before and after weighting; the weights reduce the largest
    # imbalance (age at index, about 1 SD before weighting in these worlds)
    assert all(re.fullmatch(r"-?\d+\.\d\d", r[5]) for r in rows if r[0] != "Children")
    assert all(re.fullmatch(r"-?\d+\.\d\d", r[6]) for r in rows if r[0] != "Children")
    assert abs(float(age[5])) > 0.3 and abs(float(age[6])) < abs(float(age[5]))


def test_forest_plot_is_one_figure_and_ipw_aipw_agreement_is_explained(full_run: Path) -> None:
    part = section_html((full_run / "report.html").read_text(encoding="utf-8"), "estimates")
    assert images(part) == ["forest plot of the main estimates"]
    if "= IPW (see below)" in part or "Why AIPW equals IPW" in part:
        assert "Why AIPW equals IPW" in part


def test_kaplan_meier_for_every_time_to_event_outcome(full_run: Path) -> None:
    con = duckdb.connect(str(full_run / "analysis_zone.duckdb"), read_only=True)
    try:
        outcomes = {
            o for (o,) in con.sql("SELECT DISTINCT outcome FROM cohort.person_time").fetchall()
        }
    finally:
        con.close()
    part = section_html((full_run / "report.html").read_text(encoding="utf-8"), "km")
    # the study config's five: self-harm, emergency and mental-health admissions, and the two
    # negative controls (appendicitis, dental caries)
    assert len(outcomes) == 5
    assert set(re.findall(r'<h3 id="km-(\w+)">', part)) == outcomes
    # a figure for each outcome with a point to show, else the sentence saying why not
    for o in outcomes:
        block = part[part.index(f'<h3 id="km-{o}">') :].split("<h3", 2)[1]
        assert f'alt="Kaplan-Meier {o}"' in block or "Too few events in each group" in block, o
    assert len(images(part)) >= 1
    # numbers at risk under disclosure control (the released rule: rounded, none below it)
    at_risk = re.findall(r"<tr><td>(?:CLA|NLA)</td><td>\d+</td><td>(\d*)</td>", part)
    s = DisclosureSettings()
    assert at_risk and all(
        not v or (int(v) % s.rounding == 0 and int(v) >= s.threshold) for v in at_risk
    )


def test_overlap_and_balance_are_for_the_analysed_populations_with_their_auc(
    full_run: Path,
) -> None:
    """Each exposure-effect contrast gets an overlap and a balance plot, and the AUC in the
    overlap title is the diagnostics table's (the old report plotted the whole cohort's model
    under an AUC the table did not have)."""
    page = (full_run / "report.html").read_text(encoding="utf-8")
    part = section_html(page, "diagnostics")
    titles = [html.unescape(t) for t in images(part)]
    overlaps = [t for t in titles if t.startswith("Preference-score overlap")]
    assert len(overlaps) == 3  # cla_vs_nla, long_vs_nla, short_vs_nla
    assert len([t for t in titles if t.startswith("balance ")]) == 3
    diag = pd.read_csv(full_run / "results" / "diagnostics.csv")
    aucs = diag[(diag["item"] == "auc") & (diag["analysis"].str.startswith("propensity:"))]
    shown = {f"{float(f'{v:.3g}'):g}" for v in aucs["value"]}
    for t in overlaps:
        auc = re.search(r"AUC ([\d.]+)", t)
        assert auc and auc.group(1) in shown, t
        # ... and that value is a row of the diagnostics table on the page
        assert f"<td>auc</td><td>{auc.group(1)}</td>" in part


def test_linkage_charts_and_failed_expectations(full_run: Path) -> None:
    page = (full_run / "report.html").read_text(encoding="utf-8")
    charts = sorted((full_run / "results" / "figures").glob("linkage_*.png"))
    assert charts
    linkage = section_html(page, "linkage")
    for chart in charts:
        assert base64.b64encode(chart.read_bytes()).decode() in linkage
    assert "<h3>Failed expectations</h3>" in section_html(page, "data-quality")


# --- the study's three questions --------------------------------------------------------------------

QUESTION_FIGURES = (
    "question 1: the adjusted effect of care",
    "question 2: unadjusted beside adjusted",
    "question 3: the effect of care by adversity group",
    "question 3: absence_by_years_since_entry",
    "question 3: hazard_by_years_since_entry",
)


def readings(part: str) -> list[str]:
    return [html.unescape(r) for r in re.findall(r'<p class="reading">(.*?)</p>', part, re.S)]


def test_the_three_questions_each_have_figures_sentences_and_the_protocols(
    full_run: Path,
) -> None:
    """The section answering the study's three questions: a figure for each (question 3: by
    adversity group and by years since entry), each followed by the sentence that reads it;
    the E-values; the emulated trials' protocols filled from the study config; and every
    estimate it writes is a released one."""
    from models.outputs import read_release_csv

    part = section_html((full_run / "report.html").read_text(encoding="utf-8"), "answers")
    for q in ("1. What difference", "2. Does care make", "3. Over time"):
        assert q in part, q
    alts = [html.unescape(a) for a in images(part)]
    assert alts == list(QUESTION_FIGURES)
    for alt in QUESTION_FIGURES:  # the sentence right after its figure
        after = part[part.index(f'alt="{html.escape(alt)}"') :]
        assert re.match(r'alt="[^"]*" src="[^"]*"><p class="reading">', after), alt
    said = readings(part)
    assert len(said) >= len(QUESTION_FIGURES) and all(len(r) > 40 for r in said)
    assert not any("no effect" in r.lower() for r in said)
    assert "E-values of the adjusted estimates" in part
    # the protocols: each element, the declared time-varying confounders filled in
    for element in ("Eligibility", "Treatment strategies", "Time zero", "Follow-up", "Analysis"):
        assert f"<td>{element}</td>" in part, element
    assert "<td>Causal contrast</td>" in part and "<td>Estimand</td>" in part
    assert (
        "adversity factors newly recorded at a later assessment, a child-protection plan begun "
        "after the referral" in part
    )
    # the headline KS4 estimate on the page is the released one
    est = read_release_csv(full_run / "release" / "estimates.csv")
    ks4 = est[
        (est["outcome"] == "ks4_score")
        & (est["contrast"] == "cla_vs_nla")
        & (est["method"] == "aipw")
    ].iloc[0]
    if ks4["estimate"] != "withheld":
        assert f"95% CI {ks4['ci_low']} to {ks4['ci_high']} points" in html.unescape(part)
    assert (full_run / "release" / "e_values.csv").exists()


def _stratum_rows(est: pd.DataFrame, modifier: str) -> pd.Series:
    contrasts = {f"cla_vs_nla_{p}_{modifier}" for p in ("with", "without", "with_minus_without")}
    return (est["outcome"] == "ks4_score") & est["contrast"].isin(contrasts)


def test_a_small_stratum_is_withheld_with_its_siblings_in_release_and_report(
    full_run: Path, tmp_path: Path
) -> None:
    """A stratum planted below the threshold: the release withholds it, its sibling stratum
    and their difference (the sibling's counts with the released whole comparison would give
    the small stratum back by subtraction), and the report draws none of them and names the
    adversity as withheld."""
    from ground.run_layout import RunLayout
    from models.outputs import read_release_csv, write_release
    from models.run import load_cohort
    from models.settings import ModelSettings
    from orchestration.report.answers import answers
    from orchestration.report.sections import ReportContext

    run = tmp_path / "run"
    shutil.copytree(
        full_run, run, ignore=shutil.ignore_patterns("*.wal", "linkage_zone*", "validation")
    )
    layout = RunLayout.at(run)
    released = read_release_csv(layout.release_dir / "estimates.csv")
    shown = released[released["estimate"] != "withheld"]
    modifier = next((
        m
        for m in ("domestic_abuse", "parental_mental_ill_health", "parental_substance_misuse",
                  "physical_abuse")
        if _stratum_rows(shown, m).sum() == 3
    ), None)  # fmt: skip
    assert modifier, "no adversity with its two strata and difference all released in this world"
    est = pd.read_csv(layout.results_dir / "estimates.csv", keep_default_na=False, na_values=[""])
    est["warning"] = est["warning"].fillna("")
    s = ModelSettings.model_validate(
        yaml.safe_load((layout.results_dir / "model_settings.yaml").read_text())
    )
    small = s.disclosure.threshold - 3
    # the 'with' stratum and the difference (which carries the smaller stratum's counts)
    planted = _stratum_rows(est, modifier) & (est["contrast"] != f"cla_vs_nla_without_{modifier}")
    est.loc[planted, "n_exposed"] = small
    children, pt, _ = load_cohort(layout)
    write_release(
        layout, est, pd.read_csv(layout.results_dir / "table1.csv"), children, pt, s.disclosure
    )
    out = read_release_csv(layout.release_dir / "estimates.csv")
    trio = out[_stratum_rows(out, modifier)]
    assert len(trio) == 3
    assert (trio[["estimate", "ci_low", "ci_high"]] == "withheld").all().all(), trio
    assert (trio[["n_exposed", "n_unexposed"]] == "[c]").all().all(), trio
    assert "withheld together" in (layout.release_dir / "README.txt").read_text()
    part = answers(ReportContext.of(layout))
    assert part is not None
    assert any(
        "Withheld (a stratum with too few children or events)" in r
        and html.unescape(label_of(modifier)).lower() in r.lower()
        for r in readings(part)
    ), readings(part)
    # none of the trio's full-run numbers is drawn or written
    before = shown[_stratum_rows(shown, modifier)]
    for r in before.itertuples():
        assert f"{r.estimate} ({r.ci_low} to {r.ci_high})" not in part


def test_stratum_families_and_levels_are_withheld_together() -> None:
    """The release rule on planted rows: one small level of a conditional-effect summary
    withholds every level of that summary (the levels add up to the released whole); other
    rows stay as the disclosure control left them."""
    from models.disclosure import control_release
    from models.outputs import stratum_family, withhold_strata_together

    assert stratum_family("cla_vs_nla_without_domestic_abuse") == "cla_vs_nla|domestic_abuse"
    assert stratum_family("cla_vs_nla_with_minus_without_physical_abuse") == (
        "cla_vs_nla|physical_abuse"
    )
    assert stratum_family("cla_vs_nla_most_deprived_minus_less_deprived") == (
        "cla_vs_nla|deprivation"
    )
    assert stratum_family("cla_vs_nla_cate_adversities_3") == "cla_vs_nla|cate_adversities"
    for other in (
        "cla_vs_nla",
        "domestic_abuse_in_cla",
        "physical_abuse_x_cla",
        "looked_after_year_since_entry_2",
        "cla_vs_nla_year_since_entry_0",
    ):
        assert stratum_family(other) is None, other  # fmt: skip

    def row(contrast: str, n1: int, n0: int) -> dict[str, object]:
        return {"outcome": "ks4_score", "contrast": contrast, "method": "aipw",
                "scale": "mean_difference", "estimate": 1.5, "ci_low": 0.5, "ci_high": 2.5,
                "p_value": 0.01, "n_exposed": n1, "n_unexposed": n0, "events_exposed": None,
                "events_unexposed": None, "warning": ""}  # fmt: skip

    est = pd.DataFrame(
        [
            row("cla_vs_nla", 200, 300),
            row("cla_vs_nla_cate_adversities_0", 120, 150),
            row("cla_vs_nla_cate_adversities_1", 76, 145),
            row("cla_vs_nla_cate_adversities_2", 4, 5),
            row("cla_vs_nla_cate_deprivation_1_3", 100, 150),
            row("cla_vs_nla_cate_deprivation_4_10", 100, 150),
        ]
    )
    release = control_release({"estimates": est})
    before = release.tables["estimates"]["estimate"].tolist()
    assert before[1:3] == ["1.50", "1.50"]  # the rule of one row: level 2 alone withheld
    extra = withhold_strata_together(release)
    out = release.tables["estimates"]
    assert out["estimate"].tolist() == ["1.50", *["withheld"] * 3, "1.50", "1.50"]
    assert out.loc[1:3, "n_exposed"].tolist() == ["[c]"] * 3
    assert extra == {f"ks4_score|cla_vs_nla_cate_adversities_{k}|all" for k in (0, 1)}
    assert extra <= release.withheld


def label_of(name: str) -> str:
    from orchestration.report.labels import label

    return label(name)


def test_the_sentences_read_the_numbers() -> None:
    """The readings flip with the numbers (pure functions, planted numbers), and never say
    "no effect" of an interval that includes no difference."""
    from orchestration.report.answers import (
        Effect,
        Strata,
        read_adjustment,
        read_by_years,
        read_e_values,
        read_estimate,
        read_main,
        read_negative_controls,
        read_strata,
    )

    up = Effect("mean_difference", 2.0, 1.0, 3.0)
    down = Effect("mean_difference", -2.0, -3.0, -1.0)
    across = Effect("mean_difference", 0.5, -1.0, 2.0)
    assert "2.00 points higher" in read_estimate("ks4_score", up)
    assert "whole interval lies above no difference" in read_estimate("ks4_score", up)
    assert "2.00 points lower" in read_estimate("ks4_score", down)
    assert "whole interval lies below no difference" in read_estimate("ks4_score", down)
    assert "the interval includes no difference" in read_estimate("ks4_score", across)
    hr = Effect("hazard_ratio", 0.5, 0.3, 0.8)
    assert "0.50 times" in read_estimate("self_harm", hr) and "below" in read_estimate(
        "self_harm", hr
    )
    assert "1.50 times" in read_estimate("self_harm", Effect("hazard_ratio", 1.5, 0.9, 2.5))
    assert "includes no difference" in read_estimate(
        "self_harm", Effect("hazard_ratio", 1.5, 0.9, 2.5)
    )
    rd = Effect("risk_difference", -0.032, -0.05, -0.01)
    assert "3.2 percentage points lower" in read_estimate("ks4_level2_inclusive", rd)
    assert "withheld or not estimated" in read_estimate("self_harm", None)
    assert "0.12 to 3,030" in read_estimate("self_harm", Effect("hazard_ratio", 19.1, 0.12, 3030))

    main = read_main([("ks4_score", down), ("self_harm", hr), ("emergency_admission", None)])
    assert "a decrease in KS4 attainment score and self-harm admission" in main
    assert "withheld" in main and "emergency hospital admission" in main
    main = read_main([("ks4_score", across)])
    assert "KS4 attainment score the interval includes no difference" in main
    assert "increase" not in main and "decrease" not in main

    crude = Effect("mean_difference", -13.0, -17.0, -9.0)
    assert "towards no difference for KS4" in read_adjustment([("ks4_score", crude, down)])
    assert "away from no difference" in read_adjustment([("ks4_score", down, crude)])
    assert "includes no difference for KS4" in read_adjustment([("ks4_score", crude, across)])
    trials = read_adjustment([("ks4_score", crude, across)], [("ks4_score", down)])
    assert "The sequential trials" in trials and "-2.00 points for KS4" in trials
    assert trials.endswith("the whole interval lies below no difference.")

    fine = read_negative_controls([("appendicitis", Effect("hazard_ratio", 1.1, 0.7, 1.7))])
    assert "no sign of confounding left" in fine
    off = read_negative_controls([("dental_caries", Effect("hazard_ratio", 1.6, 1.2, 2.1))])
    assert "some confounding may remain" in off
    assert "not shown" in read_negative_controls([("appendicitis", None)])

    assert "at least 1.37" in read_e_values([("self_harm", 1.37), ("ks4_score", 2.5)])
    assert "already includes no difference" in read_e_values([("ks4_score", 1.0)])

    helps = Strata("domestic_abuse", up, down, Effect("difference_in_mean_difference", 4, 1, 7))
    hurts = Strata("domestic_abuse", down, up, Effect("difference_in_mean_difference", -4, -7, -1))
    unclear = Strata("physical_abuse", up, up, Effect("difference_in_mean_difference", 0, -3, 3))
    gone = Strata("parental_substance_misuse", None, None, None)
    text = read_strata("ks4_score", [helps, unclear, gone])
    assert "4.00 points higher for children with domestic abuse recorded" in text
    assert "consistent with care reducing the effect of that adversity" in text
    assert "For the other 1 group the interval of the difference includes no difference" in text
    assert "Withheld (a stratum with too few children or events): parental alcohol" in text
    assert "care did less for them" in read_strata("ks4_score", [hurts])
    assert "cannot say whether care's effect" in read_strata("ks4_score", [unclear])
    # for an outcome where lower is better, a higher effect is not the helpful direction
    assert "care did less for them" in read_strata("absence_rate", [helps])

    years = read_by_years(
        "absence_rate",
        [("0", Effect("mean_difference", -0.014, -0.017, -0.010)), ("1", None),
         ("4+", Effect("mean_difference", -0.005, -0.012, 0.002))],
    )  # fmt: skip
    assert "-1.4 percentage points in the first year after entry" in years
    assert "wholly below no difference" in years and "includes no difference" in years
    assert "at 4 or more whole years after entry" in years and "year 1" in years
    assert "at 1 whole year after entry" in read_by_years(
        "self_harm", [("0", None), ("1", Effect("hazard_ratio", 19.1, 0.12, 3030.0))]
    )
    for sentence in (main, fine, off, text, years):
        assert "no effect" not in sentence.lower()


# --- pieces ------------------------------------------------------------------------------------


def test_failed_expectations_are_named_with_controlled_counts() -> None:
    from orchestration.report.sections import failed_expectations

    dq = {
        "school_census": {
            "expectations": [
                {"expectation": "expect_table_row_count_to_be_between", "column": "",
                 "success": True, "unexpected_count": 0},
                {"expectation": "expect_column_values_to_be_in_set", "column": "ethnicity",
                 "success": False, "unexpected_count": 3},
                {"expectation": "expect_column_values_to_not_be_null", "column": "upn",
                 "success": False, "unexpected_count": 1234},
            ]
        }
    }  # fmt: skip
    out = failed_expectations(dq, DisclosureSettings())
    assert "expect_column_values_to_be_in_set" in out and "ethnicity" in out
    assert "expect_table_row_count_to_be_between" not in out
    assert "<td>[c]</td>" in out and "<td>1235</td>" in out and "1234" not in out


def test_aipw_rows_equal_to_ipw_are_found() -> None:
    from orchestration.report.sections import same_as_ipw

    est = pd.DataFrame(
        {
            "outcome": ["y", "y", "z", "z"],
            "contrast": ["c"] * 4,
            "scale": ["mean_difference"] * 2 + ["risk_difference"] * 2,
            "method": ["ipw", "aipw", "ipw", "aipw"],
            "estimate": ["1.20", "1.20", "0.050", "0.048"],
            "ci_low": ["0.10", "0.10", "0.010", "0.008"],
            "ci_high": ["2.30", "2.30", "0.090", "0.088"],
        }
    )
    assert same_as_ipw(est).tolist() == [False, True, False, False]


def test_labels_fall_back_to_readable_names() -> None:
    from orchestration.report.labels import cell_label, label

    assert label("physical_abuse") == "Physical abuse"
    assert (
        label("age_at_index_rcs2") == "Age at first social-services contact (years): spline term 2"
    )
    assert label("age_at_index_x_physical_abuse").endswith("× Physical abuse")
    assert label("brand_new_outcome") == "Brand new outcome"
    assert cell_label("brand_new_contrast") == "brand_new_contrast"
    assert cell_label("domestic_abuse_in_nla") == "Domestic abuse: effect within NLA"


def test_figures_are_deterministic_pngs() -> None:
    from orchestration.report import figures

    steps = [
        figures.FlowStep("children in need", "2135", "0"),
        figures.FlowStep("born in the study's birth cohorts", "[c]", "[c]"),
    ]
    rows = [
        figures.ForestRow("KS4: mean difference", "mean_difference", "IPW", -0.9, -3.3, 1.4,
                          "-0.94 (-3.3 to 1.4)", "fit warnings"),
        figures.ForestRow("Self-harm: hazard ratio", "hazard_ratio", "Cox", None, None, None,
                          "withheld", "withheld"),
    ]  # fmt: skip
    for draw in (lambda: figures.attrition_flow(steps), lambda: figures.forest_plot(rows)):
        a, b = draw(), draw()
        assert a.startswith(b"\x89PNG") and a == b


# --- screenshots -----------------------------------------------------------------------------------


def _only_section(page: str, sid: str) -> str:
    """The page with every other section (and the header) hidden: a screenshot of one
    section with the report's own stylesheet."""
    if sid == "top":
        return page
    hide = (
        "<style>body>section,body>h1,body>p{display:none}"
        f"#{sid}{{display:block!important}}</style></head>"
    )
    return page.replace("</head>", hide, 1)


def screenshot(html_file: Path, png: Path, profile: Path) -> None:
    headless_chromium(
        "--hide-scrollbars",
        "--window-size=1280,1800",
        f"--screenshot={png}",
        html_file.as_uri(),
        profile=profile,
        check=False,
    )


def ink(png: Path) -> float:
    """Share of the screenshot's pixels that are not (near) white."""
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png.read_bytes())).convert("L"))
    return float((img < 235).mean())


def test_screenshots_in_headless_chromium(full_run: Path, tmp_path: Path) -> None:
    """Top of the page, Table 1, the forest plot and Kaplan-Meier with numbers at risk, as
    Chromium renders them. Kept in ``$COHORT_TEST_ARTIFACTS/report`` (default: the system temp
    folder's ``cohort-test-artifacts/report``); the path is printed."""
    chromium()  # skips where there is none
    page = (full_run / "report.html").read_text(encoding="utf-8")
    shots = {}
    for sid in SCREENSHOT_SECTIONS:
        source = tmp_path / f"{sid}.html"
        source.write_text(_only_section(page, sid), encoding="utf-8")
        shots[sid] = tmp_path / f"report_{sid}.png"
        screenshot(source, shots[sid], tmp_path / "profile")
    blank = [sid for sid, p in shots.items() if not p.exists() or ink(p) < 0.02]
    assert blank == [], f"blank screenshots: {blank}"
    keep = (
        Path(
            os.environ.get(
                "COHORT_TEST_ARTIFACTS", Path(tempfile.gettempdir()) / "cohort-test-artifacts"
            )
        )
        / "report"
    )
    keep.mkdir(parents=True, exist_ok=True)
    for p in shots.values():
        shutil.copy2(p, keep / p.name)
    print(f"report screenshots: {keep}")


def test_a_hidden_section_gives_a_blank_screenshot(full_run: Path, tmp_path: Path) -> None:
    """The screenshot check can fail: a section that is not on the page renders blank."""
    chromium()  # skips where there is none
    page = (full_run / "report.html").read_text(encoding="utf-8")
    source = tmp_path / "gone.html"
    source.write_text(_only_section(page, "no-such-section"), encoding="utf-8")
    screenshot(source, tmp_path / "gone.png", tmp_path / "profile")
    assert ink(tmp_path / "gone.png") < 0.02
