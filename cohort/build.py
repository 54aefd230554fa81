"""Cohort derivation in DuckDB SQL over the analysis zone, as named steps.

Each function below returns the :class:`~cohort.steps.Step` s of one part of the derivation
(one temporary table per step); :func:`cohort_steps` lists them all in order and
:func:`build_cohort` runs them and swaps the four cohort tables into the analysis zone. Values
from the study config are named parameters; code-list values (shipped files, not config) are
quoted literals. Days are counted from the index date; an event on day ``d`` closes the
interval ``[.., d + 1)``, so an event on the index date has time 1 day.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from cohort.config import Outcome, StudyConfig, config_to_yaml, load_study_config
from cohort.steps import CohortSteps, Step
from ground.db import DuckDBSettings, connect, quote_ident, replace_table_atomically, sql_string
from ground.errors import RunStateError
from ground.run_layout import RunLayout
from schemas.contracts import load_codelist

log = logging.getLogger(__name__)

COHORT_TABLES = ("children", "person_time", "school_years", "attrition")


@dataclass
class CohortSummary:
    n_children: int
    n_cla: int
    n_nla: int
    attrition: list[tuple[int, str, int, int]]
    row_counts: dict[str, int] = field(default_factory=dict)

    def to_markdown(self) -> str:
        lines = ["| step | description | remaining | excluded |", "|---:|---|---:|---:|"]
        lines += [f"| {s} | {d} | {n:,} | {x:,} |" for s, d, n, x in self.attrition]
        lines += [
            "",
            f"Cohort: {self.n_children:,} children ({self.n_cla:,} CLA, {self.n_nla:,} NLA).",
        ]
        return "\n".join(lines)


def _lit(v: object) -> str:
    """A string literal for a code-list value (shipped files, not config)."""
    return sql_string(str(v))


def icd_condition(column: str, group: str) -> str:
    g = load_codelist("icd10_groups")[group]
    return f"substr({column}, 1, 3) BETWEEN {_lit(g['code_from'])} AND {_lit(g['code_to'])}"


def inclusion_criteria(cfg: StudyConfig) -> list[tuple[str, str]]:
    """The attrition steps: a description and a condition on ``inclusion``'s columns (SQL
    written here; the config only chooses which criteria apply)."""
    criteria = [
        ("children with a care-and-support record (children in need)", "TRUE"),
        ("first social-services contact (index date) in the study window", "in_window"),
        ("born in the study's birth cohorts", "in_cohorts"),
        (f"index date before age {cfg.censoring.at_age}", "under_age_limit"),
        ("linked to the population register (follow-up known)", "on_register"),
    ]
    if cfg.exposure.exclude_care_before_index:
        criteria.append(("not looked after before the index date", "NOT care_before_index"))
    criteria.append(("follow-up after the index date", "followup_end >= index_date"))
    if cfg.link_quality.restrict_to_high_quality:
        criteria.append(("all records linked with high quality", "high_quality_links = 1"))
    return criteria


def index_steps(cfg: StudyConfig) -> list[Step]:
    """Children in need, their index date and follow-up, and who is eligible."""
    w, c = cfg.study_window, cfg.censoring
    children_in_need = Step(
        "children_in_need",
        "one row per child with a care-and-support record: index date (first referral), "
        "demographics, first care episode, age limit, leaving and death dates",
        """
WITH idx AS (
    SELECT person_key, min(referral_date) AS index_date
    FROM analysis.care_support_census GROUP BY person_key
), reg AS (
    SELECT person_key,
           min(period_start) AS first_residence,
           min(CASE WHEN end_reason = 'DIED' THEN coalesce(date_of_death, period_end) END) AS death_date
    FROM analysis.population_register GROUP BY person_key
), left_region AS (
    SELECT r.person_key, min(r.period_end) AS left_date
    FROM analysis.population_register r JOIN idx USING (person_key)
    WHERE r.end_reason = 'LEFT' AND r.period_end >= idx.index_date
    GROUP BY r.person_key
), first_care AS (
    SELECT person_key, min(episode_start) AS first_episode_start
    FROM analysis.looked_after_episodes GROUP BY person_key
)
SELECT i.person_key, i.index_date, p.week_of_birth, p.sex, p.ethnicity,
       p.deprivation_decile AS person_deprivation_decile,
       p.link_quality_min, p.high_quality_links,
       year(p.week_of_birth + INTERVAL 3 DAY) AS birth_cohort,
       datediff('day', p.week_of_birth, i.index_date) / 365.25 AS age_at_index,
       reg.person_key IS NOT NULL AS on_register,
       fc.first_episode_start,
       CAST(p.week_of_birth + to_years($age_limit) AS DATE) AS age_limit_date,
       lr.left_date, reg.death_date
