"""Spec tests for the cohort derivation: small hand-written patients, expected derived values."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import duckdb
import pytest

from cohort import build_cohort, load_study_config
from cohort.config import StudyConfig
from ground.errors import ConfigError
from ground.run_layout import RunLayout
from tests.cohort_fixtures import write_analysis_zone

BORN = "2005-01-03"  # a Monday


def cin(key: str, referral: str, **factors: Any) -> dict[str, Any]:
    row = {
        "person_key": key,
        "la_code": "W06000015",
        "census_year": int(referral[:4]) + 1,
        "referral_date": referral,
        "closure_date": None,
        "category_of_need": "N1",
        "child_protection_registered": False,
        "child_protection_category": None,
        "parent_domestic_abuse": False,
        "parent_mental_ill_health": False,
        "parent_substance_misuse": False,
        "parent_learning_disability": False,
        "parent_physical_ill_health": False,
        "disability": False,
    }
    row.update(factors)
    return row


def episode(
    key: str,
    start: str,
    end: str | None,
    reason_start: str = "S",
    reason_end: str | None = "E4A",
    placement: str = "U4",
) -> dict[str, Any]:
    return {
        "person_key": key,
        "la_code": "W06000015",
        "episode_start": start,
        "episode_end": end,
        "legal_status": "C2",
        "placement_type": placement,
        "reason_episode_started": reason_start,
        "reason_episode_ended": reason_end,
    }


def residence(
    key: str,
    start: str = BORN,
    end: str | None = None,
    reason: str | None = None,
    death: str | None = None,
) -> dict[str, Any]:
    return {
        "person_key": key,
        "area_code": "A1",
        "deprivation_decile": 3,
        "la_code": "W06000015",
        "ethnicity": "WBRI",
        "period_start": start,
        "period_end": end,
        "end_reason": reason,
        "date_of_death": death,
    }


KEYS = [f"P{i}" for i in range(1, 10)]
PATIENTS: dict[str, list[dict[str, Any]]] = {
    "persons": [{"person_key": k, "week_of_birth": BORN} for k in KEYS[:-1]]
    + [
        {
            "person_key": "P9",
            "week_of_birth": BORN,
            "link_quality_min": 0.8,
            "high_quality_links": 0,
        }
    ],
    "population_register": [residence(k) for k in KEYS if k not in ("P3", "P4")]
    + [
        residence("P3", end="2013-05-31", reason="LEFT"),
        residence("P3", start="2014-02-01"),
        residence("P4", end="2012-06-01", reason="DIED", death="2012-06-01"),
    ],
    "care_support_census": [
        cin("P1", "2012-03-01", parent_domestic_abuse=True),
        cin("P2", "2012-03-01"),
        cin("P2", "2013-01-01", parent_mental_ill_health=True),  # recorded after care entry
        cin("P3", "2012-01-10"),
        cin("P4", "2012-03-01"),
        cin("P5", "2012-03-01", child_protection_registered=True, child_protection_category="PHY"),
        cin("P6", "2012-03-01"),
        cin("P7", "2012-03-01"),
        cin("P8", "2012-03-01"),
        cin("P9", "2012-03-01"),
    ],
    "looked_after_episodes": [
        episode("P1", "2012-03-01", "2013-06-01"),  # care starts on the index date
        episode("P2", "2012-05-01", "2012-09-01"),
        episode("P5", "2012-03-01", "2012-06-01"),  # two periods with a gap: re-entry
        episode("P5", "2013-01-01", "2013-03-01"),
        episode("P6", "2012-03-01", "2012-03-01", reason_end="X1"),  # placement move on entry day
        episode("P6", "2012-03-01", "2012-12-01", reason_start="P", reason_end="X1"),
        episode("P6", "2012-12-01", "2014-01-01", reason_start="P"),
        episode("P7", "2012-05-01", None, reason_end=None),
    ],
    "emergency_department": [
        {
            "person_key": "P7",
            "arrival_date": "2012-05-01",
            "diagnosis": "X78",
        },  # on day of care entry
        {
            "person_key": "P4",
            "arrival_date": "2013-02-01",
            "diagnosis": "X60",
        },  # after death: ignored
    ],
    "hospital_admissions": [
        {
            "person_key": "P8",
            "admission_date": "2011-01-01",
            "discharge_date": "2011-01-02",
            "admission_method": "21",
            "primary_diagnosis": "J45.9",
        },  # before index: prior use
    ],
    "attainment": [
        {
            "person_key": "P1",
            "key_stage": "KS4",
            "academic_year": 2019,
            "ks4_capped_points": 30.0,
            "ks4_level2_inclusive": False,
        },
    ],
    "school_census": [
        {
            "person_key": k,
            "academic_year": y,
            "school_id": "S1",
            "la_code": "W06000015",
            "sessions_possible": 300,
            "sessions_authorised_absence": 20,
            "sessions_unauthorised_absence": 20,
            "fixed_exclusions": 0,
            "permanent_exclusion": False,
        }
        for k in ("P1", "P5")
        for y in (2011, 2012, 2013)
    ],
}


def _build(tmp_path: Path, config: StudyConfig | None = None) -> duckdb.DuckDBPyConnection:
    layout = RunLayout.at(tmp_path)
    layout.ensure()
    write_analysis_zone(layout.analysis_db, PATIENTS)
    build_cohort(layout=layout, config=config or load_study_config())
    return duckdb.connect(str(layout.analysis_db), read_only=True)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    con = _build(tmp_path_factory.mktemp("spec"))
    rows = con.execute("SELECT * FROM cohort.children").fetchall()
    cols = [d[0] for d in con.description]
    out = {r[0]: dict(zip(cols, r, strict=True)) for r in rows}
    out["_person_time"] = {  # type: ignore[assignment]
        (k, o): con.execute(
            "SELECT start_day, stop_day, looked_after, event FROM cohort.person_time "
            "WHERE person_key = ? AND outcome = ? ORDER BY start_day",
            [k, o],
        ).fetchall()
        for k in KEYS
        for o in ("self_harm", "emergency_admission")
    }
    out["_school_years"] = {  # type: ignore[assignment]
        k: con.execute(
            "SELECT academic_year, looked_after_this_year FROM cohort.school_years "
            "WHERE person_key = ? ORDER BY 1",
            [k],
        ).fetchall()
        for k in KEYS
    }
    con.close()
    return out


def test_care_starting_on_the_index_date(cohort: dict) -> None:
    p = cohort["P1"]
    assert p["group"] == "CLA" and str(p["care_entry_date"]) == "2012-03-01" == str(p["index_date"])
    assert p["care_long"] == 1 and p["care_short"] == 0 and p["care_days"] == 457
    assert p["domestic_abuse"] == 1  # recorded at the index referral: pre-care
    assert p["ks4_score"] == 30.0 and p["ks4_care_group"] == "long" and p["ks4_care_days"] == 457
    assert cohort["_person_time"][("P1", "self_harm")][0][:3] == (0, 457, 1)


def test_adversity_recorded_after_care_entry_is_not_pre_care(cohort: dict) -> None:
    p = cohort["P2"]
    assert p["parental_mental_ill_health"] == 0
    assert p["care_short"] == 1 and p["care_long"] == 0


def test_child_who_leaves_the_region_and_returns_is_censored_at_leaving(cohort: dict) -> None:
    p = cohort["P3"]
    assert str(p["followup_end"]) == "2013-05-31" and p["followup_end_reason"] == "left_region"
    last_stop = cohort["_person_time"][("P3", "self_harm")][-1][1]
    assert last_stop == 508  # 2012-01-10 .. 2013-05-31 inclusive (2012 is a leap year)


def test_death_before_the_outcome(cohort: dict) -> None:
    p = cohort["P4"]
    assert p["followup_end_reason"] == "died" and str(p["followup_end"]) == "2012-06-01"
    rows = cohort["_person_time"][("P4", "self_harm")]
    assert sum(r[3] for r in rows) == 0 and rows[-1][1] == 93


def test_two_periods_with_a_gap_re_entry(cohort: dict) -> None:
    p = cohort["P5"]
    assert p["care_days"] == 92 + 59 and p["physical_abuse"] == 1
    rows = cohort["_person_time"][("P5", "emergency_admission")]
    assert [r[:3] for r in rows[:3]] == [(0, 92, 1), (92, 306, 0), (306, 365, 1)]
    assert rows[3][2] == 0
    years = dict(cohort["_school_years"]["P5"])
    assert years[2011] == 1 and years[2012] == 1 and years[2013] == 0


def test_placement_move_on_the_day_of_entry(cohort: dict) -> None:
    p = cohort["P6"]
    assert p["placement_moves"] == 2 and str(p["care_entry_date"]) == "2012-03-01"
    assert p["care_long"] == 1 and p["care_days"] == 671


def test_outcome_on_the_day_of_care_entry_counts_as_looked_after(cohort: dict) -> None:
    rows = cohort["_person_time"][("P7", "self_harm")]
    assert rows == [(0, 61, 0, 0), (61, 62, 1, 1)]


def test_child_with_no_school_record(cohort: dict) -> None:
    p = cohort["P8"]
    assert p["group"] == "NLA" and p["persistent_absence"] is None
    assert cohort["_school_years"]["P8"] == []
    assert p["prior_emergency_admissions"] == 1 and p["prior_ks2_missing"] == 1


def test_low_quality_link_kept_by_default_and_dropped_when_restricted(
    cohort: dict, tmp_path: Path
) -> None:
    assert "P9" in cohort
    cfg = load_study_config().model_copy(
        update={"link_quality": {"restrict_to_high_quality": True}}
    )
    cfg = StudyConfig.model_validate(cfg.model_dump())
    con = _build(tmp_path, cfg)
    keys = {r[0] for r in con.execute("SELECT person_key FROM cohort.children").fetchall()}
    steps = con.execute(
        "SELECT description, n_excluded FROM cohort.attrition ORDER BY step"
    ).fetchall()
    con.close()
    assert "P9" not in keys and len(keys) == 8
    assert steps[-1] == ("all records linked with high quality", 1)


def test_attrition_counts_add_up(tmp_path: Path) -> None:
    con = _build(tmp_path)
    rows = con.execute(
        "SELECT step, n_remaining, n_excluded FROM cohort.attrition ORDER BY step"
    ).fetchall()
    con.close()
    for (_, prev, _), (_, n, excluded) in itertools.pairwise(rows):
        assert prev - n == excluded


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("outcomes:\n  - name: broken_leg\n", "unknown outcome 'broken_leg'"),
        (
            "outcomes:\n  - name: self_harm\n    codelist_group: self_hurt\n",
            "self_hurt.*does not exist",
        ),
        ("study_window: {start: 2020-01-01, end: 2010-01-01}\n", "study_window.*ends"),
        ("covariates: {window: before_outcome}\n", "covariates.window"),
        ("exposure: {long_care_dayz: 3}\n", "long_care_dayz"),
    ],
)
def test_wrong_config_is_a_clear_error(tmp_path: Path, yaml_text: str, message: str) -> None:
    p = tmp_path / "study.yaml"
    p.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_study_config(p)
