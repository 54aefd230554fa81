"""``link_tables``: link two or more tables of people, deterministically then with Splink.

1. Deterministic: records sharing an exact trusted id (health number, pupil number, LA child id,
   or any id role) are joined into components (connected components over record-id edges).
2. Each component is reduced to its distinct identity *profiles* (name, date of birth, sex,
   postcode), which shrinks the probabilistic problem by an order of magnitude.
3. Splink (DuckDB backend) scores profile pairs: names with Jaro-Winkler, phonetic (Soundex)
   and term-frequency adjusted levels, dates of birth tolerant of day/month swaps, postcodes,
   sex; u by random sampling, m by expectation maximisation, no labels.
4. Profile pairs at or above the threshold join their components; connected components over
   both kinds of edge give one cluster (person) per record.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ground.db import memory_size, private_dir, quote_column, quote_ident, sql_string
from ground.errors import ConfigError
from linkage.settings import LinkageSettings

log = logging.getLogger(__name__)

PERSON_ROLES = ("first_name", "surname", "date_of_birth", "sex", "postcode")
ID_ROLES = ("nhs_number", "upn", "la_child_id")
ALL_ROLES = ("record_id", *PERSON_ROLES, *ID_ROLES)


@dataclass(frozen=True)
class DuckDBTable:
    """A table of a DuckDB database file, read in place by ``link_tables`` (attached read-only:
    no copy of its identifiers is written anywhere)."""

    database: Path
    table: str


@dataclass
class LinkResult:
    """Scored profile pairs, and one cluster per input record.

    ``clusters``: ``table, record_id, cluster_id, component_id, link_method,
    match_probability``. ``pairs``: ``table_l, record_id_l, table_r, record_id_r,
    match_probability, match_weight`` (representative records of linked profiles).
    """

    clusters: pl.DataFrame
    pairs: pl.DataFrame
    model_json: dict[str, Any]
    profile_count: int
    record_count: int


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


# the same normalisation in DuckDB SQL (ligatures such as "ﬁ" are dropped, not expanded)
NORMALISE_NAME_SQL = "NULLIF(regexp_replace(lower(strip_accents({})), '[^a-z]', '', 'g'), '')"


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
) -> None:
    """Union every input table into ``records`` with one column per role.

    Table names, column names and paths reach SQL only as quoted identifiers, quoted string
    literals or ``?`` parameters.
    """
    parts: list[str] = []
    attached: dict[Path, str] = {}
    for t, frame in tables.items():
        r = roles.get(t)
        if r is None or "record_id" not in r:
            raise ConfigError(f"table {t!r}: roles must name its record_id column")
        unknown = set(r) - set(ALL_ROLES)
        if unknown:
            raise ConfigError(
                f"table {t!r}: unknown role(s) {sorted(unknown)}; allowed: {ALL_ROLES}"
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
        for role in ALL_ROLES:  # role names are this module's constants
            c = r.get(role)
            if c is None:
                cols.append(f"NULL::{'DATE' if role == 'date_of_birth' else 'VARCHAR'} AS {role}")
            elif role == "date_of_birth":
                cols.append(f"TRY_CAST({quote_column(c)} AS DATE) AS {role}")
            else:
                cols.append(f"NULLIF(TRIM(CAST({quote_column(c)} AS VARCHAR)), '') AS {role}")
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


def _deterministic_components(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """Connected components of records joined by any shared exact id."""
    n = con.execute("SELECT count(*) FROM records").fetchone()[0]  # type: ignore[index]
    edges = con.execute(
        " UNION ALL ".join(
            f"SELECT rec, dense_rank() OVER (ORDER BY {r}) - 1 AS id_node, {sql_string(r)} AS kind "
            f"FROM records WHERE {r} IS NOT NULL"
            for r in ID_ROLES
        )
    ).fetchnumpy()
    rec = np.asarray(edges["rec"], dtype=np.int64)
    kind = np.asarray(edges["kind"])
    node = np.asarray(edges["id_node"], dtype=np.int64)
    offset = n
    id_nodes = np.empty_like(node)
    for r in ID_ROLES:
        sel = kind == r
        id_nodes[sel] = node[sel] + offset
        offset += int(node[sel].max()) + 1 if sel.any() else 0
    g = coo_matrix((np.ones(rec.size, np.int8), (rec, id_nodes)), shape=(offset, offset))
    _, labels = connected_components(g, directed=False)
    return labels[:n]


def _dob_comparison() -> Any:
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl

    return cl.CustomComparison(
        output_column_name="date_of_birth",
        comparison_description="date of birth, tolerant of day/month swaps",
        comparison_levels=[
            cll.NullLevel("date_of_birth"),
            cll.ExactMatchLevel("date_of_birth"),
            # dialect-neutral SQL, so the same model runs on DuckDB and on Spark
            cll.CustomLevel(
                "dob_swapped_text_l = dob_text_r", label_for_charts="day and month swapped"
            ),
            cll.LevenshteinLevel("dob_text", 1),
            cll.AbsoluteDateDifferenceLevel(
                "date_of_birth", input_is_string=False, threshold=1, metric="year"
            ),
            cll.ElseLevel(),
        ],
    )


def _across_components(*keys: str) -> Any:
    """A blocking rule (SQL both DuckDB and Spark read): equal keys, different components."""
    from splink.blocking_rule_library import CustomRule

    parts = []
    for k in keys:
        if "(" in k:  # substr(dob_text, 1, 4) -> substr(l.dob_text, 1, 4)
            fn, rest = k.split("(", 1)
            parts.append(f"{fn}(l.{rest} = {fn}(r.{rest}")
        else:
            parts.append(f"l.{k} = r.{k}")
    return CustomRule(" AND ".join([*parts, "l.component <> r.component"]))


def splink_settings(threshold_blocking: bool = True) -> Any:
    """The Splink model: comparisons and blocking rules used for prediction."""
    import splink.comparison_library as cl
    from splink import SettingsCreator

    return SettingsCreator(
        link_type="dedupe_only",
        unique_id_column_name="profile_id",
        comparisons=[
            cl.NameComparison("first_name", dmeta_col_name="first_name_phonetic").configure(
                term_frequency_adjustments=True
            ),
            cl.NameComparison("surname", dmeta_col_name="surname_phonetic").configure(
                term_frequency_adjustments=True
            ),
            _dob_comparison(),
            cl.PostcodeComparison("postcode"),
            cl.ExactMatch("sex"),
        ],
        # pairs inside one deterministic component are already linked: never scored
        blocking_rules_to_generate_predictions=[
            _across_components("date_of_birth", "surname"),
            _across_components("date_of_birth", "first_name"),
            _across_components("date_of_birth", "postcode"),
            _across_components("first_name", "surname", "postcode"),
            _across_components("first_name", "surname", "substr(dob_text, 1, 4)", "sex"),
        ],
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,
    )


def _profiles(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Distinct identity profiles per deterministic component."""
    prof = con.sql(
        """SELECT DISTINCT component, first_name, surname, date_of_birth, sex, postcode
           FROM records_norm
           WHERE first_name IS NOT NULL OR surname IS NOT NULL OR date_of_birth IS NOT NULL
           ORDER BY component, first_name NULLS FIRST, surname NULLS FIRST,
                    date_of_birth NULLS FIRST, sex NULLS FIRST, postcode NULLS FIRST"""
    ).pl()
    # phonetic codes computed once per distinct name, not once per profile
    names = pl.concat([prof["first_name"], prof["surname"]]).drop_nulls().unique().sort()
    codes = pl.DataFrame(
        {"name": names, "code": [[_soundex(n)] for n in names.to_list()]},
        schema={"name": pl.String, "code": pl.List(pl.String)},
    )
    prof = (
        prof.join(
            codes.rename({"name": "first_name", "code": "first_name_phonetic"}),
            on="first_name",
            how="left",
            maintain_order="left",
        )
        .join(
            codes.rename({"name": "surname", "code": "surname_phonetic"}),
            on="surname",
            how="left",
            maintain_order="left",
        )
        .with_columns(
            profile_id=pl.int_range(pl.len(), dtype=pl.Int64),
            dob_text=pl.col("date_of_birth").dt.strftime("%Y%m%d"),
            dob_swapped_text=pl.col("date_of_birth").dt.strftime("%Y%d%m"),
        )
    )
    return prof.select(
        "component",
        "first_name",
        "surname",
        "date_of_birth",
        "sex",
        "postcode",
        "profile_id",
        "dob_text",
        "dob_swapped_text",
        "first_name_phonetic",
        "surname_phonetic",
    )