FROM idx i
JOIN analysis.persons p USING (person_key)
LEFT JOIN reg USING (person_key)
LEFT JOIN left_region lr USING (person_key)
LEFT JOIN first_care fc USING (person_key)""",
        {"age_limit": c.at_age},
    )
    inclusion = Step(
        "inclusion",
        "children_in_need with one flag per inclusion criterion and the end of follow-up",
        """
SELECT *,
       index_date BETWEEN $window_start AND $window_end AS in_window,
       birth_cohort BETWEEN $first_birth_cohort AND $last_birth_cohort AS in_cohorts,
       age_at_index < $age_limit AS under_age_limit,
       coalesce(first_episode_start < index_date, FALSE) AS care_before_index,
       least(age_limit_date,
             CASE WHEN $censor_at_leaving_region THEN coalesce(left_date, DATE '9999-12-31')
                  ELSE DATE '9999-12-31' END,
             CASE WHEN $censor_at_death THEN coalesce(death_date, DATE '9999-12-31')
                  ELSE DATE '9999-12-31' END,
             $window_end) AS followup_end
FROM children_in_need""",
        {
            "window_start": w.start,
            "window_end": w.end,
            "first_birth_cohort": cfg.birth_cohorts.first,
            "last_birth_cohort": cfg.birth_cohorts.last,
            "age_limit": c.at_age,
            "censor_at_leaving_region": c.at_leaving_region,
            "censor_at_death": c.at_death,
        },
    )
    criteria = inclusion_criteria(cfg)
    cumulative = ["TRUE"]
    for _, condition in criteria:
        cumulative.append(f"{cumulative[-1]} AND ({condition})")
    counts = "\nUNION ALL ".join(
        f"SELECT {i} AS step, $criterion_{i} AS description, count(*) AS n_remaining "
        f"FROM inclusion WHERE {where}"
        for i, where in enumerate(cumulative[1:], start=1)
    )
    attrition = Step(
        "attrition",
        "one row per inclusion criterion, in order: children remaining after it and excluded by it",
        f"""
SELECT CAST(step AS INTEGER) AS step, description, n_remaining,
       coalesce(lag(n_remaining) OVER (ORDER BY step) - n_remaining, 0) AS n_excluded
FROM (
{counts}
) ORDER BY step""",
        {f"criterion_{i}": description for i, (description, _) in enumerate(criteria, start=1)},
    )
    eligible = Step(
        "eligible",
        "the rows of inclusion that meet every criterion: the cohort, one row per child",
        f"SELECT * FROM inclusion WHERE {cumulative[-1]}",
    )
    return [children_in_need, inclusion, attrition, eligible]


def care_steps(cfg: StudyConfig) -> list[Step]:
    """Periods of care (episodes grouped at each 'S' start) on or after the index date."""
    episodes = Step(
        "episodes",
        "one row per looked-after episode starting between the index date and the end of "
        "follow-up, numbered by its period of care (a new period at each start reason 'S')",
        """
SELECT e.person_key, e.record_id, e.episode_start, e.episode_end, e.placement_type, e.reason_episode_started,
       sum(CASE WHEN e.reason_episode_started = 'S' THEN 1 ELSE 0 END)
           OVER (PARTITION BY e.person_key ORDER BY e.episode_start, e.record_id
                 ROWS UNBOUNDED PRECEDING) AS period
FROM analysis.looked_after_episodes e JOIN eligible USING (person_key)
WHERE e.episode_start >= eligible.index_date AND e.episode_start <= eligible.followup_end""",
    )
    periods = Step(
        "periods",
        "one row per period of care: start, end (open or late ends cut at the end of "
        "follow-up), first placement, placement moves",
        """
SELECT p.person_key, p.period, p.period_start,
       least(coalesce(p.period_end, el.followup_end), el.followup_end) AS period_end,
       p.first_placement, p.moves
