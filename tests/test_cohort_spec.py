"""Spec tests for the cohort derivation: in each test a few hand-written patients, as small
tables per analysis table, then the rows expected in the cohort table under test.

:func:`tests.cohort_fixtures.derived` runs the cohort's named steps up to that table on an
in-memory database. Every child below is born on Monday 2005-01-03 unless the test says
otherwise, and with the shipped study config follow-up ends at age 18 (2023-01-03) at the
latest.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import duckdb
import pytest

from cohort import UnknownStepError, build_cohort, cohort_steps, load_study_config
from cohort.config import StudyConfig
from ground.errors import ConfigError
from ground.run_layout import RunLayout
from tests.cohort_fixtures import (
    Derivation,
    derived,
    load_analysis_zone,
    read_rows,
    table,
    write_analysis_zone,
)


def test_care_starting_on_the_index_date() -> None:
    patients = {
        "persons": """
            person_key | week_of_birth
            P1         | 2005-01-03
        """,
        "population_register": """
            person_key | period_start
            P1         | 2005-01-03
        """,
        "care_support_census": """
            person_key | referral_date | parent_domestic_abuse
            P1         | 2012-03-01    | true
        """,
        "looked_after_episodes": """
            person_key | episode_start | episode_end
            P1         | 2012-03-01    | 2013-06-01
        """,
        "attainment": """
            person_key | key_stage | academic_year | ks4_capped_points | ks4_level2_inclusive
            P1         | KS4       | 2019          | 30.0              | false
        """,
    }
    cohort = Derivation(patients)
    # the abuse is recorded at the index referral, so it is pre-care
    children = table("""
        person_key | group | index_date | care_entry_date | care_days | care_long | care_short | domestic_abuse
        P1         | CLA   | 2012-03-01 | 2012-03-01      | 457       | 1         | 0          | 1
    """)
    assert cohort.rows("children", children) == children
    ks4 = table("""
        person_key | ks4_score | ks4_care_group | ks4_care_days
        P1         | 30.0      | long           | 457
    """)
    assert cohort.rows("children", ks4) == ks4
    # exposed from day 0 to the end of care (2013-06-01 is day 457)
    person_time = table("""
        person_key | start_day | stop_day | looked_after | event
        P1         | 0         | 457      | 1            | 0
        P1         | 457       | 3961     | 0            | 0
    """)
    assert cohort.rows("person_time", person_time, where="outcome = 'self_harm'") == person_time


def test_adversity_recorded_after_care_entry_is_not_pre_care() -> None:
    patients = {
        "persons": """
            person_key | week_of_birth
            P2         | 2005-01-03
        """,
        "population_register": """
            person_key | period_start
            P2         | 2005-01-03
        """,
        "care_support_census": """
            person_key | referral_date | parent_mental_ill_health
            P2         | 2012-03-01    | false
            P2         | 2013-01-01    | true
        """,
        "looked_after_episodes": """
            person_key | episode_start | episode_end
            P2         | 2012-05-01    | 2012-09-01
        """,
    }
    cohort = Derivation(patients)
    # the second referral (after care entry on 2012-05-01) is not read for the index covariates
    index_rows = table("""
        person_key | parental_mental_ill_health
        P2         | 0
    """)
    assert cohort.rows("index_rows", index_rows) == index_rows
    children = table("""
        person_key | group | parental_mental_ill_health | care_days | care_short | care_long
        P2         | CLA   | 0                          | 123       | 1          | 0
    """)
    assert cohort.rows("children", children) == children


def test_factors_recorded_in_a_census_year_after_care_entry_are_not_pre_care() -> None:
    """The same referral returned again in the 2015 census (after care began in May 2013)
    with a factor newly recorded at a review in November 2014: it is not pre-care, although
    the row's referral is the index referral."""
    patients = {
        "persons": """
            person_key | week_of_birth
            P1         | 2005-01-03
        """,
        "population_register": """
            person_key | period_start
            P1         | 2005-01-03
        """,
        "care_support_census": """
            person_key | referral_date | census_year | assessment_date | parent_domestic_abuse
            P1         | 2012-03-01    | 2013        | 2012-03-01      | false
            P1         | 2012-03-01    | 2015        | 2014-11-20      | true
        """,
        "looked_after_episodes": """
            person_key | episode_start | episode_end
            P1         | 2013-05-01    | 2014-06-01
        """,
    }
    index_rows = table("""
        person_key | domestic_abuse
        P1         | 0
    """)
    assert derived("index_rows", patients, index_rows) == index_rows


