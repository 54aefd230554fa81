"""``link_tables``: link tables of people, deterministically then with Splink.

1. Deterministic: records sharing an exact trusted id (a column of kind ``trusted_id``: the
   pipeline's health number, pupil number, LA child id) are joined into components (connected
   components over record-id edges).
2. Each component is reduced to its distinct identity *profiles* (its declared columns,
   cleaned by kind: :mod:`linkage.comparisons`), which shrinks the probabilistic problem.
3. Splink scores profile pairs with one comparison per declared column; blocking rules, EM
   sessions, the prior and the threshold are declared or chosen from the data
   (:mod:`linkage.training`); u by random sampling, m by expectation maximisation, no labels.
4. Profile pairs at or above the threshold join their components; connected components over
   both kinds of edge give one cluster (person) per record.
"""

from __future__ import annotations

import logging
import os
import re
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ground.db import memory_size, private_dir, quote_column, quote_ident, sql_string
from ground.errors import ConfigError
from linkage.comparisons import (
    PIPELINE_COLUMNS,
    Column,
    ColumnKind,
    clean_sql,
    comparison,
    declare,
)
from linkage.explain import Explain, explain_model
from linkage.settings import LinkageSettings
from linkage.training import (
    LinkageTrainingError,
    Rule,
    blocking_rule,
    choose_blocking_rules,
    choose_em_sessions,
    choose_threshold,
    prior_rule,
    quiet_splink,
    rule_recall,
    rule_sql,
    untrained_comparisons,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DuckDBTable:
    """A table of a DuckDB database file, read in place by ``link_tables`` (attached read-only:
    no copy of its identifiers is written anywhere)."""

    database: Path
    table: str


@dataclass
class LinkResult:
    """Scored profile pairs, one cluster per input record, the model and the threshold used.

    ``clusters``: ``table, record_id, cluster_id, component_id, link_method,
    match_probability``. ``pairs``: ``table_l, record_id_l, table_r, record_id_r,
    match_probability, match_weight`` (representative records of linked profiles).
    """

    clusters: pl.DataFrame
    pairs: pl.DataFrame
    model_json: dict[str, Any]
    profile_count: int
    record_count: int
    match_threshold: float = 0.95
    blocking_rules: list[str] = field(default_factory=list)
    em_sessions: list[str] = field(default_factory=list)
    charts: dict[str, Path] = field(default_factory=dict)
    review: pl.DataFrame | None = None  # clerical-review sample (identifiers), if asked for
    #: scored pairs the linker does not use, kept for multiple linkage imputation
    #: (:mod:`linkage.imputation`): pairs below the prediction floor of ``pairs`` down to
    #: ``settings.candidate_floor``, and pairs only the plan's candidate rules block together
    #: (those the draws use: ``ModelPlan.candidate_spine_table``); one row per profile pair,
    #: by record group: ``component_id_l``, ``component_id_r`` (``clusters.component_id``),
    #: ``match_probability``, ``match_weight`` and ``candidate_rule`` (whether a candidate
    #: rule made it). Integers and floats, no record ids: 58 million rows at a million children
    #: (until 2026-12-03 each row named two representative records, built as Python strings:
    #: the link stage peaked at 23.0 GiB there, 16.7 GiB since). None when
    #: ``settings.candidate_floor`` is None (the default)
    candidate_pairs: pl.DataFrame | None = None


def _soundex(name: str | None) -> str | None:
    if not name:
        return None
    codes = {
        **dict.fromkeys("bfpv", "1"),
        **dict.fromkeys("cgjkqsxz", "2"),
        **dict.fromkeys("dt", "3"),
        "l": "4",
        **dict.fromkeys("mn", "5"),
        "r": "6",
    }
    first, out, last = name[0], [], codes.get(name[0], "")
    for ch in name[1:]:
        c = codes.get(ch, "")
        if c and c != last:
            out.append(c)
        if ch not in "hw":
            last = c
    return (first.upper() + "".join(out) + "000")[:4]


def normalise_name(s: str | None) -> str | None:
    """Lower case, diacritics folded (Siân -> sian), letters only."""
    if s is None:
        return None
    folded = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode()
    out = re.sub(r"[^a-z]", "", folded.lower())
    return out or None


def _records(
    con: duckdb.DuckDBPyConnection,
    tables: Mapping[str, Any],
    roles: Mapping[str, Mapping[str, str]],
    columns: Sequence[Column],
) -> None:
    """Union every input table into ``records`` with one VARCHAR column per declared field.

    Table names, column names and paths reach SQL only as quoted identifiers, quoted string
    literals or ``?`` parameters; field names are checked by ``declare``.
    """
    fields = [c.name for c in columns]
    allowed = ("record_id", *fields)
    parts: list[str] = []
    attached: dict[Path, str] = {}
    for t, frame in tables.items():
        r = roles.get(t)
        if r is None or "record_id" not in r:
            raise ConfigError(f"table {t!r}: roles must name its record_id column")
        unknown = set(r) - set(allowed)
        if unknown:
            raise ConfigError(
                f"table {t!r}: unknown role(s) {sorted(unknown)}; declared fields: {allowed}"
            )
        name = f"input_{len(parts)}"
        if isinstance(frame, DuckDBTable):  # read in place from its database file
            db = Path(frame.database).resolve()
            if db not in attached:
                attached[db] = f"source_db_{len(attached)}"
                con.execute(f"ATTACH ? AS {attached[db]} (READ_ONLY)", [str(db)])
            source = f"{attached[db]}.{quote_ident(frame.table)}"
        elif isinstance(frame, str | Path):  # a Parquet file, read by DuckDB without Python copies
            con.read_parquet(str(frame)).create_view(name)
            source = name
        else:
            con.register(name, frame)
            source = name
        cols = [f"{sql_string(t)} AS tbl"]
        for role in allowed:
            c = r.get(role)
            if c is None:
                cols.append(f"NULL::VARCHAR AS {quote_ident(role)}")
            else:
                cols.append(
                    f"NULLIF(TRIM(CAST({quote_column(c)} AS VARCHAR)), '') AS {quote_ident(role)}"
                )
        parts.append(f"SELECT {', '.join(cols)} FROM {source}")
    con.execute("CREATE OR REPLACE TABLE records AS " + " UNION ALL ".join(parts))
    for alias in attached.values():
        con.execute(f"DETACH {alias}")
    # record numbers in a fixed order: component labels, profile order and profile ids (which
    # Splink's seeded u sample hashes) all follow them. `row_number() OVER ()` numbered rows in
    # arrival order, which at national size varied between runs and changed the trained model.
    con.execute(
        "CREATE OR REPLACE TABLE records AS "
        "SELECT row_number() OVER (ORDER BY tbl, record_id) - 1 AS rec, * FROM records"
    )


def _deterministic_components(con: duckdb.DuckDBPyConnection, trusted: Sequence[str]) -> np.ndarray:
    """Connected components of records joined by any shared trusted id."""
    n = con.execute("SELECT count(*) FROM records").fetchall()[0][0]
    if not trusted:
        return np.arange(n, dtype=np.int64)
    edges = con.execute(
        " UNION ALL ".join(
            f"SELECT rec, dense_rank() OVER (ORDER BY {quote_ident(r)}) - 1 AS id_node, "
            f"{sql_string(r)} AS kind FROM records WHERE {quote_ident(r)} IS NOT NULL"
            for r in trusted
        )
    ).fetchnumpy()
    rec = np.asarray(edges["rec"], dtype=np.int64)
    kind = np.asarray(edges["kind"])
    node = np.asarray(edges["id_node"], dtype=np.int64)
    offset = n
    id_nodes = np.empty_like(node)
    for r in trusted:
        sel = kind == r
        id_nodes[sel] = node[sel] + offset
        offset += int(node[sel].max()) + 1 if sel.any() else 0
    g = coo_matrix((np.ones(rec.size, np.int8), (rec, id_nodes)), shape=(offset, offset))
    _, labels = connected_components(g, directed=False)
    return labels[:n]


@dataclass(frozen=True)
class ModelPlan:
    """How the model is blocked and trained; ``None`` parts are chosen from the data
    (:mod:`linkage.training`). Each rule is a tuple of profile columns that must agree exactly
    (a date column ``d`` blocks on ``d_text``, its ``YYYYMMDD`` text)."""

    blocking_rules: tuple[Rule, ...] | None = None
    em_sessions: tuple[Rule, ...] | None = None
    prior_rule: Rule | None = None
    #: wider rules used only to propose *candidate* pairs for link draws (never linked by the
    #: linker itself), restricted to pairs where exactly one side has no person name (a
    #: health record, which has only a date of birth, sex and postcode to block on)
    candidate_rules: tuple[Rule, ...] = ()
    #: set, the candidate rules keep only pairs whose nameless side has a postcode that no
    #: record of this table holds (an address the register does not know, such as a placement
    #: address): a nameless record at a known address meets the children living there through
    #: the usual date of birth + postcode rule. None: no such condition
    candidate_unknown_postcode_table: str | None = None
    #: the table whose records make a record group a person for link draws (their spine,
    #: :func:`linkage.imputation.load_candidates`). Set, a candidate-rule pair between two
    #: groups that both hold such a record, or neither does, is not kept unless a usual rule
    #: also pairs the two groups: the draws drop exactly those pairs, so the draws' inputs are
    #: unchanged and about half the candidate rows are never written. None: every one is kept
    candidate_spine_table: str | None = None


#: the pipeline's blocking and training, declared (at a million children, choosing rules by
#: counting pairs would itself take minutes; these were sized on the synthetic world at 1M)
PIPELINE_PLAN = ModelPlan(
    blocking_rules=(
        ("date_of_birth", "surname"),
        ("date_of_birth", "first_name"),
        ("date_of_birth", "postcode"),
        ("first_name", "surname", "postcode"),
        ("first_name", "surname", "substr(date_of_birth_text, 1, 4)", "sex"),
    ),
    # EM needs blocked pairs among which true matches are common. On a date of birth alone (or
    # a full name alone) matches are ~1% of pairs at 100k children and ~0.1% at a million,
    # where EM settled on a wrong solution (date-of-birth agreement m = 0.003 at 1M). Rules on
    # two or three fields keep the share of matches high at any scale; three sessions estimate
    # every comparison (Splink averages a comparison's m over the sessions that estimate it).
    em_sessions=(
        ("date_of_birth", "first_name"),  # estimates surname, postcode, sex
        ("date_of_birth", "surname"),  # first name, postcode, sex
        # same full name AND full postcode: 96% share a date of birth at 1M children, where
        # same name and postcode district shared it in only 7% (common Welsh names)
        ("first_name", "surname", "postcode"),  # date of birth, sex
    ),
    prior_rule=("first_name", "surname", "date_of_birth"),
    # A health record without an NHS number whose postcode no register row holds (a placement
    # address) agrees with its child on none of the rules above: the linker misses it, and
    # link draws can recover it only if the pair is scored at all (docs/linkage_error.md).
    # Date of birth + sex alone paired every such record with every child born that day: N^2
    # rows (680 million at a million children). The postcode area and the unknown address keep
    # 1.7-3.1% of those rows and propose 95-96% of looked-after children's missed records, at
    # 20,000 and 100,000 children (docs/linkage_error.md, "A candidate rule for a million
    # children")
    candidate_rules=(("date_of_birth", "sex", "postcode_area"),),
    candidate_spine_table="population_register",
    candidate_unknown_postcode_table="population_register",
)


def splink_settings(
    columns: Sequence[Column] | None = None,
    blocking_rules: Sequence[Rule] | None = None,
    *,
    across_tables: bool = False,
    uk_postcodes: bool = True,
) -> Any:
    """The Splink model: one comparison per scored column, and the blocking rules used for
    prediction (default: the pipeline's)."""
    from splink import SettingsCreator

    columns = PIPELINE_COLUMNS if columns is None else columns
    rules = PIPELINE_PLAN.blocking_rules if blocking_rules is None else blocking_rules
    assert rules is not None
    return SettingsCreator(
        link_type="dedupe_only",  # all profiles of all tables in one frame; rules restrict
        unique_id_column_name="profile_id",
        comparisons=[comparison(c, uk_postcodes=uk_postcodes) for c in columns if c.scored],
        # pairs inside one deterministic component are already linked: never scored
        blocking_rules_to_generate_predictions=[
            blocking_rule(r, across_tables=across_tables) for r in rules
        ],
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,
    )


def _profiles(
    con: duckdb.DuckDBPyConnection, columns: Sequence[Column], across_tables: bool
) -> pl.DataFrame:
    """Distinct identity profiles per deterministic component (and table, when linking only)."""
    scored = [c for c in columns if c.scored]
    outputs: list[str] = []
    for c in scored:
        outputs += [o for o in clean_sql(c, "x") if o != c.name]
    main = [c.name for c in scored]
    identifying = [
        c.name
        for c in scored
        if c.kind in {ColumnKind.PERSON_NAME, ColumnKind.DATE, ColumnKind.IDENTIFIER}
    ] or main
    key = ["component", *(["source_table"] if across_tables else []), *main]
    select = ", ".join(
        ["component", *(["tbl AS source_table"] if across_tables else []), *main, *outputs]
    )
    prof = con.sql(
        f"SELECT DISTINCT {select} FROM records_norm "
        f"WHERE {' OR '.join(f'{n} IS NOT NULL' for n in identifying)} "
        f"ORDER BY {', '.join(f'{k} NULLS FIRST' for k in key)}"
    ).pl()
    names = [c.name for c in scored if c.kind is ColumnKind.PERSON_NAME]
    if names:
        # phonetic codes computed once per distinct name, not once per profile
        distinct = pl.concat([prof[n] for n in names]).drop_nulls().unique().sort()
        codes = pl.DataFrame(
            {"name": distinct, "code": [[_soundex(n)] for n in distinct.to_list()]},
            schema={"name": pl.String, "code": pl.List(pl.String)},
        )
        for n in names:
            prof = prof.join(
                codes.rename({"name": n, "code": f"{n}_phonetic"}),
                on=n,
                how="left",
                maintain_order="left",
            )
    return prof.with_columns(profile_id=pl.int_range(pl.len(), dtype=pl.Int64))


def _pair_counter(
    con: duckdb.DuckDBPyConnection, prof: pl.DataFrame, across_tables: bool
) -> Callable[[Rule], float]:
    """Pairs a blocking rule would make, by Splink's comparison counting (on a sample of
    profiles when there are many)."""
    from splink import DuckDBAPI
    from splink.blocking_analysis import count_comparisons_from_blocking_rules

    sdf = DuckDBAPI(con).register(prof, dataset_display_name="profiles_for_counting")
    share = min(1.0, 1_500 / max(prof.height, 1))  # counts scaled up from the sample

    def count(rule: Rule) -> float:
        rec = count_comparisons_from_blocking_rules(
            sdf,
            blocking_rules=[blocking_rule(rule, across_tables=across_tables)],
            link_type="dedupe_only",
            unique_id_column_name="profile_id",
            record_sample_proportion=share,
        )
        return float(rec[0]["cumulative_comparison_count"])

    return count


def plan_model(
    con: duckdb.DuckDBPyConnection,
    prof: pl.DataFrame,
    columns: Sequence[Column],
    plan: ModelPlan,
    settings: LinkageSettings,
    across_tables: bool,
) -> ModelPlan:
    """``plan`` with every missing part chosen from the columns present and the data."""
    rules = plan.blocking_rules
    if rules is None:
        counter = _pair_counter(con, prof, across_tables)
        rules = tuple(choose_blocking_rules(columns, counter, settings.max_pairs_per_rule))
    sessions = plan.em_sessions or tuple(choose_em_sessions(columns, rules))
    return replace(
        plan,
        blocking_rules=rules,
        em_sessions=sessions,
        prior_rule=plan.prior_rule or prior_rule(columns),
    )


def load_model(
    path: str | Path,
    dialect: str,
    columns: Sequence[Column] | None = None,
    blocking_rules: Sequence[Rule] | None = None,
    *,
    across_tables: bool = False,
) -> dict[str, Any]:
    """A saved Splink model, expressed in ``dialect`` ("duckdb" or "spark").

    A model trained on one backend carries that backend's SQL. The comparisons are built from
    the same declared columns, so the trained parameters (m and u per level, the prior) are
    copied onto the comparisons rendered for the other backend.
    """
    import json

    from splink import SettingsCreator

    try:
        source = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"linkage model {path}: cannot read a Splink model JSON ({e})") from e
    if source.get("sql_dialect") == dialect:
        return dict(source)
    creator = splink_settings(columns, blocking_rules, across_tables=across_tables)
    assert isinstance(creator, SettingsCreator)
    target = creator.get_settings(dialect).as_dict()
    src_comps, dst_comps = source.get("comparisons", []), target["comparisons"]
    shape_src = [len(c["comparison_levels"]) for c in src_comps]
    shape_dst = [len(c["comparison_levels"]) for c in dst_comps]
    if shape_src != shape_dst:
        raise ConfigError(
            f"linkage model {path}: its comparisons (levels {shape_src}) are not these "
            f"columns' (levels {shape_dst}); retrain without model_path"
        )
    for src, dst in zip(src_comps, dst_comps, strict=True):
        for ls, ld in zip(src["comparison_levels"], dst["comparison_levels"], strict=True):
            for key in ("m_probability", "u_probability"):
                if key in ls:
                    ld[key] = ls[key]
    target["probability_two_random_records_match"] = source["probability_two_random_records_match"]
    return dict(target)