FROM (
    SELECT person_key, period, min(episode_start) AS period_start,
           CASE WHEN bool_or(episode_end IS NULL) THEN NULL ELSE max(episode_end) END AS period_end,
           first(placement_type ORDER BY episode_start, record_id) AS first_placement,
           sum(CASE WHEN reason_episode_started IN ('P', 'T') THEN 1 ELSE 0 END) AS moves
    FROM episodes GROUP BY person_key, period
) p JOIN eligible el USING (person_key)""",
    )
    care = Step(
        "care",
        "one row per looked-after child: care entry date, days in care, whether the first "
        "period was long, placement moves, first placement",
        """
SELECT person_key, min(period_start) AS care_entry_date,
       sum(datediff('day', period_start, period_end)) AS care_days,
       arg_min(datediff('day', period_start, period_end), period_start) >= $long_care_days
           AS first_period_long,
       sum(moves) AS placement_moves,
       arg_min(first_placement, period_start) AS first_placement
FROM periods GROUP BY person_key""",
        {"long_care_days": cfg.exposure.long_care_days},
    )
    return [episodes, periods, care]


def covariate_steps() -> list[Step]:
    """Pre-care covariates and the per-child outcome measures read from other sources."""
    return [
        Step(
            "index_rows",
            "one row per child: adversity factors and disability recorded at assessments "
            "dated on or before the index date (the index referral's own assessment, whatever "
            "census year files it), and the earliest such row's LA",
            """
SELECT c.person_key,
       max(CAST(c.parent_domestic_abuse AS INTEGER)) AS domestic_abuse,
       max(CAST(c.parent_mental_ill_health AS INTEGER)) AS parental_mental_ill_health,
       max(CAST(c.parent_substance_misuse AS INTEGER)) AS parental_substance_misuse,
       max(CAST(c.parent_learning_disability AS INTEGER)) AS parental_learning_disability,
       max(CASE WHEN c.child_protection_category = 'PHY' THEN 1 ELSE 0 END) AS physical_abuse,
       max(CAST(coalesce(c.disability, FALSE) AS INTEGER)) AS disability,
       first(c.la_code ORDER BY c.census_year, c.record_id) AS la_code
FROM analysis.care_support_census c JOIN eligible e USING (person_key)
WHERE c.referral_date <= e.index_date AND c.assessment_date <= e.index_date
GROUP BY c.person_key""",
        ),
        Step(
            "deprivation_at_index",
            "one row per child with a register period starting on or before the index date: "
            "the latest such period's deprivation decile",
            """
SELECT e.person_key, arg_max(r.deprivation_decile, r.period_start) AS deprivation_decile
FROM eligible e JOIN analysis.population_register r USING (person_key)
WHERE r.period_start <= e.index_date
GROUP BY e.person_key""",
        ),
        Step(
            "ks2",
            "one row per child with a KS2 result from a year ending before the index date",
            """
SELECT e.person_key, max(CAST(a.ks2_expected_standard AS INTEGER)) AS prior_ks2_expected
FROM eligible e JOIN analysis.attainment a USING (person_key)
WHERE a.key_stage = 'KS2' AND make_date(a.academic_year + 1, 6, 1) < e.index_date
GROUP BY e.person_key""",
        ),
        Step(
            "ks4",
            "one row per child with a KS4 result: start of the KS4 year, score, level 2",
            """
SELECT e.person_key, make_date(any_value(a.academic_year), 9, 1) AS ks4_year_start,
       any_value(a.ks4_capped_points) AS ks4_score,
       any_value(CAST(a.ks4_level2_inclusive AS INTEGER)) AS ks4_level2_inclusive
FROM eligible e JOIN analysis.attainment a USING (person_key)
WHERE a.key_stage = 'KS4'
GROUP BY e.person_key""",
        ),
        Step(
            "ks4_care",
            "one row per child with a KS4 result: days in care before the KS4 year started",
            """
SELECT k.person_key,
       sum(greatest(0, datediff('day', p.period_start, least(p.period_end, k.ks4_year_start)))) AS ks4_care_days
FROM ks4 k JOIN periods p USING (person_key)
GROUP BY k.person_key""",
        ),
        Step(
            "ks4_moves",
            "one row per child with a KS4 result and a placement move before the KS4 year",
            """
SELECT e.person_key, count(*) AS ks4_placement_moves
FROM episodes e JOIN ks4 k USING (person_key)
WHERE e.reason_episode_started IN ('P', 'T') AND e.episode_start < k.ks4_year_start
GROUP BY e.person_key""",
        ),
        Step(
            "prior_emergency_admissions",
            "one row per child with an emergency admission (methods 21, 22, 28) before the "
            "index date: how many",
            """