PRE_CARE_COLUMNS = (
    "index_date",
    "age_at_index",
    "la_code",
    "physical_abuse",
    "parental_mental_ill_health",
    "parental_substance_misuse",
    "domestic_abuse",
    "parental_learning_disability",
    "disability",
    "deprivation_decile",
    "prior_ks2_expected",
    "prior_ks2_missing",
    "prior_emergency_admissions",
)
# a census row recording every factor, a PHY protection plan, a disability and another LA
EVERYTHING = "true | true | true | true | PHY | true | W06000001"
# one child per kind of census row dated after the index date (all but B5 after care entry)
LATER_ROWS = {
    # a review of the index referral filed in a later census year
    "B1": f"2012-03-01 | 2015 | 2014-11-20 | 2014-11-20 | {EVERYTHING}",
    # the same review filed late, two census years after its assessment
    "B2": f"2012-03-01 | 2017 | 2014-11-20 | 2014-11-20 | {EVERYTHING}",
    # a review dated after entry but filed in the index census year (a wrong census year)
    "B3": f"2012-03-01 | 2012 | 2013-06-01 | 2013-06-01 | {EVERYTHING}",
    # a review dated on the day care starts
    "B4": f"2012-03-01 | 2013 | 2013-05-01 | 2013-05-01 | {EVERYTHING}",
    # a review after the index date but before care starts: not a baseline record either
    "B5": f"2012-03-01 | 2013 | 2012-09-10 | 2012-09-10 | {EVERYTHING}",
    # a second referral after care began
    "B6": f"2014-02-01 | 2014 | 2014-02-01 | 2014-02-01 | {EVERYTHING}",
}


def test_a_census_row_dated_after_the_index_date_never_changes_a_pre_care_covariate() -> None:
    """Issue 18: children B0-B6 have the same records (index referral 2012-03-01 recording
    parental mental ill health, care from 2013-05-01), and B1-B6 one more census row dated
    after the index date (LATER_ROWS): every pre-care covariate is B0's."""
    keys = ["B0", *LATER_ROWS]
    census = [
        "person_key | referral_date | census_year | assessment_date | child_protection_plan_start"
        " | parent_domestic_abuse | parent_mental_ill_health | parent_substance_misuse"
        " | parent_learning_disability | child_protection_category | disability | la_code"
    ]
    census += [
        f"{k} | 2012-03-01 | 2012 | 2012-03-01 | | false | true | false | false | | false | W06000015"
        for k in keys
    ]
    census += [f"{k} | {row}" for k, row in LATER_ROWS.items()]
    patients = {
        "persons": "person_key | week_of_birth\n" + "\n".join(f"{k} | 2005-01-03" for k in keys),
        "population_register": "person_key | period_start\n"
        + "\n".join(f"{k} | 2005-01-03" for k in keys),
        "looked_after_episodes": "person_key | episode_start | episode_end\n"
        + "\n".join(f"{k} | 2013-05-01 | 2014-06-01" for k in keys),
        "attainment": "person_key | key_stage | academic_year | ks2_expected_standard\n"
        + "\n".join(f"{k} | KS2 | 2015 | true" for k in keys),
        "hospital_admissions": "person_key | admission_date | admission_method | primary_diagnosis\n"
        + "\n".join(f"{k} | 2013-08-01 | 21 | J45.9" for k in keys),
        "care_support_census": "\n".join(census),
    }
    children = derived("children", patients, ["person_key", *PRE_CARE_COLUMNS])
    baseline = {c: v for c, v in children[0].items() if c != "person_key"}
    assert baseline["parental_mental_ill_health"] == "1" and baseline["domestic_abuse"] == "0"
    assert children == [{"person_key": k} | baseline for k in keys]