def _train_or_load(linker: Any, settings: LinkageSettings, n_profiles: int) -> None:
    from splink import block_on

    if settings.model_path:
        return
    linker.training.estimate_probability_two_random_records_match(
        [block_on("first_name", "surname", "date_of_birth")], recall=settings.prior_recall
    )
    linker.training.estimate_u_using_random_sampling(
        max_pairs=settings.u_max_pairs, seed=settings.seed
    )
    # EM needs blocked pairs among which true matches are common. On a date of birth alone (or
    # a full name alone) matches are ~1% of pairs at 100k children and ~0.1% at a million, where
    # EM settled on a wrong solution (date-of-birth agreement m = 0.003 at 1M). Rules on two or
    # three fields keep the share of matches high at any scale; three sessions estimate every
    # comparison (Splink averages a comparison's m over the sessions that estimate it).
    # Blocked pairs are sampled down to em_max_pairs; the probe sizing the sample sees every
    # profile on small data and a sample on large data.
    probe = min(1.0, settings.em_probe_profiles / max(n_profiles, 1))
    for rule in (
        block_on("date_of_birth", "first_name"),  # estimates surname, postcode, sex
        block_on("date_of_birth", "surname"),  # first name, postcode, sex
        # same full name AND full postcode: 96% share a date of birth at 1M children, where
        # same name and postcode district shared it in only 7% (common Welsh names)
        block_on("first_name", "surname", "postcode"),  # date of birth, sex
    ):
        linker.training.estimate_parameters_using_expectation_maximisation(
            rule, max_pairs=settings.em_max_pairs, record_sample_proportion=probe
        )