def _comparable_pairs(prof: pl.DataFrame, across_tables: bool) -> tuple[float, float]:
    """(pairs Splink's prior divides by: all profile pairs, pairs the model may link)."""
    n = float(prof.height)
    every = n * (n - 1) / 2
    if not across_tables:
        return every, every
    sizes = prof["source_table"].value_counts()["count"].to_numpy().astype(float)
    return every, float((sizes.sum() ** 2 - (sizes**2).sum()) / 2)


def _train(
    linker: Any,
    prof: pl.DataFrame,
    columns: Sequence[Column],
    plan: ModelPlan,
    settings: LinkageSettings,
    across_tables: bool,
    con: duckdb.DuckDBPyConnection | None = None,
) -> None:
    """Prior, u by random sampling, m by EM over ``plan.em_sessions``, then the prior again
    from the trained model; one warning line (or a LinkageTrainingError) for what could not be
    trained, instead of Splink's warnings.

    With ``settings.deterministic`` and a DuckDB ``con``, EM runs on one thread: its
    floating-point sums then happen in a fixed order and a rerun gives a byte-identical model.
    The prior and u are counts over a hash-seeded sample, identical on any number of threads.
    """
    assert plan.prior_rule is not None and plan.em_sessions is not None
    prior = blocking_rule(plan.prior_rule, across_tables=across_tables, across_components=False)
    messages: list[str] = []
    # the probe sizing EM's pair sample sees every profile on small data, a sample on large
    probe = min(1.0, settings.em_probe_profiles / max(prof.height, 1))
    with quiet_splink(messages):
        try:
            linker.training.estimate_probability_two_random_records_match(
                [prior], recall=settings.prior_recall or 0.8
            )
        except Exception as e:
            raise _no_prior(plan.prior_rule) from e
        if not linker.misc.save_model_to_json()["probability_two_random_records_match"] > 0:
            raise _no_prior(plan.prior_rule)
        linker.training.estimate_u_using_random_sampling(
            max_pairs=settings.u_max_pairs, seed=settings.seed
        )
        if con is not None and settings.deterministic:
            con.execute("SET threads = 1")
        trained: set[str] = set()
        failed: list[str] = []
        name_of = {c.block_key: c.name for c in columns}
        for rule in plan.em_sessions:
            try:
                linker.training.estimate_parameters_using_expectation_maximisation(
                    blocking_rule(rule, across_tables=across_tables, across_components=False),
                    max_pairs=settings.em_max_pairs,
                    record_sample_proportion=probe,
                )
            except Exception as e:  # no pair in the block, or EM could not converge
                failed.append(f"{'+'.join(rule)} ({type(e).__name__})")
                continue
            trained |= {c.name for c in columns if c.scored} - {name_of.get(k, k) for k in rule}
    model = linker.misc.save_model_to_json()
    none_trained, partly = untrained_comparisons(model)
    none_trained += [
        c.name for c in columns if c.scored and c.name not in trained and c.name not in none_trained
    ]
    if failed:
        log.warning("linkage: EM sessions that did not run: %s", "; ".join(failed))
    if none_trained:
        raise LinkageTrainingError(
            f"linkage: the data trained no level of {none_trained} (too few records, or too few "
            "pairs that agree on the other columns); link more records at once, reuse a "
            "trained model (model_path), or drop or re-kind these columns"
        )
    if partly:
        log.warning(
            "linkage: %d comparison level(s) not observed in training, scored with Splink's "
            "defaults: %s (more records would train them)",
            len(partly),
            "; ".join(partly),
        )
    if settings.prior_recall is None:
        # the prior from the data: pairs agreeing on the rule, over the rule's recall by the
        # trained model (exact-agreement m of each column, and how often it is filled in)
        non_null = {
            k: 1 - prof[k].null_count() / max(prof.height, 1)
            for k in plan.prior_rule
            if k in prof.columns
        }
        recall = rule_recall(model, columns, plan.prior_rule, non_null)
        every, comparable = _comparable_pairs(prof, across_tables)
        with quiet_splink(messages):
            linker.training.estimate_probability_two_random_records_match(
                [prior], recall=min(1.0, recall * comparable / every)
            )