def test_factors_and_plans_recorded_after_the_index_date_are_time_varying() -> None:
    """P1: domestic abuse recorded at the index referral (2012-03-01); a review on 2012-09-10
    (day 193) records parental mental ill health and starts a protection plan; one on the day
    care starts (2013-01-15, day 320) records a parental learning disability; a record of a
    review on 2013-06-01 (day 457) adding substance misuse is filed late, in the 2015 census.
    Each applies from the day after its date. P2: a PHY plan from the index referral, carried
    on later rows, is neither a new plan nor a new factor."""
    patients = {
        "persons": """
            person_key | week_of_birth
            P1         | 2005-01-03
            P2         | 2005-01-03
        """,
        "population_register": """
            person_key | period_start
            P1         | 2005-01-03
            P2         | 2005-01-03
        """,
        "care_support_census": """
            person_key | referral_date | census_year | assessment_date | child_protection_registered | child_protection_category | child_protection_plan_start | parent_domestic_abuse | parent_mental_ill_health | parent_learning_disability | parent_substance_misuse
            P1         | 2012-03-01    | 2012        | 2012-03-01      | false                       |                           |                             | true                  | false                    | false                      | false
            P1         | 2012-03-01    | 2013        | 2012-09-10      | true                        | NEG                       | 2012-09-10                  | true                  | true                     | false                      | false
            P1         | 2012-03-01    | 2013        | 2013-01-15      | true                        | NEG                       | 2012-09-10                  | true                  | true                     | true                       | false
            P1         | 2012-03-01    | 2015        | 2013-06-01      | true                        | NEG                       | 2012-09-10                  | true                  | true                     | true                       | true
            P2         | 2012-03-01    | 2012        | 2012-03-01      | true                        | PHY                       | 2012-03-01                  | false                 | false                    | false                      | false
            P2         | 2012-03-01    | 2014        | 2013-06-01      | true                        | PHY                       | 2012-03-01                  | false                 | false                    | false                      | false
        """,
        "looked_after_episodes": """
            person_key | episode_start | episode_end
            P1         | 2013-01-15    | 2014-01-01
        """,
    }
    cohort = Derivation(patients)
    person_time = table("""
        person_key | start_day | stop_day | looked_after | new_factors_recorded | new_protection_plan
        P1         | 0         | 194      | 0            | 0                    | 0
        P1         | 194       | 320      | 0            | 1                    | 1
        P1         | 320       | 321      | 1            | 1                    | 1
        P1         | 321       | 458      | 1            | 2                    | 1
        P1         | 458       | 671      | 1            | 3                    | 1
        P1         | 671       | 3961     | 0            | 3                    | 1
        P2         | 0         | 3961     | 0            | 0                    | 0
    """)
    where = "outcome = 'emergency_admission'"
    assert cohort.rows("person_time", person_time, where=where) == person_time
    # and none of it is a pre-care covariate
    children = table("""
        person_key | domestic_abuse | parental_mental_ill_health | parental_learning_disability | parental_substance_misuse | physical_abuse
        P1         | 1              | 0                          | 0                            | 0                         | 0
        P2         | 0              | 0                          | 0                            | 0                         | 1
    """)
    assert cohort.rows("children", children) == children