def load_model(path: str | Path, dialect: str) -> dict[str, Any]:
    """A saved Splink model, expressed in ``dialect`` ("duckdb" or "spark").

    A model trained on one backend carries that backend's SQL. The comparisons are this
    module's (``splink_settings``), so the same trained parameters (m and u per level, the
    prior) are copied onto the comparisons rendered for the other backend.
    """
    import json

    from splink import SettingsCreator

    try:
        source = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"linkage model {path}: cannot read a Splink model JSON ({e})") from e
    if source.get("sql_dialect") == dialect:
        return dict(source)
    creator = splink_settings()
    assert isinstance(creator, SettingsCreator)
    target = creator.get_settings(dialect).as_dict()
    src_comps, dst_comps = source.get("comparisons", []), target["comparisons"]
    shape_src = [len(c["comparison_levels"]) for c in src_comps]
    shape_dst = [len(c["comparison_levels"]) for c in dst_comps]
    if shape_src != shape_dst:
        raise ConfigError(
            f"linkage model {path}: its comparisons (levels {shape_src}) are not this "
            f"pipeline's (levels {shape_dst}); retrain without model_path"
        )
    for src, dst in zip(src_comps, dst_comps, strict=True):
        for ls, ld in zip(src["comparison_levels"], dst["comparison_levels"], strict=True):
            for key in ("m_probability", "u_probability"):
                if key in ls:
                    ld[key] = ls[key]
    target["probability_two_random_records_match"] = source["probability_two_random_records_match"]
    return dict(target)