def _no_prior(rule: Rule) -> LinkageTrainingError:
    return LinkageTrainingError(
        f"linkage: no two records agree exactly on {'+'.join(rule)}, so the share of "
        "matches cannot be estimated; link more records at once, or reuse a trained model "
        "(model_path)"
    )


def _prediction_floor(settings: LinkageSettings) -> float:
    """The lowest match probability of the pairs the linker uses (``LinkResult.pairs``)."""
    return 0.5 if settings.match_threshold is None else min(0.5, settings.match_threshold)


def _predict(linker: Any, settings: LinkageSettings) -> Any:
    floor = _prediction_floor(settings)
    if settings.candidate_floor is not None:  # the pairs below it are candidates for draws
        floor = min(floor, settings.candidate_floor)
    messages: list[str] = []  # untrained levels were reported once, by _train
    with quiet_splink(messages):
        return linker.inference.predict(threshold_match_probability=floor)


#: the profile column that says a profile's postcode is held by no spine record (computed in
#: :func:`_predict_with_candidates`; read by :func:`candidate_rule_sql`)
UNKNOWN_POSTCODE_FLAG = "postcode_unknown"


def candidate_rule_sql(
    keys: Rule, columns: Sequence[Column], *, across_tables: bool, unknown_postcode: bool = False
) -> str:
    """A candidate rule's SQL: the keys agree, different components, and exactly one side has
    no person name (without name columns: the keys alone). With ``unknown_postcode``, the
    nameless side's profile must also carry :data:`UNKNOWN_POSTCODE_FLAG`."""
    sql = rule_sql(keys, across_tables=across_tables)
    names = [c.name for c in columns if c.scored and c.kind is ColumnKind.PERSON_NAME]
    if not names:
        return sql
    nameless = " AND ".join(f"{{side}}.{quote_ident(n)} IS NULL" for n in names)
    sql = f"{sql} AND (({nameless.format(side='l')}) <> ({nameless.format(side='r')}))"
    if unknown_postcode:
        flag = quote_ident(UNKNOWN_POSTCODE_FLAG)
        sql += (
            f" AND ((({nameless.format(side='l')}) AND l.{flag})"
            f" OR (({nameless.format(side='r')}) AND r.{flag}))"
        )
    return sql