def test_school_years_exposure_and_covariates_measured_before_the_year() -> None:
    """Care from 2012-03-01 to 2012-09-01 (the end day is not in care): 184 of the 366 days of
    academic year 2011 and none of 2012. A review on 2012-09-01 (day 184) records parental
    mental ill health: not before academic year 2012 starts that day, so from 2013 only.
    Absence 10%, 20%, 5% in academic years 2011-2013."""
    patients = {
        "persons": """
            person_key | week_of_birth
            P3         | 2005-01-03
        """,
        "population_register": """
            person_key | period_start
            P3         | 2005-01-03
        """,
        "care_support_census": """
            person_key | referral_date | census_year | assessment_date | parent_mental_ill_health
            P3         | 2012-03-01    | 2012        | 2012-03-01      | false
            P3         | 2012-03-01    | 2013        | 2012-09-01      | true
        """,
        "looked_after_episodes": """
            person_key | episode_start | episode_end
            P3         | 2012-03-01    | 2012-09-01
        """,
        "school_census": """
            person_key | academic_year | sessions_possible | sessions_authorised_absence | sessions_unauthorised_absence
            P3         | 2011          | 300               | 30                          | 0
            P3         | 2012          | 300               | 40                          | 20
            P3         | 2013          | 300               | 10                          | 5
        """,
    }
    cohort = Derivation(patients)
    school_years = table("""
        academic_year | looked_after_share | looked_after_this_year | years_since_entry | new_factors_recorded | last_year_absence_rate
        2011          | 0.5027322404371585 | 1                      | 0                 | 0                    |
        2012          | 0.0                | 0                      | 0                 | 0                    | 0.1
        2013          | 0.0                | 0                      | 1                 | 1                    | 0.2
    """)
    assert cohort.rows("school_years", school_years) == school_years
    # person time: split at care's end (day 184), the day after the review (185) and each
    # 1 September that changes last year's absence (days 184, 549, 914, 1279)
    person_time = table("""
        start_day | stop_day | looked_after | new_factors_recorded | last_year_absence_rate
        0         | 184      | 1            | 0                    |
        184       | 185      | 0            | 0                    | 0.1
        185       | 549      | 0            | 1                    | 0.1
        549       | 914      | 0            | 1                    | 0.2
        914       | 1279     | 0            | 1                    | 0.05
        1279      | 3961     | 0            | 1                    |
    """)
    where = "outcome = 'self_harm'"
    assert cohort.rows("person_time", person_time, where=where) == person_time


def test_years_since_entry_counts_whole_years_to_each_1_september() -> None:
    patients = {
        "persons": """
            person_key | week_of_birth
            P4         | 2005-01-03
            P5         | 2005-01-03
        """,
        "population_register": """
            person_key | period_start
            P4         | 2005-01-03
            P5         | 2005-01-03
        """,
        "care_support_census": """
            person_key | referral_date
            P4         | 2011-03-01
            P5         | 2011-03-01
        """,
        "looked_after_episodes": """
            person_key | episode_start | episode_end
            P4         | 2012-03-01    | 2014-01-01
        """,
        "school_census": """
            person_key | academic_year
            P4         | 2010
            P4         | 2011
            P4         | 2012
            P4         | 2013
            P4         | 2015
            P5         | 2012
        """,
    }
    # P4 enters during academic year 2011 (0 whole years to its 1 September); 2012-09-01 is 184
    # days after entry (0), 2013-09-01 549 (1), 2015-09-01 1279 (3); P5 is never looked after
    school_years = table("""
        person_key | academic_year | years_since_entry | looked_after_this_year
        P4         | 2010          |                   | 0
        P4         | 2011          | 0                 | 1
        P4         | 2012          | 0                 | 1
        P4         | 2013          | 1                 | 1
        P4         | 2015          | 3                 | 0
        P5         | 2012          |                   | 0
    """)
    assert derived("school_years", patients, school_years) == school_years


