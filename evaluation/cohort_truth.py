"""Agreement of the derived cohort with the synthetic truth (evaluation only, never the pipeline)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from ground.run_layout import RunLayout


def cohort_truth_agreement(*, layout: RunLayout, truth_dir: str | Path) -> dict[str, float]:
    """Share of correctly linked children whose derived exposure and covariates match truth.

    A child is correctly linked when every record of its person key belongs to one true person
    and that person has no records under another key.
    """
    truth = Path(truth_dir)
    con = duckdb.connect()
    con.execute("ATTACH ? AS lz (READ_ONLY)", [str(layout.linkage_db)])
    con.execute("ATTACH ? AS az (READ_ONLY)", [str(layout.analysis_db)])
    con.execute(
        """CREATE TABLE m AS
        SELECT rp.person_key, t.person_id FROM lz.linkage.record_person rp
        JOIN read_parquet(?) t USING (source, record_id)""",
        [str(truth / "record_person.parquet")],
    )
    con.execute(
        """CREATE TABLE good AS
        SELECT person_key, any_value(person_id) AS person_id FROM m GROUP BY person_key
        HAVING count(DISTINCT person_id) = 1
           AND any_value(person_id) NOT IN (
               SELECT person_id FROM m GROUP BY person_id HAVING count(DISTINCT person_key) > 1)"""
    )
    row = con.execute(
        """SELECT count(*),
            avg(CASE WHEN (c.care_entry_date IS NULL AND p.first_care_entry IS NULL)
                       OR c.care_entry_date = CAST(p.first_care_entry AS DATE) THEN 1.0 ELSE 0.0 END),
            avg(CASE WHEN c.physical_abuse = p.recorded_physical_abuse
                      AND c.parental_mental_ill_health = p.recorded_parental_mental_ill_health
                      AND c.parental_substance_misuse = p.recorded_parental_substance_misuse
                      AND c.domestic_abuse = p.recorded_domestic_abuse
                      AND c.parental_learning_disability = p.recorded_parental_learning_disability
                     THEN 1.0 ELSE 0.0 END),
            avg(CASE WHEN c.index_date = CAST(p.first_cin_date AS DATE) THEN 1.0 ELSE 0.0 END),
            avg(CASE WHEN c.ks4_care_days IS NULL OR c.ks4_care_days = p.care_days_before_ks4 THEN 1.0 ELSE 0.0 END)
        FROM az.cohort.children c JOIN good g USING (person_key)
        JOIN read_parquet(?) p ON p.person_id = g.person_id""",
        [str(truth / "persons.parquet")],
    ).fetchone()
    con.close()
    assert row is not None
    return {
        "children_checked": float(row[0]),
        "care_entry": float(row[1]),
        "recorded_adversity": float(row[2]),
        "index_date": float(row[3]),
        "ks4_care_days": float(row[4]),
    }


def ks4_enter_now_vs_not_now(data_dir: str | Path) -> list[dict[str, object]]:
    """The truth of the KS4 "enter care now versus not now" trials (analysis
    ``ks4_enter_now_vs_not_now``, contrast ``enter_now_vs_not_now``) of a generated world:
    rows with ``outcome``, ``contrast``, ``scale``, ``value`` (the ATT over the entrants pooled
    over trials by entrants, as the estimator pools them), ``monte_carlo_se`` (of the truth's
    counterfactual replicates) and ``trials`` (per trial: entrants and value).

    Read from ``truth/ks4_entry_trials.json``; a world generated before that file existed is
    rebuilt in memory to compute it (synthetic_data/entry_trials.py), and the file written."""
    from synthetic_data.entry_trials import entry_trial_truth_of_delivery

    return entry_trial_truth_of_delivery(data_dir)