def _flag_unknown_postcodes(
    con: duckdb.DuckDBPyConnection, prof: pl.DataFrame, columns: Sequence[Column], table: str
) -> pl.DataFrame:
    """``prof`` with :data:`UNKNOWN_POSTCODE_FLAG`: the profile has a postcode (in any postcode
    column; spaces ignored) that no record of ``table`` holds. The postcodes are compared inside
    DuckDB; only the flag comes back."""
    postcodes = [c.name for c in columns if c.scored and c.kind is ColumnKind.POSTCODE]
    if not postcodes:
        raise ConfigError(
            "linkage: a candidate rule restricted to unknown postcodes "
            "(candidate_unknown_postcode_table) needs a postcode column; none is declared"
        )
    known = " UNION ".join(
        f"SELECT DISTINCT replace({quote_ident(n)}, ' ', '') AS pc FROM records_norm "
        f"WHERE tbl = ? AND {quote_ident(n)} IS NOT NULL"
        for n in postcodes
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE spine_postcodes AS {known}", [table] * len(postcodes)
    )
    frame = prof.select("profile_id", *postcodes)
    con.register("profile_postcodes", frame)
    try:
        unknown = " OR ".join(
            f"({quote_ident(n)} IS NOT NULL AND replace({quote_ident(n)}, ' ', '') "
            "NOT IN (SELECT pc FROM spine_postcodes))"
            for n in postcodes
        )
        flags = con.sql(
            f"SELECT profile_id, coalesce({unknown}, false) AS flag FROM profile_postcodes "
            "ORDER BY profile_id"
        ).pl()
    finally:
        con.unregister("profile_postcodes")
        con.execute("DROP TABLE spine_postcodes")
    return prof.with_columns(
        prof.select("profile_id")
        .join(flags, on="profile_id", how="left", maintain_order="left")["flag"]
        .fill_null(False)
        .alias(UNKNOWN_POSTCODE_FLAG)
    )