def test_child_who_leaves_the_region_and_returns_is_censored_at_leaving() -> None:
    patients = {
        "persons": """
            person_key | week_of_birth
            P3         | 2005-01-03
        """,
        "population_register": """
            person_key | period_start | period_end | end_reason
            P3         | 2005-01-03   | 2013-05-31 | LEFT
            P3         | 2014-02-01   |            |
        """,
        "care_support_census": """
            person_key | referral_date
            P3         | 2012-01-10
        """,
    }
    cohort = Derivation(patients)
    children = table("""
        person_key | group | followup_end | followup_end_reason
        P3         | NLA   | 2013-05-31   | left_region
    """)
    assert cohort.rows("children", children) == children
    # 2012-01-10 .. 2013-05-31 inclusive is 508 days (2012 is a leap year)
    person_time = table("""
        person_key | outcome   | start_day | stop_day | looked_after | event
        P3         | self_harm | 0         | 508      | 0            | 0
    """)
    assert cohort.rows("person_time", person_time, where="outcome = 'self_harm'") == person_time


def test_death_before_the_outcome() -> None:
    patients = {
        "persons": """
            person_key | week_of_birth
            P4         | 2005-01-03
        """,
        "population_register": """
            person_key | period_start | period_end | end_reason | date_of_death
            P4         | 2005-01-03   | 2012-06-01 | DIED       | 2012-06-01
        """,
        "care_support_census": """
            person_key | referral_date
            P4         | 2012-03-01
        """,
        "emergency_department": """
            person_key | arrival_date | diagnosis
            P4         | 2013-02-01   | X60
        """,
    }
    cohort = Derivation(patients)
    children = table("""
        person_key | followup_end | followup_end_reason
        P4         | 2012-06-01   | died
    """)
    assert cohort.rows("children", children) == children
    # the self-harm record dated after death is not an event; follow-up ends on day 93
    person_time = table("""
        person_key | outcome   | start_day | stop_day | looked_after | event
        P4         | self_harm | 0         | 93       | 0            | 0
    """)
    assert cohort.rows("person_time", person_time, where="outcome = 'self_harm'") == person_time


def test_two_periods_with_a_gap_re_entry() -> None:
    patients = {
        "persons": """
            person_key | week_of_birth
            P5         | 2005-01-03
        """,
        "population_register": """
            person_key | period_start
            P5         | 2005-01-03
        """,
        "care_support_census": """
            person_key | referral_date | child_protection_registered | child_protection_category
            P5         | 2012-03-01    | true                        | PHY
        """,
        "looked_after_episodes": """
            person_key | episode_start | episode_end
            P5         | 2012-03-01    | 2012-06-01
            P5         | 2013-01-01    | 2013-03-01
        """,
        "school_census": """
            person_key | academic_year
            P5         | 2011
            P5         | 2012
            P5         | 2013
        """,
    }
    cohort = Derivation(patients)
    children = table("""
        person_key | care_days | physical_abuse
        P5         | 151       | 1
    """)  # 92 + 59 days
    assert cohort.rows("children", children) == children
    # also split at each 1 September that changes last year's absence (2012 to 2015: days
    # 184, 549, 914, 1279), which leaves looked_after as it was
    person_time = table("""
        person_key | start_day | stop_day | looked_after | event
        P5         | 0         | 92       | 1            | 0
        P5         | 92        | 184      | 0            | 0
        P5         | 184       | 306      | 0            | 0
        P5         | 306       | 365      | 1            | 0
        P5         | 365       | 549      | 0            | 0
        P5         | 549       | 914      | 0            | 0
        P5         | 914       | 1279     | 0            | 0
        P5         | 1279      | 3961     | 0            | 0
    """)
    where = "outcome = 'emergency_admission'"
    assert cohort.rows("person_time", person_time, where=where) == person_time
    # academic year 2013 (Sept 2013 - Aug 2014) has no care
    school_years = table("""
        person_key | academic_year | looked_after_this_year
        P5         | 2011          | 1
        P5         | 2012          | 1
        P5         | 2013          | 0
    """)
    assert cohort.rows("school_years", school_years) == school_years