def _score_on_duckdb(
    con: duckdb.DuckDBPyConnection, prof: pl.DataFrame, settings: LinkageSettings
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Train (or load) the Splink model and score profile pairs on DuckDB."""
    from splink import DuckDBAPI, Linker

    if settings.deterministic:
        # one thread while training: floating-point sums in EM happen in a fixed order, so the
        # trained model is byte-identical on a rerun
        con.execute("SET threads = 1")
    db_api = DuckDBAPI(con)
    sdf = db_api.register(prof, dataset_display_name="profiles")
    model: Any = load_model(settings.model_path, "duckdb") if settings.model_path else None
    linker = Linker(sdf, model or splink_settings(), log_level=logging.WARNING)
    _train_or_load(linker, settings, prof.height)
    # scoring is per pair (no floating-point sums across rows), so it may use every core and
    # still give identical probabilities; the output is sorted below
    con.execute("SET threads = ?", [int(settings.duckdb_threads or os.cpu_count() or 1)])
    predictions = linker.inference.predict(
        threshold_match_probability=min(0.5, settings.match_threshold)
    )
    pairs = con.sql(
        "SELECT profile_id_l, profile_id_r, match_probability, match_weight "
        f"FROM {quote_ident(predictions.physical_name)} ORDER BY profile_id_l, profile_id_r"
    ).pl()
    model_json = linker.misc.save_model_to_json()
    model_json.pop("linker_uid", None)  # random per session; dropped so reruns are byte-identical
    return pairs, model_json


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
    prof: pl.DataFrame, settings: LinkageSettings, temp_directory: str | Path | None
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Train (or load) the same Splink model and score profile pairs on Spark."""
    from splink import Linker
    from splink.backends.spark import SparkAPI

    spark = spark_session(settings, temp_directory)
    db_api = SparkAPI(
        spark_session=spark, num_partitions_on_repartition=settings.spark_shuffle_partitions
    )
    frame = spark.createDataFrame(prof.to_arrow())
    sdf = db_api.register(frame, dataset_display_name="profiles")
    model: Any = load_model(settings.model_path, "spark") if settings.model_path else None
    linker = Linker(sdf, model or splink_settings(), log_level=logging.WARNING)
    _train_or_load(linker, settings, prof.height)
    predictions = linker.inference.predict(
        threshold_match_probability=min(0.5, settings.match_threshold)
    )
    table = (
        predictions.as_spark_dataframe()
        .select("profile_id_l", "profile_id_r", "match_probability", "match_weight")
        .orderBy("profile_id_l", "profile_id_r")
        .toArrow()
    )
    pairs = pl.from_arrow(table)
    assert isinstance(pairs, pl.DataFrame)
    model_json = linker.misc.save_model_to_json()
    model_json.pop("linker_uid", None)
    return pairs, model_json


def link_tables(
    tables: Mapping[str, Any],
    roles: Mapping[str, Mapping[str, str]],
    *,
    settings: LinkageSettings | None = None,
    memory_limit: str | None = None,
    temp_directory: str | Path | None = None,
) -> LinkResult:
    """Link two or more tables of person records into clusters (one per person).

    Parameters
    ----------
    tables
        ``{table_name: frame}``; a frame is a polars / pandas DataFrame, a pyarrow Table, a
        :class:`DuckDBTable` (a table of a DuckDB file, read in place: the least memory and
        no copy on disk), or the path of a Parquet file.
    roles
        ``{table_name: {role: column}}`` with roles from ``record_id`` (required),
        ``first_name``, ``surname``, ``date_of_birth``, ``sex``, ``postcode``, and the exact ids
        ``nhs_number``, ``upn``, ``la_child_id``.
    settings
        Thresholds and training limits; ``settings.model_path`` reuses a saved Splink model.

    Returns
    -------
    LinkResult
        ``clusters`` (one row per input record) and ``pairs`` (scored profile pairs).
    """
    settings = settings or LinkageSettings()
    if len(tables) < 1:
        raise ConfigError("link_tables needs at least one table")
    limit = memory_size(memory_limit or settings.duckdb_memory_limit, key="duckdb_memory_limit")
    con = duckdb.connect()
    con.execute("SET memory_limit = ?", [limit])
    con.execute("SET threads = 2")
    if temp_directory:
        con.execute("SET temp_directory = ?", [str(private_dir(Path(temp_directory)))])
    _records(con, tables, roles)
    labels = _deterministic_components(con)
    con.register(
        "component_labels", pl.DataFrame({"rec": np.arange(labels.size), "component": labels})
    )
    con.execute(
        f"""CREATE OR REPLACE TABLE records_norm AS
        SELECT r.rec, r.tbl, r.record_id, c.component,
               {NORMALISE_NAME_SQL.format("r.first_name")} AS first_name,
               {NORMALISE_NAME_SQL.format("r.surname")} AS surname,
               r.date_of_birth, upper(r.sex) AS sex, upper(trim(r.postcode)) AS postcode
        FROM records r JOIN component_labels c USING (rec)
        ORDER BY r.rec"""
    )
    con.execute("DROP TABLE records")
    con.unregister("component_labels")
    prof = _profiles(con)
    log.info(
        "linkage: %d records, %d components, %d profiles",
        labels.size,
        int(np.unique(labels).size),
        prof.height,
    )
    if settings.backend == "spark":
        pairs, model_json = _score_on_spark(prof, settings, temp_directory)
    else:
        pairs, model_json = _score_on_duckdb(con, prof, settings)
    comp_of = prof["component"].to_numpy()
    pl_ = pairs["profile_id_l"].to_numpy()
    pr_ = pairs["profile_id_r"].to_numpy()
    prob = pairs["match_probability"].to_numpy()
    keep = (prob >= settings.match_threshold) & (comp_of[pl_] != comp_of[pr_])
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
    left = rep_of.gather(comp_of[pl_]).str.splitn("|", 2)
    right = rep_of.gather(comp_of[pr_]).str.splitn("|", 2)
    pair_frame = pl.DataFrame(
        {
            "match_probability": prob,
            "match_weight": pairs["match_weight"].to_numpy(),
            "table_l": left.struct.field("field_0"),
            "record_id_l": left.struct.field("field_1"),
            "table_r": right.struct.field("field_0"),
            "record_id_r": right.struct.field("field_1"),
        }
    )
    con.close()
    return LinkResult(clusters, pair_frame, model_json, prof.height, labels.size)