def _predict_with_candidates(
    linker: Any,
    sdf: Any,
    con: duckdb.DuckDBPyConnection,
    prof: pl.DataFrame,
    columns: Sequence[Column],
    plan: ModelPlan,
    settings: LinkageSettings,
    across_tables: bool,
) -> pl.DataFrame:
    """The linker's pairs (from the prediction floor up, sorted by profile ids); the candidate
    pairs are left in the connection's table :data:`KEPT_CANDIDATES` (read by
    :func:`_candidate_pairs`), so that tens of millions of them never become Python objects.

    A second linker on the same profiles carries the trained model with its prediction rules
    followed by ``plan.candidate_rules``. Splink gives each pair to the first rule that makes
    it (``match_key``), so the usual rules' pairs are exactly the linker's own, scored by the
    same SQL with the same parameters, and ``candidate_rule`` marks the pairs only a candidate
    rule makes. Usual pairs come from the lower of the prediction floor and
    ``settings.candidate_floor``; candidate-rule pairs from ``settings.candidate_floor``.
    (Before 2026-12-02 the linker predicted its pairs, then a second linker predicted every
    pair again for the candidate rule's: the usual pairs were scored twice.)

    With ``plan.candidate_spine_table``, only the candidate-rule pairs the draws use are
    scored: in the one prediction, those between a group holding a spine record and one
    without; then, in a small second prediction, those between two groups alike in that
    respect that a usual rule also pairs (see ``ModelPlan.candidate_spine_table``).
    """
    from splink import DuckDBAPI, Linker

    assert settings.candidate_floor is not None
    model = linker.misc.save_model_to_json()
    model.pop("linker_uid", None)
    usual = list(model["blocking_rules_to_generate_predictions"])
    spine = plan.candidate_spine_table
    known_addresses = plan.candidate_unknown_postcode_table
    candidate_sql = [
        candidate_rule_sql(
            r, columns, across_tables=across_tables, unknown_postcode=known_addresses is not None
        )
        for r in plan.candidate_rules
    ]
    if spine is not None:
        # each profile's record group holds a spine record or not
        spine_groups = con.sql(
            "SELECT DISTINCT component FROM records_norm WHERE tbl = ?", params=[spine]
        ).pl()["component"]
        prof = prof.with_columns(spine_group=pl.col("component").is_in(spine_groups.implode()))
    if known_addresses is not None:
        prof = _flag_unknown_postcodes(con, prof, columns, known_addresses)
    if spine is not None or known_addresses is not None:
        sdf = DuckDBAPI(con).register(prof, dataset_display_name="profiles_candidates")

    def predict(rules: list[Any], frame: Any, floor: float) -> Any:
        wide = dict(model)
        wide["blocking_rules_to_generate_predictions"] = [
            {"blocking_rule": sql, "sql_dialect": "duckdb"} if isinstance(sql, str) else sql
            for sql in rules
        ]
        messages: list[str] = []  # untrained levels were reported once, by _train
        with quiet_splink(messages):
            return Linker(frame, wide, log_level=logging.WARNING).inference.predict(
                threshold_match_probability=floor
            )

    across = " AND l.spine_group <> r.spine_group" if spine is not None else ""
    predictions = predict(
        usual + [sql + across for sql in candidate_sql],
        sdf,
        min(_prediction_floor(settings), settings.candidate_floor),
    )
    log.info("linkage: pairs and candidates predicted in one pass")
    scored = quote_ident(predictions.physical_name)
    n_usual = len(usual)
    floor = _prediction_floor(settings)
    # the linker's pairs come back to Python; the kept candidates stay in DuckDB (58 million
    # rows at a million children: as Python frames of record ids the stage peaked at 23.0 GiB,
    # 16.7 GiB without them)
    pairs = con.sql(
        "SELECT profile_id_l, profile_id_r, match_probability, match_weight "
        f"FROM {scored} WHERE CAST(match_key AS INTEGER) < ? AND match_probability >= ? "
        "ORDER BY profile_id_l, profile_id_r",
        params=[n_usual, floor],
    ).pl()
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {KEPT_CANDIDATES} AS
        SELECT profile_id_l, profile_id_r, match_probability, match_weight,
               CAST(match_key AS INTEGER) >= ? AS candidate_rule
        FROM {scored}
        WHERE (CAST(match_key AS INTEGER) < ? AND match_probability < ?)
           OR (CAST(match_key AS INTEGER) >= ? AND match_probability >= ?)""",
        [n_usual, n_usual, floor, n_usual, settings.candidate_floor],
    )
    log.info("linkage: %d pairs for the linker, candidates kept", pairs.height)
    if spine is None or not candidate_sql:
        predictions.drop_table_from_database_and_remove_from_cache()
        return pairs
    # two groups alike (both or neither hold a spine record) that a usual rule pairs: their
    # candidate-rule pairs count for the draws too (the largest probability of the two groups)
    con.register("candidate_profiles", prof.select("profile_id", "component", "spine_group"))
    try:
        # one side at a time: with both profile lookups and the cross-side spine condition in
        # one join, DuckDB may join the lookups to each other first (on spine_group alone)
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE usual_left AS
            SELECT l.component AS a, l.spine_group, s.profile_id_r
            FROM {scored} s JOIN candidate_profiles l ON l.profile_id = s.profile_id_l
            WHERE CAST(s.match_key AS INTEGER) < ?""",
            [n_usual],
        )
        partners = con.sql(
            """WITH alike AS (
                SELECT u.a, r.component AS b
                FROM usual_left u
                JOIN candidate_profiles r
                  ON r.profile_id = u.profile_id_r AND r.spine_group = u.spine_group)
            SELECT component, list(partner ORDER BY partner) AS usual_partner_groups
            FROM (SELECT a AS component, b AS partner FROM alike
                  UNION SELECT b, a FROM alike)
            GROUP BY component ORDER BY component"""
        ).pl()
    finally:
        con.unregister("candidate_profiles")
        con.execute("DROP TABLE IF EXISTS usual_left")
    # the prediction's wide table (every comparison column of 68 million pairs at a million
    # children) is no longer needed: what is used of it is in pairs and KEPT_CANDIDATES
    predictions.drop_table_from_database_and_remove_from_cache()
    log.info("linkage: %d record groups usually paired with an alike group", partners.height)
    if partners.height == 0:
        return pairs
    paired = prof.join(partners, on="component", how="inner")
    frame = DuckDBAPI(con).register(paired, dataset_display_name="profiles_usually_paired")
    # the usual rules written from the plan's declared columns (rule_sql), never from the
    # model's JSON: a model file (``model_path``) is input, and no input text goes into SQL
    assert plan.blocking_rules is not None
    not_usual = " AND ".join(
        f"NOT COALESCE(({rule_sql(r, across_tables=across_tables)}), false)"
        for r in plan.blocking_rules
    )
    inside = (
        " AND l.spine_group = r.spine_group"
        " AND list_contains(l.usual_partner_groups, r.component)"
        + (f" AND {not_usual}" if not_usual else "")
    )
    extra = predict([sql + inside for sql in candidate_sql], frame, settings.candidate_floor)
    con.execute(
        f"INSERT INTO {KEPT_CANDIDATES} SELECT profile_id_l, profile_id_r, match_probability, "
        f"match_weight, true FROM {quote_ident(extra.physical_name)}"
    )
    extra.drop_table_from_database_and_remove_from_cache()
    return pairs