def test_placement_move_on_the_day_of_entry() -> None:
    patients = {
        "persons": """
            person_key | week_of_birth
            P6         | 2005-01-03
        """,
        "population_register": """
            person_key | period_start
            P6         | 2005-01-03
        """,
        "care_support_census": """
            person_key | referral_date
            P6         | 2012-03-01
        """,
        "looked_after_episodes": """
            person_key | episode_start | episode_end | reason_episode_started | reason_episode_ended
            P6         | 2012-03-01    | 2012-03-01  | S                      | X1
            P6         | 2012-03-01    | 2012-12-01  | P                      | X1
            P6         | 2012-12-01    | 2014-01-01  | P                      | E4A
        """,
    }
    children = table("""
        person_key | care_entry_date | placement_moves | care_long | care_days
        P6         | 2012-03-01      | 2                | 1         | 671
    """)
    assert derived("children", patients, children) == children


def test_outcome_on_the_day_of_care_entry_counts_as_looked_after() -> None:
    patients = {
        "persons": """
            person_key | week_of_birth
            P7         | 2005-01-03
        """,
        "population_register": """
            person_key | period_start
            P7         | 2005-01-03
        """,
        "care_support_census": """
            person_key | referral_date
            P7         | 2012-03-01
        """,
        "looked_after_episodes": """
            person_key | episode_start | episode_end
            P7         | 2012-05-01    |
        """,
        "emergency_department": """
            person_key | arrival_date | diagnosis
            P7         | 2012-05-01   | X78
        """,
    }
    person_time = table("""
        person_key | start_day | stop_day | looked_after | event
        P7         | 0         | 61       | 0            | 0
        P7         | 61        | 62       | 1            | 1
    """)
    self_harm = "outcome = 'self_harm'"
    assert derived("person_time", patients, person_time, where=self_harm) == person_time


def test_care_still_open_at_the_end_of_follow_up_ends_there() -> None:
    patients = {
        "persons": """
            person_key | week_of_birth
            P7         | 2005-01-03
        """,
        "population_register": """
            person_key | period_start
            P7         | 2005-01-03
        """,
        "care_support_census": """
            person_key | referral_date
            P7         | 2012-03-01
        """,
        "looked_after_episodes": """
            person_key | episode_start | episode_end
            P7         | 2012-05-01    |
        """,
    }
    cohort = Derivation(patients)
    # follow-up ends at 18 (2023-01-03, day 3960); care from day 61 is cut there
    children = table("""
        person_key | care_entry_date | care_days | followup_end | followup_end_reason
        P7         | 2012-05-01      | 3899      | 2023-01-03   | age_limit
    """)
    assert cohort.rows("children", children) == children
    # the day care ends counts as not looked after (docs/cohort.md), also when the end is the
    # cut at the end of follow-up: the last day of follow-up is unexposed
    person_time = table("""
        person_key | start_day | stop_day | looked_after | event
        P7         | 0         | 61       | 0            | 0
        P7         | 61        | 3960     | 1            | 0
        P7         | 3960      | 3961     | 0            | 0
    """)
    where = "outcome = 'emergency_admission'"
    assert cohort.rows("person_time", person_time, where=where) == person_time


def test_child_with_no_school_record() -> None:
    patients = {
        "persons": """
            person_key | week_of_birth
            P8         | 2005-01-03
        """,
        "population_register": """
            person_key | period_start
            P8         | 2005-01-03
        """,
        "care_support_census": """
            person_key | referral_date
            P8         | 2012-03-01
        """,
        "hospital_admissions": """
            person_key | admission_date | admission_method | primary_diagnosis
            P8         | 2011-01-01     | 21               | J45.9
        """,
    }
    cohort = Derivation(patients)
    # the emergency admission before the index date is prior use
    children = table("""
        person_key | group | persistent_absence | prior_emergency_admissions | prior_ks2_missing
        P8         | NLA   |                    | 1                          | 1
    """)
    assert cohort.rows("children", children) == children
    assert cohort.rows("school_years", ["person_key"]) == []


