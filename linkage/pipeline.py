"""The linkage stage of a run: staging -> person clusters -> pseudonymous analysis zone."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import yaml

from ground.db import (
    DuckDBSettings,
    clear_linkage_scratch,
    connect,
    linkage_scratch,
    quote_ident,
    sql_string,
)
from ground.errors import RunStateError
from ground.run_layout import RunLayout
from linkage.bias_diagnostics import linkage_bias_diagnostics
from linkage.explain import Explain
from linkage.link import DuckDBTable, LinkResult, link_tables
from linkage.pseudonym import pseudonymise
from linkage.settings import LinkageSettings
from schemas.contracts import PRELINKED_PERSON_ID, SOURCES

log = logging.getLogger(__name__)


@dataclass
class LinkageSummary:
    """Counts of the linkage stage (aggregates only)."""

    records: int
    profiles: int
    persons: int
    by_method: dict[str, int]
    link_rate_to_spine: dict[str, float]
    row_counts: dict[str, int] = field(default_factory=dict)

    def to_markdown(self) -> str:
        lines = [
            f"Linked {self.records:,} records ({self.profiles:,} identity profiles) into "
            f"{self.persons:,} persons.",
            "",
            "| link method | records |",
            "|---|---:|",
            *[f"| {k} | {v:,} |" for k, v in sorted(self.by_method.items())],
            "",
            "| source | linked to the population register |",
            "|---|---:|",
            *[f"| {k} | {v:.1%} |" for k, v in self.link_rate_to_spine.items()],
        ]
        return "\n".join(lines)


def source_roles() -> dict[str, dict[str, str]]:
    """Which column of each staged source plays which linkage role (from the contracts)."""
    out: dict[str, dict[str, str]] = {}
    for name, contract in SOURCES.items():
        roles = {"record_id": "record_id"}
        for c in contract.columns:
            if c.linkage_role:
                roles[c.linkage_role] = c.name
        out[name] = roles
    return out


def staged_identifiers(
    con: duckdb.DuckDBPyConnection, roles: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """The identifier columns of every staged source, as Arrow tables for ``link_tables``."""
    tables: dict[str, Any] = {}
    for name, r in (roles or source_roles()).items():
        cols = ", ".join(quote_ident(c) for c in dict.fromkeys(r.values()))
        tables[name] = con.sql(
            f"SELECT {cols} FROM {quote_ident('staging.' + name)}"
        ).to_arrow_table()
    return tables


def staged_identifier_tables(layout: RunLayout, roles: dict[str, Any]) -> dict[str, Any]:
    """Every staged source as a table of the linkage zone that ``link_tables`` reads in place
    (no copy of the identifiers is written outside the zone, nothing is held in Python)."""
    return {name: DuckDBTable(layout.linkage_db, f"staging.{name}") for name in roles}


def link_run(
    *,
    layout: RunLayout,
    settings: LinkageSettings | None = None,
    secret: bytes,
    progress: Callable[[str], None] | None = None,
) -> LinkageSummary:
    """Link the staged sources of a run and write the analysis zone."""
    settings = settings or LinkageSettings()
    step = progress or (lambda msg: log.info("%s", msg))
    # first, whatever a killed or failed earlier stage left with identifiers in it: the
    # linkage zone's scratch folder, and the scratch files of earlier code (Parquet copies)
    clear_linkage_scratch(layout.root)
    for old in ("identifiers", "duckdb_link"):
        shutil.rmtree(layout.tmp_dir / old, ignore_errors=True)
    if not layout.linkage_db.exists():
        raise RunStateError(f"{layout.linkage_db} not found: run `cohort validate` first")
    layout.ensure()
    (layout.linkage_dir / "linkage_settings.yaml").write_text(
        yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
    )
    # every spill file of this stage holds identifiers: it goes to the linkage zone's scratch
    # folder (owner only), removed when the stage ends, also on failure
    with linkage_scratch(layout.root) as scratch:
        return _link_run(layout, settings, secret, step, scratch)


def _link_run(
    layout: RunLayout,
    settings: LinkageSettings,
    secret: bytes,
    step: Callable[[str], None],
    scratch: Path,
) -> LinkageSummary:
    db = DuckDBSettings(memory_limit=settings.duckdb_memory_limit)  # spills to `scratch`
    if _prelinked(layout):  # the provider linked the extracts: no identity linkage here
        return _provider_link_run(layout, settings, secret, step, db)
    roles = source_roles()
    step("linking: deterministic ids, then Splink on identity profiles")
    result = link_tables(
        staged_identifier_tables(layout, roles),
        roles,
        settings=settings,
        temp_directory=scratch / "link",
        # the model's charts (parameters only) with the run's figures; the clerical-review
        # sample (identifiers) stays in the linkage zone, as linkage.clerical_review
        explain=Explain(
            charts_dir=layout.figures_dir,  # beside the run's other figures
            chart_prefix="linkage_",
            chart_format="png",  # a run's folders hold no URL (tests/leak_scan.py)
            keep_review=True,
        ),
    )
    con = connect(layout.linkage_db, settings=db)
    try:
        (layout.linkage_dir / "model.json").write_text(
            json.dumps(result.model_json, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        step("assigning pseudonymous keys")
        # a stable internal person id: the smallest record key in the cluster (in DuckDB, which
        # spills to disk, rather than as Python copies of 19 million rows at national scale)
        con.register("clusters_frame", result.clusters)
        con.execute(
            """CREATE OR REPLACE TEMP TABLE cluster_person AS
            SELECT cluster_id, min("table" || '|' || record_id) AS person_id
            FROM clusters_frame GROUP BY cluster_id"""
        )
        ids = con.sql("SELECT person_id FROM cluster_person ORDER BY person_id").pl()["person_id"]
        keys = pl.DataFrame({"person_id": ids, "person_key": pseudonymise(ids.to_list(), secret)})
        del ids
        con.register("keys_frame", keys)
        con.execute("CREATE SCHEMA IF NOT EXISTS linkage")
        con.execute(
            """CREATE OR REPLACE TABLE linkage.record_person AS
            SELECT c."table" AS source, c.record_id, p.person_id, k.person_key, c.component_id,
                   c.link_method, c.match_probability
            FROM clusters_frame c
            JOIN cluster_person p USING (cluster_id)
            JOIN keys_frame k USING (person_id)
            ORDER BY source, record_id"""
        )
        con.unregister("keys_frame")
        con.execute("DROP TABLE cluster_person")
        con.register("pairs_frame", result.pairs)
        con.execute("CREATE OR REPLACE TABLE linkage.scored_pairs AS SELECT * FROM pairs_frame")
        con.unregister("clusters_frame")
        con.unregister("pairs_frame")
        # pairs below the linker's floor, and pairs only the candidate rules make: for link
        # draws (linkage.imputation); record-group ids and scores only, kept in this zone
        con.execute("DROP TABLE IF EXISTS linkage.candidate_pairs")
        if result.candidate_pairs is not None:
            con.register("candidate_frame", result.candidate_pairs)
            con.execute("CREATE TABLE linkage.candidate_pairs AS SELECT * FROM candidate_frame")
            con.unregister("candidate_frame")
        if result.review is not None:  # pairs near the threshold, for people to label
            con.register("review_frame", result.review)
            con.execute(
                "CREATE OR REPLACE TABLE linkage.clerical_review AS SELECT * FROM review_frame"
            )
            con.unregister("review_frame")
        result.clusters = result.clusters.clear()  # written; free the memory
        step("writing the analysis zone")
        write_analysis_zone(con, layout, settings)
        step("writing the linkage report")
        summary = _summary(con, result.profile_count)
        write_linkage_report(con, layout, result, settings)
        # linked vs unlinked records by group (Harron et al. 2017), release-safe
        linkage_bias_diagnostics(con).to_csv(layout.linkage_dir / "linkage_bias.csv", index=False)
    finally:
        con.close()
    return summary


def _prelinked(layout: RunLayout) -> bool:
    """Whether validation staged a pre-linked delivery (its extracts carry the provider's
    person id; docs/deliveries.md, pre-linked mode)."""
    con = duckdb.connect(str(layout.linkage_db), read_only=True)
    try:
        return bool(
            con.execute(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'staging' "
                "AND column_name = ?",
                [PRELINKED_PERSON_ID],
            ).fetchone()[0]  # type: ignore[index]
        )
    finally:
        con.close()


def _provider_link_run(
    layout: RunLayout,
    settings: LinkageSettings,
    secret: bytes,
    step: Callable[[str], None],
    db: DuckDBSettings,
) -> LinkageSummary:
    """Pre-linked mode: a record's person is the provider's person id (re-keyed with the run's
    secret), its link method ``provider``, its match probability the provider's match
    percentage / 100, which feeds the high-quality-link flag like a Splink probability."""
    step("pre-linked delivery: persons from the provider's person ids (no Splink)")
    con = connect(layout.linkage_db, settings=db)
    try:
        records = " UNION ALL ".join(
            f"SELECT {sql_string(n)} AS source, record_id, {PRELINKED_PERSON_ID} AS person_id, "
            f"link_status, match_percentage FROM {quote_ident('staging.' + n)}"
            for n in SOURCES
        )
        con.execute(f"CREATE OR REPLACE TEMP TABLE provider_records AS {records}")
        ids = con.sql("SELECT DISTINCT person_id FROM provider_records ORDER BY 1").pl()[
            "person_id"
        ]
        keys = pl.DataFrame({"person_id": ids, "person_key": pseudonymise(ids.to_list(), secret)})
        con.register("keys_frame", keys)
        con.execute("CREATE SCHEMA IF NOT EXISTS linkage")
        con.execute(
            """CREATE OR REPLACE TABLE linkage.record_person AS
            SELECT r.source, r.record_id, r.person_id, k.person_key,
                   CAST(NULL AS BIGINT) AS component_id, 'provider' AS link_method,
                   r.match_percentage / 100.0 AS match_probability, r.link_status
            FROM provider_records r JOIN keys_frame k USING (person_id)
            ORDER BY source, record_id"""
        )
        con.unregister("keys_frame")
        # an earlier run's Splink tables
        for stale in ("scored_pairs", "candidate_pairs", "clerical_review"):
            con.execute(f"DROP TABLE IF EXISTS {quote_ident('linkage.' + stale)}")
        (layout.linkage_dir / "model.json").write_text(
            json.dumps({"link_method": "provider"}, indent=2) + "\n", encoding="utf-8"
        )
        step("writing the analysis zone")
        write_analysis_zone(con, layout, settings, birth_column="week_of_birth")
        step("writing the linkage report")
        summary = _summary(con, 0)
        _write_provider_report(con, layout, settings)
    finally:
        con.close()
    return summary


def _write_provider_report(
    con: duckdb.DuckDBPyConnection, layout: RunLayout, settings: LinkageSettings
) -> None:
    """The linkage report of a pre-linked delivery: the provider's match quality by source and
    status, the share of persons with high-quality links; aggregates only."""
    threshold = float(settings.high_quality_threshold)
    by_source = con.execute(
        """SELECT source, link_status, count(*), min(match_probability), avg(match_probability)
        FROM linkage.record_person GROUP BY ALL ORDER BY ALL"""
    ).fetchall()
    high = con.execute(
        "SELECT avg(high_quality_links) FROM (SELECT CAST(min(match_probability) >= ? AS INTEGER)"
        " AS high_quality_links FROM linkage.record_person GROUP BY person_key)",
        [threshold],
    ).fetchone()[0]  # type: ignore[index]
    quality = [
        {
            "source": s,
            "link_status": st,
            "records": int(n),
            "min_match_probability": round(float(lo), 4),
            "mean_match_probability": round(float(mean), 4),
        }
        for s, st, n, lo, mean in by_source
    ]
    share_high = round(float(high or 0.0), 4)
    report = {
        "link_method": "provider",
        "thresholds": {  # no match threshold: the provider matched (the run report says so)
            "match_threshold": "none (pre-linked by the provider)",
            "high_quality_threshold": threshold,
        },
        "link_rate_to_spine_by_source": _spine_rates(con),
        "provider_match_quality": quality,
        "persons_with_high_quality_links": share_high,
    }
    (layout.linkage_dir / "linkage_report.json").write_text(
        json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    md = [
        "# Linkage report",
        "",
        "Pre-linked delivery: persons are the provider's person ids (no identity linkage here); "
        f"match probability = the provider's match percentage / 100; high-quality threshold "
        f"{threshold} ({share_high:.1%} of persons have only "
        "high-quality links).",
        "",
        "| source | link status | records | min match probability |",
        "|---|---|---:|---:|",
        *[
            f"| {r['source']} | {r['link_status']} | {r['records']:,} | "
            f"{r['min_match_probability']:.2f} |"
            for r in quality
        ],
    ]
    (layout.linkage_dir / "linkage_report.md").write_text("\n".join(md) + "\n", encoding="utf-8")


def write_analysis_zone(
    con: duckdb.DuckDBPyConnection,
    layout: RunLayout,
    settings: LinkageSettings,
    *,
    birth_column: str = "date_of_birth",
) -> None:
    """Content columns + pseudonymous key only; built under a temporary file, then swapped in.

    ``birth_column``: the staged column the week of birth comes from (``week_of_birth`` in a
    pre-linked delivery, which carries no date of birth)."""
    tmp = layout.analysis_db.with_suffix(".building.duckdb")
    if tmp.exists():
        tmp.unlink()
    con.execute("ATTACH ? AS az", [str(tmp)])
    try:
        con.execute("CREATE SCHEMA az.analysis")
        for name, contract in SOURCES.items():
            content = ", ".join(f"s.{quote_ident(c)}" for c in contract.content_columns)
            con.execute(
                f"""CREATE TABLE az.analysis.{quote_ident(name)} AS
                SELECT rp.person_key, s.record_id, rp.link_method, rp.match_probability,
                       {content}
                FROM {quote_ident("staging." + name)} s
                JOIN linkage.record_person rp ON rp.source = {sql_string(name)}
                    AND rp.record_id = s.record_id
                ORDER BY rp.person_key, s.record_id"""
            )
        con.execute(
            f"""CREATE TABLE az.analysis.persons AS
            WITH dob AS (
                SELECT rp.person_key, s.date_of_birth, s.sex, count(*) AS n
                FROM linkage.record_person rp
                JOIN (
                    {
                " UNION ALL ".join(
                    f"SELECT {sql_string(n)} AS source, record_id, "
                    f"{quote_ident(birth_column)} AS date_of_birth, sex "
                    f"FROM {quote_ident('staging.' + n)}"
                    for n, c in SOURCES.items()
                    if "date_of_birth" in c.column_names
                )
            }
                ) s USING (source, record_id)
                GROUP BY ALL
            ), best AS (
                SELECT person_key,
                       first(date_of_birth ORDER BY n DESC, date_of_birth) AS date_of_birth,
                       first(sex ORDER BY n DESC, sex) AS sex FROM dob GROUP BY person_key
            ), reg AS (
                SELECT rp.person_key,
                       first(s.area_code ORDER BY s.period_start, s.area_code) AS area_code,
                       first(s.deprivation_decile ORDER BY s.period_start, s.area_code) AS deprivation_decile,
                       first(s.ethnicity ORDER BY s.period_start, s.ethnicity) AS ethnicity
                FROM staging.population_register s
                JOIN linkage.record_person rp ON rp.source = 'population_register' AND rp.record_id = s.record_id
                GROUP BY rp.person_key
            ), quality AS (
                SELECT person_key, min(coalesce(match_probability, 1.0)) AS link_quality_min,
                       count(*) AS n_records,
                       bool_and(link_method <> 'unlinked') AS linked
                FROM linkage.record_person GROUP BY person_key
            )
            SELECT q.person_key,
                   CAST(date_trunc('week', b.date_of_birth) AS DATE) AS week_of_birth,
                   b.sex, r.ethnicity, r.area_code, r.deprivation_decile,
                   q.link_quality_min,
                   CAST(q.link_quality_min >= {float(settings.high_quality_threshold)} AS INTEGER)
                       AS high_quality_links,
                   q.n_records
            FROM quality q LEFT JOIN best b USING (person_key) LEFT JOIN reg r USING (person_key)
            ORDER BY q.person_key"""
        )
    finally:
        con.execute("DETACH az")
    tmp.replace(layout.analysis_db)


def _summary(con: duckdb.DuckDBPyConnection, profiles: int) -> LinkageSummary:
    by_method = dict(
        con.execute("SELECT link_method, count(*) FROM linkage.record_person GROUP BY 1").fetchall()
    )
    persons = con.execute(
        "SELECT count(DISTINCT person_key) FROM linkage.record_person"
    ).fetchone()[0]  # type: ignore[index]
    records = sum(by_method.values())
    rates = _spine_rates(con)
    return LinkageSummary(
        records=records,
        profiles=profiles,
        persons=int(persons),
        by_method=by_method,
        link_rate_to_spine=rates,
        row_counts={"linkage.records": records, "linkage.persons": int(persons)},
    )


def _spine_rates(con: duckdb.DuckDBPyConnection) -> dict[str, float]:
    rows = con.execute(
        """WITH spine AS (SELECT DISTINCT person_key FROM linkage.record_person WHERE source = 'population_register')
        SELECT source, avg(CASE WHEN person_key IN (SELECT person_key FROM spine) THEN 1.0 ELSE 0.0 END)
        FROM linkage.record_person WHERE source <> 'population_register' GROUP BY source ORDER BY source"""
    ).fetchall()
    return {s: round(float(r), 4) for s, r in rows}


def write_linkage_report(
    con: duckdb.DuckDBPyConnection,
    layout: RunLayout,
    result: LinkResult,
    settings: LinkageSettings,
) -> None:
    """Link rates by source and subgroup, weights, m/u, cluster sizes, the threshold used and
    how it was chosen, blocking and training rules, chart paths; aggregates only."""
    model_json = result.model_json
    chosen_by = (
        "setting"
        if settings.match_threshold is not None
        else f"expected precision >= {settings.target_precision}"
    )
    subgroup_sql = """
    WITH spine AS (SELECT DISTINCT person_key FROM linkage.record_person WHERE source = 'population_register'),
    cla AS (SELECT DISTINCT person_key FROM linkage.record_person WHERE source = 'looked_after_episodes'),
    feat AS (
        SELECT rp.source, rp.record_id, rp.person_key, rp.link_method,
               s.sex, s.deprivation_decile, s.ethnicity, s.date_of_birth
        FROM linkage.record_person rp JOIN (
            SELECT 'school_census' AS source, record_id, sex, deprivation_decile, ethnicity, date_of_birth
            FROM staging.school_census
        ) s USING (source, record_id)
    )
    SELECT {group} AS grp, count(*) AS records,
           avg(CASE WHEN person_key IN (SELECT person_key FROM spine) THEN 1.0 ELSE 0.0 END) AS rate
    FROM feat GROUP BY 1 ORDER BY 1"""
    groups = {
        "sex": "sex",
        "deprivation_quintile": "CAST((deprivation_decile + 1) // 2 AS VARCHAR)",
        "ethnicity": "ethnicity",
        "cla_nla": "CASE WHEN person_key IN (SELECT person_key FROM cla) THEN 'CLA' ELSE 'not CLA' END",
        "birth_year": "CAST(year(date_of_birth) AS VARCHAR)",
    }
    by_group = {
        g: [
            {"group": r[0], "records": int(r[1]), "link_rate": round(float(r[2]), 4)}
            for r in con.execute(subgroup_sql.format(group=sql)).fetchall()
        ]
        for g, sql in groups.items()
    }
    weights = con.execute(
        "SELECT floor(match_weight) AS w, count(*) FROM linkage.scored_pairs GROUP BY 1 ORDER BY 1"
    ).fetchall()
    sizes = con.execute(
        "SELECT n, count(*) FROM (SELECT person_key, count(*) AS n FROM linkage.record_person GROUP BY 1) "
        "GROUP BY n ORDER BY n LIMIT 60"
    ).fetchall()
    unlinked = con.execute(
        "SELECT source, count(*) FROM linkage.record_person WHERE link_method = 'unlinked' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    mu = []
    for comp in model_json.get("comparisons", []):
        for lvl in comp.get("comparison_levels", []):
            if lvl.get("is_null_level"):
                continue
            mu.append(
                {
                    "comparison": comp.get("output_column_name"),
                    "level": lvl.get("label_for_charts"),
                    "m": lvl.get("m_probability"),
                    "u": lvl.get("u_probability"),
                }
            )
    report = {
        "thresholds": {
            "match_threshold": result.match_threshold,
            "match_threshold_chosen_by": chosen_by,
            "high_quality_threshold": settings.high_quality_threshold,
        },
        "blocking_rules": result.blocking_rules,
        "em_sessions": result.em_sessions,
        # offline HTML, relative to the run folder (the model's parameters, no identifiers)
        "charts": {k: str(p.relative_to(layout.root)) for k, p in sorted(result.charts.items())},
        "link_rate_to_spine_by_source": _spine_rates(con),
        "link_rate_to_spine_by_subgroup_school_census": by_group,
        "match_weight_histogram": [{"weight_floor": float(w), "pairs": int(n)} for w, n in weights],
        "cluster_sizes": [{"records": int(n), "persons": int(c)} for n, c in sizes],
        "unlinked_records_by_source": {s: int(n) for s, n in unlinked},
        "m_u_parameters": mu,
        "probability_two_random_records_match": model_json.get(
            "probability_two_random_records_match"
        ),
    }
    (layout.linkage_dir / "linkage_report.json").write_text(
        json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    md = [
        "# Linkage report",
        "",
        f"Match threshold {result.match_threshold} "
        f"({chosen_by}); "
        f"high-quality threshold {settings.high_quality_threshold}.",
        "",
        "| source | linked to register |",
        "|---|---:|",
    ]
    md += [f"| {s} | {r:.1%} |" for s, r in report["link_rate_to_spine_by_source"].items()]  # type: ignore[union-attr]
    for g, rows in by_group.items():
        md += [
            "",
            f"School-census link rate by {g}:",
            "",
            "| group | records | link rate |",
            "|---|---:|---:|",
        ]
        md += [f"| {r['group']} | {r['records']:,} | {r['link_rate']:.1%} |" for r in rows]
    md += ["", "| comparison | level | m | u |", "|---|---|---:|---:|"]
    md += [
        f"| {r['comparison']} | {r['level']} | {r['m'] or 0:.4f} | {r['u'] or 0:.6f} |" for r in mu
    ]
    (layout.linkage_dir / "linkage_report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