SELECT e.person_key, count(*) AS prior_emergency_admissions
FROM eligible e JOIN analysis.hospital_admissions h USING (person_key)
WHERE h.admission_method IN ('21', '22', '28') AND h.admission_date < e.index_date
GROUP BY e.person_key""",
        ),
        Step(
            "absence",
            "one row per child with school census years dated (15 January) within follow-up: "
            "the absence rate over them",
            """
SELECT e.person_key,
       sum(s.sessions_authorised_absence + s.sessions_unauthorised_absence) / nullif(sum(s.sessions_possible), 0)
           AS absence_rate_after_index
FROM eligible e JOIN analysis.school_census s USING (person_key)
WHERE make_date(s.academic_year + 1, 1, 15) BETWEEN e.index_date AND e.followup_end
GROUP BY e.person_key""",
        ),
    ]


def children_step(cfg: StudyConfig) -> Step:
    placement_groups = " ".join(
        f"WHEN {_lit(code)} THEN {_lit(v['group'])}"
        for code, v in load_codelist("placement_types").items()
    )
    # a fixed choice of SQL text: the config field is a Literal["indicator", "mode"]
    ks2_fill = {
        "indicator": "0",
        "mode": "(SELECT mode(prior_ks2_expected) FROM ks2)",
    }[cfg.covariates.missing]
    return Step(
        "children",
        "cohort.children: one row per child in the cohort, its group, covariates, "
        "exposure summaries, education outcomes and follow-up",
        f"""