#: the link connection's table of the profile pairs kept for link draws (profile ids, scores,
#: ``candidate_rule``), written by the scoring step and read by :func:`_candidate_pairs`
KEPT_CANDIDATES = "kept_candidate_profile_pairs"


def _candidate_pairs(con: duckdb.DuckDBPyConnection, prof: pl.DataFrame) -> pl.DataFrame:
    """The kept candidate pairs by record group: each profile pair's two components
    (``component_id_l``, ``component_id_r``, as in ``LinkResult.clusters``), its scores and
    ``candidate_rule``; the usual rules' pairs below the floor first, then the candidate
    rules' pairs, each sorted by profile pair. Integers and floats only: the record ids are
    in the clusters."""
    con.register("candidate_profiles", prof.select("profile_id", "component"))
    try:
        return con.sql(
            f"""SELECT l.component AS component_id_l, r.component AS component_id_r,
                       k.match_probability, k.match_weight, k.candidate_rule
                FROM {KEPT_CANDIDATES} k
                JOIN candidate_profiles l ON l.profile_id = k.profile_id_l
                JOIN candidate_profiles r ON r.profile_id = k.profile_id_r
                ORDER BY k.candidate_rule, k.profile_id_l, k.profile_id_r"""
        ).pl()
    finally:
        con.unregister("candidate_profiles")
        con.execute(f"DROP TABLE IF EXISTS {KEPT_CANDIDATES}")


def _linker(
    sdf: Any,
    backend: Literal["duckdb", "spark"],
    prof: Any,
    columns: Sequence[Column],
    plan: Any,
    settings: LinkageSettings,
    across_tables: bool,
) -> Any:
    """A Splink linker on the registered profiles: the saved model when ``model_path`` is set,
    else the untrained model of the declared columns (either backend)."""
    from splink import Linker

    model: Any = (
        load_model(
            settings.model_path, backend, columns, plan.blocking_rules, across_tables=across_tables
        )
        if settings.model_path
        else None
    )
    return Linker(
        sdf,
        model
        or splink_settings(
            columns,
            plan.blocking_rules,
            across_tables=across_tables,
            uk_postcodes=_uk_postcodes(prof, columns),
        ),
        log_level=logging.WARNING,
    )


def _uk_postcodes(prof: pl.DataFrame, columns: Sequence[Column]) -> bool:
    """Whether any postcode column holds a UK-shaped postcode (its sector levels can train)."""
    return any(
        prof[f"{c.name}_sector"].null_count() < prof.height
        for c in columns
        if c.kind is ColumnKind.POSTCODE and c.comparison is None
    )


def _score_on_duckdb(
    con: duckdb.DuckDBPyConnection,
    prof: pl.DataFrame,
    columns: Sequence[Column],
    plan: ModelPlan,
    settings: LinkageSettings,
    across_tables: bool,
    explain: Explain | None,
) -> tuple[pl.DataFrame, dict[str, Any], _Extras, ModelPlan]:
    """Train (or load) the Splink model and score profile pairs on DuckDB."""
    from splink import DuckDBAPI

    threads = int(settings.duckdb_threads or os.cpu_count() or 1)
    con.execute("SET threads = ?", [threads])
    plan = plan_model(con, prof, columns, plan, settings, across_tables)
    db_api = DuckDBAPI(con)
    sdf = db_api.register(prof, dataset_display_name="profiles")
    linker = _linker(sdf, "duckdb", prof, columns, plan, settings, across_tables)
    started = time.perf_counter()
    if not settings.model_path:
        _train(linker, prof, columns, plan, settings, across_tables, con=con)
        log.info("linkage: trained in %.1f s", time.perf_counter() - started)
    # scoring is per pair (no floating-point sums across rows), so it may use every core and
    # still give identical probabilities; the output is sorted below
    con.execute("SET threads = ?", [threads])
    started = time.perf_counter()
    floor = _prediction_floor(settings)  # the linker's pairs are those from it up
    kept = 0
    if settings.candidate_floor is None:
        predictions = _predict(linker, settings)
        scored = con.sql(
            "SELECT profile_id_l, profile_id_r, match_probability, match_weight "
            f"FROM {quote_ident(predictions.physical_name)} ORDER BY profile_id_l, profile_id_r"
        ).pl()
        pairs = scored.filter(pl.col("match_probability") >= floor)
    else:
        # candidates for link draws (the usual rules' pairs below the floor, then the pairs
        # only a candidate rule makes) stay in DuckDB, in KEPT_CANDIDATES
        pairs = _predict_with_candidates(
            linker, sdf, con, prof, columns, plan, settings, across_tables
        )
        kept = _count(con, KEPT_CANDIDATES)
    log.info(
        "linkage: %d pairs scored (%d kept for link draws) in %.1f s",
        pairs.height,
        kept,
        time.perf_counter() - started,
    )
    pairs_out, model_json, extras = _finish(linker, prof, pairs, settings, explain)
    extras.candidates_kept = settings.candidate_floor is not None
    return pairs_out, model_json, extras, plan


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    """The rows of one of this module's tables (a constant name, never input text)."""
    ((n,),) = con.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchall()
    return int(n)