def test_each_inclusion_criterion_excludes_its_child() -> None:
    """Each criterion excludes exactly one child, in order, and the counts add up."""
    patients = {
        "persons": """
            person_key | week_of_birth
            A1         | 2005-01-03
            A2         | 2010-01-04
            A3         | 1998-01-05
            A4         | 2000-01-03
            A5         | 2005-01-03
            A6         | 2005-01-03
            A7         | 2005-01-03
        """,
        "population_register": """
            person_key | period_start | period_end | end_reason | date_of_death
            A1         | 2005-01-03   |            |            |
            A2         | 2010-01-04   |            |            |
            A3         | 1998-01-05   |            |            |
            A4         | 2000-01-03   |            |            |
            A6         | 2005-01-03   |            |            |
            A7         | 2005-01-03   | 2012-01-01 | DIED       | 2012-01-01
        """,
        "care_support_census": """
            person_key | referral_date
            A1         | 2012-03-01
            A2         | 2024-10-01
            A3         | 2012-03-01
            A4         | 2018-06-01
            A5         | 2012-03-01
            A6         | 2012-03-01
            A7         | 2012-03-01
        """,
        "looked_after_episodes": """
            person_key | episode_start | episode_end
            A6         | 2011-01-01    | 2011-06-01
        """,
    }
    cohort = Derivation(patients)
    # A2 referred after the window, A3 born in 1998, A4 referred at 18, A5 not on the register,
    # A6 looked after before the referral, A7 registered dead before it
    attrition = table("""
        step | description                                                    | n_remaining | n_excluded
        1    | children with a care-and-support record (children in need)    | 7           | 0
        2    | first social-services contact (index date) in the study window | 6           | 1
        3    | born in the study's birth cohorts                              | 5           | 1
        4    | index date before age 18                                       | 4           | 1
        5    | linked to the population register (follow-up known)           | 3           | 1
        6    | not looked after before the index date                         | 2           | 1
        7    | follow-up after the index date                                 | 1           | 1
    """)
    assert cohort.rows("attrition", attrition) == attrition
    assert cohort.rows("eligible", ["person_key"]) == [{"person_key": "A1"}]


def test_low_quality_link_kept_by_default_and_dropped_when_restricted(tmp_path: Path) -> None:
    patients = {
        "persons": """
            person_key | week_of_birth | link_quality_min | high_quality_links
            P1         | 2005-01-03    | 1.0              | 1
            P9         | 2005-01-03    | 0.8              | 0
        """,
        "population_register": """
            person_key | period_start
            P1         | 2005-01-03
            P9         | 2005-01-03
        """,
        "care_support_census": """
            person_key | referral_date
            P1         | 2012-03-01
            P9         | 2012-03-01
        """,
    }
    kept = table("""
        person_key | link_quality_min | high_quality_links
        P1         | 1.0              | 1
        P9         | 0.8              | 0
    """)
    assert derived("children", patients, kept) == kept
    # restricted, through the whole build: the cohort tables of a run folder
    cfg = StudyConfig.model_validate(
        load_study_config().model_dump() | {"link_quality": {"restrict_to_high_quality": True}}
    )
    layout = RunLayout.at(tmp_path)
    layout.ensure()
    write_analysis_zone(layout.analysis_db, patients)
    summary = build_cohort(layout=layout, config=cfg)
    with duckdb.connect(str(layout.analysis_db), read_only=True) as con:
        children = read_rows(con, "cohort.children", ["person_key"])
        attrition = read_rows(con, "cohort.attrition", ["step", "description", "n_excluded"])
    assert children == [{"person_key": "P1"}] and summary.n_children == 1
    assert attrition[-1] == {
        "step": "8",
        "description": "all records linked with high quality",
        "n_excluded": "1",
    }
    assert [a[3] for a in summary.attrition] == [0] * 7 + [1]