SELECT e.person_key,
       CASE WHEN c.care_entry_date IS NOT NULL THEN 'CLA' ELSE 'NLA' END AS "group",
       CAST(c.care_entry_date IS NOT NULL AS INTEGER) AS looked_after,
       e.index_date, c.care_entry_date,
       e.age_at_index,
       datediff('day', e.week_of_birth, c.care_entry_date) / 365.25 AS age_at_entry,
       e.birth_cohort, e.sex, e.ethnicity,
       coalesce(d.deprivation_decile, e.person_deprivation_decile) AS deprivation_decile,
       CAST((coalesce(d.deprivation_decile, e.person_deprivation_decile) + 1) // 2 AS INTEGER) AS deprivation_quintile,
       i.la_code,
       coalesce(i.physical_abuse, 0) AS physical_abuse,
       coalesce(i.parental_mental_ill_health, 0) AS parental_mental_ill_health,
       coalesce(i.parental_substance_misuse, 0) AS parental_substance_misuse,
       coalesce(i.domestic_abuse, 0) AS domestic_abuse,
       coalesce(i.parental_learning_disability, 0) AS parental_learning_disability,
       coalesce(i.disability, 0) AS disability,
       coalesce(k2.prior_ks2_expected, {ks2_fill}) AS prior_ks2_expected,
       CAST(k2.prior_ks2_expected IS NULL AS INTEGER) AS prior_ks2_missing,
       coalesce(pe.prior_emergency_admissions, 0) AS prior_emergency_admissions,
       coalesce(c.care_days, 0) AS care_days,
       CAST(coalesce(c.first_period_long, FALSE) AS INTEGER) AS care_long,
       CAST(c.care_entry_date IS NOT NULL AND NOT coalesce(c.first_period_long, FALSE) AS INTEGER) AS care_short,
       coalesce(c.placement_moves, 0) AS placement_moves,
       CASE c.first_placement {placement_groups} END AS first_placement_group,
       CASE WHEN k4.ks4_year_start > e.index_date THEN k4.ks4_score END AS ks4_score,
       CASE WHEN k4.ks4_year_start > e.index_date THEN k4.ks4_level2_inclusive END AS ks4_level2_inclusive,
       CASE WHEN k4.ks4_year_start > e.index_date THEN
            CASE WHEN coalesce(kc.ks4_care_days, 0) >= $long_care_days THEN 'long'
                 WHEN coalesce(kc.ks4_care_days, 0) > 0 THEN 'short' ELSE 'none' END END AS ks4_care_group,
       CASE WHEN k4.ks4_year_start > e.index_date THEN coalesce(kc.ks4_care_days, 0) END AS ks4_care_days,
       CASE WHEN k4.ks4_year_start > e.index_date THEN coalesce(km.ks4_placement_moves, 0) END AS ks4_placement_moves,
       CASE WHEN ab.absence_rate_after_index IS NOT NULL THEN
            CAST(ab.absence_rate_after_index >= $persistent_absence_rate AS INTEGER) END AS persistent_absence,
       e.followup_end,
       CASE e.followup_end WHEN e.age_limit_date THEN 'age_limit'
                           WHEN e.left_date THEN 'left_region'
                           WHEN e.death_date THEN 'died' ELSE 'study_end' END AS followup_end_reason,
       e.link_quality_min, e.high_quality_links
FROM eligible e
LEFT JOIN care c USING (person_key)
LEFT JOIN index_rows i USING (person_key)
LEFT JOIN deprivation_at_index d USING (person_key)
LEFT JOIN ks2 k2 USING (person_key)
LEFT JOIN ks4 k4 USING (person_key)
LEFT JOIN ks4_care kc USING (person_key)
LEFT JOIN ks4_moves km USING (person_key)
LEFT JOIN prior_emergency_admissions pe USING (person_key)
LEFT JOIN absence ab USING (person_key)
ORDER BY e.person_key""",
        {
            "long_care_days": cfg.exposure.long_care_days,
            "persistent_absence_rate": cfg.persistent_absence_rate,
        },
    )


def outcome_events_sql(o: Outcome, name_param: str) -> str:
    """First qualifying event on or after the index date, for one outcome.

    Only checked config shapes the SQL: ``sources``, ``diagnosis_position`` and
    ``admission_method_group`` are fixed choices, code-list groups must exist, and the codes
    come from the shipped code lists (as quoted literals); the columns are this function's.
    The outcome's name is the parameter ``name_param``.
    """
    parts = []
    for source in o.sources:
        date_col = "admission_date" if source == "hospital_admissions" else "arrival_date"
        diag_cols = (
            ["primary_diagnosis"]
            + (["secondary_diagnosis"] if o.diagnosis_position == "any" else [])
            if source == "hospital_admissions"
            else ["diagnosis"]
        )
        conds = []
        if o.codelist_group:
            conds.append(
                "(" + " OR ".join(icd_condition(c, o.codelist_group) for c in diag_cols) + ")"
            )
        for g in o.exclude_groups:
            conds.append(
                "NOT coalesce(" + " OR ".join(icd_condition(c, g) for c in diag_cols) + ", FALSE)"
            )
        if source == "hospital_admissions" and o.admission_method_group != "any":
            codes = [
                k
                for k, v in load_codelist("admission_methods").items()
                if v["group"] == o.admission_method_group
            ]
            conds.append(f"admission_method IN ({', '.join(_lit(x) for x in codes)})")
        where = " AND ".join(conds) or "TRUE"
        parts.append(
            f"SELECT person_key, {date_col} AS event_date "
            f"FROM {quote_ident('analysis.' + source)} WHERE {where}"
        )
    return f"""
SELECT c.person_key, ${name_param} AS outcome, min(ev.event_date) AS event_date
FROM children c JOIN ({" UNION ALL ".join(parts)}) ev USING (person_key)
WHERE ev.event_date >= c.index_date AND ev.event_date <= c.followup_end
GROUP BY c.person_key"""


def time_varying_covariate_steps() -> list[Step]:
    """What changes after the index date, for the g-methods' time-varying covariates: factors
    and child-protection plans recorded later, and each school year's absence. Each value is
    used only for intervals that start after it was measured (``person_time``: the day after
    the record's date or the end of the school year; ``school_years``: the year before)."""
    return [
        Step(
            "recorded_after_index",
            "one row per child and date after the index date (to the end of follow-up) on "
            "which an assessment first recorded an adversity factor not recorded at the index "
            "date, or a child-protection plan begun after the index date started: the running "
            "count of such factors and whether such a plan has started, as of that date",
            """
WITH first_recorded AS (
    -- per child: the first assessment after the index date recording each factor that the
    -- index assessment did not record, and the start of the first plan begun after it
    SELECT c.person_key,
           min(c.assessment_date) FILTER (WHERE c.parent_domestic_abuse AND coalesce(i.domestic_abuse, 0) = 0) AS domestic_abuse,
           min(c.assessment_date) FILTER (WHERE c.parent_mental_ill_health AND coalesce(i.parental_mental_ill_health, 0) = 0) AS parental_mental_ill_health,
           min(c.assessment_date) FILTER (WHERE c.parent_substance_misuse AND coalesce(i.parental_substance_misuse, 0) = 0) AS parental_substance_misuse,
           min(c.assessment_date) FILTER (WHERE c.parent_learning_disability AND coalesce(i.parental_learning_disability, 0) = 0) AS parental_learning_disability,
           min(c.assessment_date) FILTER (WHERE c.child_protection_category = 'PHY' AND coalesce(i.physical_abuse, 0) = 0) AS physical_abuse,
           min(c.child_protection_plan_start) FILTER (WHERE c.child_protection_plan_start > e.index_date) AS protection_plan
    FROM analysis.care_support_census c
    JOIN eligible e USING (person_key)
    LEFT JOIN index_rows i USING (person_key)
    WHERE c.assessment_date > e.index_date AND c.assessment_date <= e.followup_end
    GROUP BY c.person_key
), changes AS (
    -- one row per newly recorded factor or new plan (UNPIVOT drops the nulls)
    UNPIVOT first_recorded
    ON domestic_abuse, parental_mental_ill_health, parental_substance_misuse,
       parental_learning_disability, physical_abuse, protection_plan
    INTO NAME covariate VALUE record_date
)
SELECT person_key, record_date,
       CAST(sum(count(*) FILTER (WHERE covariate <> 'protection_plan')) OVER running AS INTEGER) AS new_factors_recorded,
       max(max(CAST(covariate = 'protection_plan' AS INTEGER))) OVER running AS new_protection_plan
FROM changes
GROUP BY person_key, record_date
WINDOW running AS (PARTITION BY person_key ORDER BY record_date ROWS UNBOUNDED PRECEDING)""",
        ),
        Step(
            "school_year_absence",
            "one row per child in the cohort and academic year with sessions recorded: the "
            "absence rate over that year's school census rows",
            """
SELECT s.person_key, s.academic_year,
       sum(s.sessions_authorised_absence + s.sessions_unauthorised_absence) / nullif(sum(s.sessions_possible), 0)
           AS absence_rate
FROM analysis.school_census s JOIN eligible e USING (person_key)
WHERE s.sessions_possible IS NOT NULL
GROUP BY s.person_key, s.academic_year""",
        ),
    ]


def person_time_steps(cfg: StudyConfig) -> list[Step]:
    """Counting-process rows split at care entry and exit, for every outcome."""
    outcome_names = {f"outcome_{i}": o.name for i, o in enumerate(cfg.outcomes, start=1)}
    events = " UNION ALL ".join(
        outcome_events_sql(o, p) for p, o in zip(outcome_names, cfg.outcomes, strict=True)
    ) or (
        "SELECT NULL::VARCHAR AS person_key, NULL::VARCHAR AS outcome, NULL::DATE AS event_date WHERE FALSE"
    )
    outcomes = ", ".join(f"(${p})" for p in outcome_names) or "(NULL)"
    bounds = Step(
        "bounds",
        "the days (from the index date) where a child's follow-up is split: day 0, the day "
        "after follow-up ends, each start and end of a period of care, the day after each "
        "date in recorded_after_index, and each 1 September that changes last year's absence",
        """
SELECT DISTINCT person_key, d FROM (
    SELECT person_key, 0 AS d FROM children
    UNION ALL SELECT person_key, datediff('day', index_date, followup_end) + 1 FROM children
    UNION ALL SELECT p.person_key, datediff('day', c.index_date, p.period_start)
              FROM periods p JOIN children c USING (person_key)
    UNION ALL SELECT p.person_key, datediff('day', c.index_date, p.period_end)
              FROM periods p JOIN children c USING (person_key)
    UNION ALL SELECT r.person_key, datediff('day', c.index_date, r.record_date) + 1
              FROM recorded_after_index r JOIN children c USING (person_key)
    -- a school year's absence is last year's from the 1 September after it to the next one
    UNION ALL SELECT a.person_key, datediff('day', c.index_date, make_date(a.academic_year + k.k, 9, 1))
              FROM school_year_absence a JOIN children c USING (person_key)
              CROSS JOIN (VALUES (1), (2)) k(k)
)""",
    )
    segments = Step(
        "segments",
        "one row per interval between consecutive bounds within follow-up: whether a period "
        "of care covers its start, and the time-varying covariates measured before it starts",
        """
SELECT s.person_key, s.start_day, s.stop_day,
       CAST(EXISTS (SELECT 1 FROM periods p JOIN children c USING (person_key)
                    WHERE p.person_key = s.person_key
                      AND datediff('day', c.index_date, p.period_start) <= s.start_day
                      AND datediff('day', c.index_date, p.period_end) > s.start_day) AS INTEGER) AS looked_after,
       coalesce(r.new_factors_recorded, 0) AS new_factors_recorded,
       coalesce(r.new_protection_plan, 0) AS new_protection_plan,
       a.absence_rate AS last_year_absence_rate
FROM (
    SELECT b.person_key, b.d AS start_day, lead(b.d) OVER (PARTITION BY b.person_key ORDER BY b.d) AS stop_day,
           c.index_date + CAST(b.d AS INTEGER) AS start_date
    FROM bounds b JOIN children c USING (person_key)
    WHERE b.d >= 0 AND b.d <= datediff('day', c.index_date, c.followup_end) + 1
) s
-- the latest record dated before the interval's first day
ASOF LEFT JOIN recorded_after_index r ON r.person_key = s.person_key AND s.start_date > r.record_date
-- the academic year before the one the interval starts in
LEFT JOIN school_year_absence a ON a.person_key = s.person_key
     AND a.academic_year = CASE WHEN month(s.start_date) >= 9 THEN year(s.start_date)
                                ELSE year(s.start_date) - 1 END - 1
WHERE s.stop_day IS NOT NULL AND s.stop_day > s.start_day""",
    )
    first_events = Step(
        "first_events",
        "one row per child and outcome with a qualifying event in follow-up: the first one",
        events,
        outcome_names,
    )
    person_time = Step(
        "person_time",
        "cohort.person_time: counting-process rows per child and outcome, cut at the event",
        f"""
SELECT s.person_key, o.outcome, s.start_day,
       CASE WHEN e.event_date IS NOT NULL
                 AND datediff('day', c.index_date, e.event_date) < s.stop_day
            THEN datediff('day', c.index_date, e.event_date) + 1 ELSE s.stop_day END AS stop_day,
       s.looked_after,
       CAST(e.event_date IS NOT NULL AND datediff('day', c.index_date, e.event_date) >= s.start_day
            AND datediff('day', c.index_date, e.event_date) < s.stop_day AS INTEGER) AS event,
       s.new_factors_recorded, s.new_protection_plan, s.last_year_absence_rate
FROM segments s
JOIN children c USING (person_key)
CROSS JOIN (VALUES {outcomes}) o(outcome)
LEFT JOIN first_events e ON e.person_key = s.person_key AND e.outcome = o.outcome
WHERE e.event_date IS NULL OR datediff('day', c.index_date, e.event_date) >= s.start_day
ORDER BY s.person_key, o.outcome, s.start_day""",
        outcome_names,
    )
    return [bounds, segments, first_events, person_time]


def school_years_step() -> Step:
    """A child's school census years, with the yearly exposure (the share of the academic year
    looked after, and looked after on at least one day of it: the definition the synthetic
    truth's yearly absence effect uses) and the covariates measured before the year starts."""
    return Step(
        "school_years",
        "cohort.school_years: one row per child per school census year with sessions "
        "recorded: absence, exposure during the year, covariates from before it",
        """
WITH care_share AS (
    -- days looked after in the academic year [1 September, next 1 September): a period of
    -- care covers its start day, not its end day (as in person_time)
    SELECT y.person_key, y.academic_year,
           sum(greatest(0, datediff('day', greatest(p.period_start, make_date(y.academic_year, 9, 1)),
                                           least(p.period_end, make_date(y.academic_year + 1, 9, 1)))))
           / datediff('day', make_date(y.academic_year, 9, 1), make_date(y.academic_year + 1, 9, 1))
               AS looked_after_share
    FROM (SELECT DISTINCT person_key, academic_year FROM analysis.school_census) y
    JOIN periods p USING (person_key)
    GROUP BY y.person_key, y.academic_year
), years AS (
    SELECT s.*, c."group", c.index_date, c.care_entry_date, c.week_of_birth,
           make_date(s.academic_year, 9, 1) AS year_start,
           coalesce(cs.looked_after_share, 0) AS looked_after_share
    FROM analysis.school_census s
    JOIN (SELECT children.*, e.week_of_birth FROM children JOIN eligible e USING (person_key)) c USING (person_key)
    LEFT JOIN care_share cs USING (person_key, academic_year)
    WHERE s.sessions_possible IS NOT NULL
)
SELECT y.person_key, y.academic_year,
       y.academic_year - year(y.week_of_birth) AS age,
       y.sessions_possible,
       y.sessions_authorised_absence + y.sessions_unauthorised_absence AS sessions_absent,
       (y.sessions_authorised_absence + y.sessions_unauthorised_absence) / nullif(y.sessions_possible, 0) AS absence_rate,
       CAST((y.sessions_authorised_absence + y.sessions_unauthorised_absence)
            / nullif(y.sessions_possible, 0) >= 0.10 AS INTEGER) AS persistent_absence,
       y.fixed_exclusions + CAST(coalesce(y.permanent_exclusion, FALSE) AS INTEGER) AS exclusions,
       y.looked_after_share,
       CAST(y.looked_after_share > 0 AS INTEGER) AS looked_after_this_year,
       CASE WHEN y.care_entry_date < make_date(y.academic_year + 1, 9, 1)
            THEN CAST(greatest(0, floor(datediff('day', y.care_entry_date, y.year_start) / 365.25)) AS INTEGER) END
           AS years_since_entry,
       y.academic_year - CASE WHEN month(y.index_date) >= 9 THEN year(y.index_date) ELSE year(y.index_date) - 1 END
           AS years_from_index,
       y."group",
       coalesce(r.new_factors_recorded, 0) AS new_factors_recorded,
       coalesce(r.new_protection_plan, 0) AS new_protection_plan,
       a.absence_rate AS last_year_absence_rate
FROM years y
-- the latest record dated before the academic year starts
ASOF LEFT JOIN recorded_after_index r ON r.person_key = y.person_key AND y.year_start > r.record_date
LEFT JOIN school_year_absence a ON a.person_key = y.person_key AND a.academic_year = y.academic_year - 1
ORDER BY y.person_key, y.academic_year, y.record_id""",
    )


def cohort_steps(config: StudyConfig | None = None) -> CohortSteps:
    """Every step of the cohort build, in the order they run."""
    cfg = config or load_study_config()
    return CohortSteps(
        (
            *index_steps(cfg),
            *care_steps(cfg),
            *covariate_steps(),
            children_step(cfg),
            *time_varying_covariate_steps(),
            *person_time_steps(cfg),
            school_years_step(),
        )
    )


def build_cohort(
    *, layout: RunLayout, config: StudyConfig | None = None, memory_limit: str = "6GB"
) -> CohortSummary:
    """Derive ``cohort.children``, ``cohort.person_time``, ``cohort.school_years`` and
    ``cohort.attrition`` in the analysis zone, each swapped in atomically."""
    cfg = config or load_study_config()
    if not layout.analysis_db.exists():
        raise RunStateError(f"{layout.analysis_db} not found: run `cohort link` first")
    layout.ensure()
    (layout.cohort_dir / "study_config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
    con = connect(
        layout.analysis_db,
        settings=DuckDBSettings(
            memory_limit=memory_limit, temp_directory=str(layout.tmp_dir / "duckdb")
        ),
    )
    try:
        cohort_steps(cfg).run(con)
        summary = _publish(con)
    finally:
        con.close()
    return summary


def _publish(con: duckdb.DuckDBPyConnection) -> CohortSummary:
    """Swap the steps' four cohort tables into schema ``cohort`` and summarise them."""
    for t in COHORT_TABLES:
        replace_table_atomically(con, f"cohort.{t}", f"SELECT * FROM temp.main.{t}")
    attrition = [
        (int(s), str(d), int(n), int(x))
        for s, d, n, x in con.execute("SELECT * FROM cohort.attrition ORDER BY step").fetchall()
    ]
    ((n_cla, n_nla),) = con.execute(
        "SELECT count(*) FILTER (WHERE \"group\" = 'CLA'), count(*) FILTER (WHERE \"group\" = 'NLA') FROM cohort.children"
    ).fetchall()
    counts = {
        f"cohort.{t}": int(con.execute(f"SELECT count(*) FROM cohort.{t}").fetchall()[0][0])
        for t in ("children", "person_time", "school_years")
    }
    return CohortSummary(int(n_cla) + int(n_nla), int(n_cla), int(n_nla), attrition, counts)


def build_cohort_from_path(
    run_dir: str | Path, config_path: str | Path | None = None
) -> CohortSummary:
    return build_cohort(layout=RunLayout.at(run_dir), config=load_study_config(config_path))