def spark_session(settings: LinkageSettings, temp_directory: str | Path | None = None) -> Any:
    """The Spark session Splink runs on: the active one (spark-submit, a cluster notebook) or a
    new one at ``settings.spark_master`` with Splink's similarity-function jar."""
    try:
        from pyspark.sql import SparkSession
        from splink.backends.spark import similarity_jar_location
    except ImportError as e:
        raise ConfigError(
            "linkage backend 'spark' needs pyspark: install the extra with "
            "`uv sync --extra spark` (and Java 17+)"
        ) from e
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    import tempfile

    local = str(Path(temp_directory or tempfile.mkdtemp(prefix="cohort-spark-")) / "spark")
    builder = (
        SparkSession.builder.master(settings.spark_master)
        .appName("cohort-linkage")
        .config("spark.jars", similarity_jar_location())
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.default.parallelism", str(settings.spark_shuffle_partitions))
        .config("spark.local.dir", local)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
    )
    if settings.spark_master.startswith("local"):
        builder = builder.config("spark.driver.host", "127.0.0.1")
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # Java missing, master unreachable
        raise ConfigError(
            f"could not start Spark at {settings.spark_master!r} ({e}); Spark needs Java 17+"
        ) from e
    spark.sparkContext.setLogLevel("ERROR")
    spark.sparkContext.setCheckpointDir(str(Path(local) / "checkpoints"))
    return spark


def _score_on_spark(
    con: duckdb.DuckDBPyConnection,
    prof: pl.DataFrame,
    columns: Sequence[Column],
    plan: ModelPlan,
    settings: LinkageSettings,
    across_tables: bool,
    explain: Explain | None,
    temp_directory: str | Path | None,
) -> tuple[pl.DataFrame, dict[str, Any], _Extras]:
    """Train (or load) the same Splink model and score profile pairs on Spark."""
    from splink.backends.spark import SparkAPI

    spark = spark_session(settings, temp_directory)
    db_api = SparkAPI(
        spark_session=spark, num_partitions_on_repartition=settings.spark_shuffle_partitions
    )
    frame = spark.createDataFrame(prof.to_arrow())
    sdf = db_api.register(frame, dataset_display_name="profiles")
    linker = _linker(sdf, "spark", prof, columns, plan, settings, across_tables)
    if not settings.model_path:
        _train(linker, prof, columns, plan, settings, across_tables)
    predictions = _predict(linker, settings)
    table = (
        predictions.as_spark_dataframe()
        .select("profile_id_l", "profile_id_r", "match_probability", "match_weight")
        .orderBy("profile_id_l", "profile_id_r")
        .toArrow()
    )
    scored = pl.from_arrow(table)
    assert isinstance(scored, pl.DataFrame)
    # the linker's pairs from the usual floor; below it, candidates for link draws (the
    # candidate rules run on DuckDB only)
    floor = _prediction_floor(settings)
    pairs = scored.filter(pl.col("match_probability") >= floor)
    pairs_out, model_json, extras = _finish(linker, prof, pairs, settings, explain)
    if settings.candidate_floor is not None:
        below = scored.filter(pl.col("match_probability") < floor)
        con.register("spark_candidates", below.with_columns(candidate_rule=pl.lit(False)))
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {KEPT_CANDIDATES} AS SELECT * FROM spark_candidates"
        )
        con.unregister("spark_candidates")
        extras.candidates_kept = True
    return pairs_out, model_json, extras


def _finish(
    linker: Any,
    prof: pl.DataFrame,
    pairs: pl.DataFrame,
    settings: LinkageSettings,
    explain: Explain | None,
) -> tuple[pl.DataFrame, dict[str, Any], _Extras]:
    """The threshold (the setting, or chosen from the trained model), the model's charts, and
    the saved model without its random session id (so reruns are byte-identical)."""
    threshold = (
        settings.match_threshold
        if settings.match_threshold is not None
        else choose_threshold(pairs["match_probability"].to_numpy(), settings.target_precision)
    )
    charts: dict[str, Path] = {}
    review = None
    if explain is not None:
        charts, review = explain_model(linker, prof, pairs, threshold, explain)
    model_json = linker.misc.save_model_to_json()
    model_json.pop("linker_uid", None)
    return pairs, model_json, _Extras(threshold, charts, review)


@dataclass
class _Extras:
    threshold: float
    charts: dict[str, Path]
    review: pl.DataFrame | None
    #: whether the profile pairs kept for link draws only are in :data:`KEPT_CANDIDATES`
    candidates_kept: bool = False


LinkType = Literal["link_and_dedupe", "link_only", "dedupe_only"]