def test_stop_after_a_step_makes_it_and_the_steps_before_only() -> None:
    steps = cohort_steps(load_study_config())
    with duckdb.connect() as con:
        load_analysis_zone(con, {})
        steps.run(con, stop_after="index_rows")
        made = con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()
        assert {t for (t,) in made} == set(steps.names[: steps.names.index("index_rows") + 1])
        assert "children" not in {t for (t,) in made}
        with pytest.raises(UnknownStepError, match=r"'index_row'; the steps are: .*index_rows"):
            steps.run(con, stop_after="index_row")
    printed = str(steps["care"])  # one step's SQL alone, with its parameter values
    assert printed.startswith("-- care: ") and "-- $long_care_days = 365" in printed
    assert 'CREATE OR REPLACE TEMP TABLE "care" AS' in printed and printed.count(";") == 1


def test_config_values_reach_the_sql_as_parameters_not_text() -> None:
    """Two configs that differ in every date, number, censoring switch and outcome name make
    the same SQL text: only the parameters differ."""
    default = load_study_config()
    names = [o.name for o in default.outcomes]
    other = StudyConfig.model_validate(
        default.model_dump()
        | {
            "study_window": {"start": dt.date(2005, 2, 3), "end": dt.date(2019, 4, 5)},
            "birth_cohorts": {"first": 2001, "last": 2009},
            "exposure": {"long_care_days": 200, "exclude_care_before_index": True},
            "censoring": {"at_age": 16, "at_leaving_region": False, "at_death": False},
            "persistent_absence_rate": 0.15,
            "outcomes": [
                o.model_dump() | {"name": n}
                for o, n in zip(default.outcomes, names[1:] + names[:1], strict=True)
            ],
        }
    )
    a, b = cohort_steps(default), cohort_steps(other)
    assert a.names == b.names
    for x, y in zip(a, b, strict=True):
        assert x.sql == y.sql, f"config text in the SQL of step {x.name}"
    differ = {x.name for x, y in zip(a, b, strict=True) if x.params != y.params}
    assert differ == {
        "children_in_need",
        "inclusion",
        "attrition",
        "care",
        "children",
        "first_events",
        "person_time",
    }


def test_docs_list_every_step_in_order() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "cohort.md").read_text(encoding="utf-8")
    section = docs.split("\n## Steps\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| \d+ \| `(\w+)` \|", section, flags=re.MULTILINE)
    assert listed == cohort_steps(load_study_config()).names


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


def test_school_years_exposure_is_the_one_the_worlds_truth_uses(
    world: Path, full_run: Path
) -> None:
    """Issue 18: the yearly exposure of cohort.school_years and of the synthetic truth
    (truth/school_years.parquet, behind effects.json's absence estimand) are one definition:
    on the shared run, each linked pupil-year's share of the academic year looked after, and
    so looked_after_this_year, is the truth's (a few may differ through linkage)."""
    truth = world / "truth"
    with duckdb.connect() as con:
        con.execute("ATTACH ? AS az (READ_ONLY)", [str(full_run / "analysis_zone.duckdb")])
        (n, n_exposed, same_share, same_exposure) = con.execute(
            """
            SELECT count(*), count(*) FILTER (WHERE y.looked_after_this_year = 1 OR t.looked_after_share > 0),
                   count(*) FILTER (WHERE abs(y.looked_after_share - t.looked_after_share) < 1e-6),
                   count(*) FILTER (WHERE (y.looked_after_this_year = 1 OR t.looked_after_share > 0)
                                      AND y.looked_after_this_year = CAST(t.looked_after_share > 0 AS INTEGER))
            FROM az.cohort.school_years y
            JOIN (SELECT person_key, academic_year, min(record_id) AS record_id
                  FROM az.analysis.school_census GROUP BY ALL) s USING (person_key, academic_year)
            JOIN read_parquet(?) r ON r.source = 'school_census' AND r.record_id = s.record_id
            JOIN read_parquet(?) t ON t.person_id = r.person_id AND t.academic_year = y.academic_year
            """,
            [str(truth / "record_person.parquet"), str(truth / "school_years.parquet")],
        ).fetchall()[0]
    assert n > 1000 and n_exposed > 50
    assert same_share >= 0.995 * n
    assert same_exposure >= 0.98 * n_exposed