def link_tables(
    tables: Mapping[str, Any],
    roles: Mapping[str, Mapping[str, str]],
    *,
    columns: Mapping[str, Any] | Sequence[Column] | None = None,
    link_type: LinkType = "link_and_dedupe",
    plan: ModelPlan | None = None,
    settings: LinkageSettings | None = None,
    memory_limit: str | None = None,
    temp_directory: str | Path | None = None,
    explain: Explain | None = None,
) -> LinkResult:
    """Link one or more tables of person records into clusters (one per person).

    Parameters
    ----------
    tables
        ``{table_name: frame}``; a frame is a polars / pandas DataFrame, a pyarrow Table, a
        :class:`DuckDBTable` (a table of a DuckDB file, read in place: the least memory and
        no copy on disk), or the path of a Parquet file.
    roles
        ``{table_name: {field: column}}``: ``record_id`` (required) and the fields of
        ``columns`` this table has (a field a table lacks is null there).
    columns
        ``{field: kind}`` (kinds: ``person_name, date, postcode, address, categorical,
        numeric, identifier, trusted_id``; see :mod:`linkage.comparisons`), a :class:`Column`
        or a Splink comparison per field. Default: the pipeline's fields (first_name, surname,
        date_of_birth, sex, postcode, and the trusted ids nhs_number, upn, la_child_id).
    link_type
        ``link_and_dedupe`` (default): every pair, across and within tables; ``link_only``:
        pairs across tables only (each table holds one record per person); ``dedupe_only``:
        the duplicates of one table.
    plan
        Blocking rules, EM sessions and the prior's rule; parts left ``None`` are chosen from
        the columns present (default with the pipeline's columns: the pipeline's plan).
    settings
        Threshold (``None``: chosen for ``target_precision``), training limits;
        ``settings.model_path`` reuses a saved Splink model.
    explain
        Where to save the model's charts (match weights, m and u: no identifiers) and, in a
        private folder, waterfall charts and a clerical-review sample (identifiers).

    Returns
    -------
    LinkResult
        ``clusters`` (one row per input record), ``pairs`` (scored profile pairs), the model
        and the threshold used.
    """
    settings = settings or LinkageSettings()
    if len(tables) < 1:
        raise ConfigError("link_tables needs at least one table")
    if link_type == "dedupe_only" and len(tables) != 1:
        raise ConfigError(
            f"link_type 'dedupe_only' takes one table, not {len(tables)}; use "
            "'link_and_dedupe' for several tables with duplicates, 'link_only' without"
        )
    if link_type == "link_only" and len(tables) < 2:
        raise ConfigError("link_type 'link_only' needs two or more tables")
    if link_type not in ("link_and_dedupe", "link_only", "dedupe_only"):
        raise ConfigError(f"link_type {link_type!r}: use link_and_dedupe, link_only or dedupe_only")
    if columns is None:
        cols = PIPELINE_COLUMNS
        plan = plan or PIPELINE_PLAN
    elif isinstance(columns, Mapping):
        cols = declare(columns)
    else:  # Column objects: the same checks on their names
        cols = declare({c.name: c for c in columns})
    plan = plan or ModelPlan()
    across_tables = link_type == "link_only"
    limit = memory_size(memory_limit or settings.duckdb_memory_limit, key="duckdb_memory_limit")
    con = duckdb.connect()
    con.execute("SET memory_limit = ?", [limit])
    con.execute("SET threads = 2")
    if temp_directory:
        con.execute("SET temp_directory = ?", [str(private_dir(Path(temp_directory)))])
    _records(con, tables, roles, cols)
    labels = _deterministic_components(con, [c.name for c in cols if not c.scored])
    con.register(
        "component_labels", pl.DataFrame({"rec": np.arange(labels.size), "component": labels})
    )
    cleaned = [
        f"{expr} AS {out}"
        for c in cols
        if c.scored
        for out, expr in clean_sql(c, f"r.{c.name}").items()
    ]
    con.execute(
        f"""CREATE OR REPLACE TABLE records_norm AS
        SELECT r.rec, r.tbl, r.record_id, c.component, {", ".join(cleaned)}
        FROM records r JOIN component_labels c USING (rec)
        ORDER BY r.rec"""
    )
    con.execute("DROP TABLE records")
    con.unregister("component_labels")
    prof = _profiles(con, cols, across_tables)
    log.info(
        "linkage: %d records, %d components, %d profiles",
        labels.size,
        int(np.unique(labels).size),
        prof.height,
    )
    if prof.height < 2:
        raise LinkageTrainingError(
            f"linkage: {prof.height} profile(s) with a name, date or identifier: nothing to "
            "link; check the roles map those columns"
        )
    if settings.backend == "spark":
        plan = plan_model(con, prof, cols, plan, settings, across_tables)
        pairs, model_json, extras = _score_on_spark(
            con, prof, cols, plan, settings, across_tables, explain, temp_directory
        )
    else:
        pairs, model_json, extras, plan = _score_on_duckdb(
            con, prof, cols, plan, settings, across_tables, explain
        )
    comp_of = prof["component"].to_numpy()
    pl_ = pairs["profile_id_l"].to_numpy()
    pr_ = pairs["profile_id_r"].to_numpy()
    prob = pairs["match_probability"].to_numpy()
    keep = (prob >= extras.threshold) & (comp_of[pl_] != comp_of[pr_])
    # components joined by probabilistic edges
    n_comp = int(labels.max()) + 1 if labels.size else 0
    g = coo_matrix(
        (np.ones(int(keep.sum()), np.int8), (comp_of[pl_[keep]], comp_of[pr_[keep]])),
        shape=(n_comp, n_comp),
    )
    _, cluster_of_comp = connected_components(g, directed=False)
    best = np.zeros(n_comp)
    np.maximum.at(best, comp_of[pl_[keep]], prob[keep])
    np.maximum.at(best, comp_of[pr_[keep]], prob[keep])
    rec = con.sql("SELECT rec, tbl, record_id, component FROM records_norm ORDER BY rec").pl()
    comp = rec["component"].to_numpy()
    cluster = cluster_of_comp[comp]
    cluster_size = np.bincount(cluster)[cluster]
    comp_size = np.bincount(comp)[comp]
    method = np.where(
        best[comp] > 0, "probabilistic", np.where(comp_size > 1, "deterministic", "unlinked")
    )
    method = np.where(cluster_size == 1, "unlinked", method)
    match_p = np.where(
        method == "probabilistic", best[comp], np.where(method == "deterministic", 1.0, np.nan)
    )
    clusters = rec.select(
        pl.col("tbl").alias("table"), "record_id", pl.col("component").alias("component_id")
    ).with_columns(
        cluster_id=pl.Series(cluster, dtype=pl.Int64),
        link_method=pl.Series(method),
        match_probability=pl.Series(match_p).fill_nan(None),
    )
    # each pair is reported by one representative record of each side's component
    rep = con.sql(
        "SELECT component, min(tbl || '|' || record_id) AS rep FROM records_norm "
        "GROUP BY component ORDER BY component"
    ).pl()
    rep_of = pl.Series("rep", [None] * n_comp, dtype=pl.String).scatter(
        rep["component"].to_numpy(), rep["rep"]
    )

    def by_record(scored: pl.DataFrame) -> pl.DataFrame:
        """Profile pairs as pairs of representative records (no identifiers)."""
        left = rep_of.gather(comp_of[scored["profile_id_l"].to_numpy()]).str.splitn("|", 2)
        right = rep_of.gather(comp_of[scored["profile_id_r"].to_numpy()]).str.splitn("|", 2)
        return pl.DataFrame(
            {
                "match_probability": scored["match_probability"].to_numpy(),
                "match_weight": scored["match_weight"].to_numpy(),
                "table_l": left.struct.field("field_0"),
                "record_id_l": left.struct.field("field_1"),
                "table_r": right.struct.field("field_0"),
                "record_id_r": right.struct.field("field_1"),
            }
        )

    pair_frame = by_record(pairs)
    candidate_frame = _candidate_pairs(con, prof) if extras.candidates_kept else None
    con.close()
    return LinkResult(
        clusters,
        pair_frame,
        model_json,
        prof.height,
        labels.size,
        match_threshold=float(extras.threshold),
        blocking_rules=["+".join(r) for r in plan.blocking_rules or ()],
        em_sessions=["+".join(r) for r in plan.em_sessions or ()],
        charts=extras.charts,
        review=extras.review,
        candidate_pairs=candidate_frame,
    )
