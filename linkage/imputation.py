"""Multiple linkage imputation: plausible link sets drawn from the scored pairs' probabilities.

The linker keeps one link set: profile pairs at or above the threshold join their
deterministic components. That treats every link as certain and every pair below the
threshold as certainly not a match. Following Goldstein, Harron and Wade (2012, "The analysis
of record-linked data using multiple imputation with data value priors") and Harron et al.'s
later work, each *draw* here is one plausible link set in which every scored pair of
components is linked with its match probability, so the uncertainty of the links reaches the
estimates when the later stages are run once per draw and pooled with Rubin's rules
(:mod:`models.pooling`).

How one draw is made (:func:`draw_record_person`), on the deterministic components (records
joined by an exact NHS number, UPN or authority child id, which stay joined in every draw):

* **one register person per record group, where that holds**: a component with no
  population-register record (the records of one child in one health, school or care source)
  belongs to at most one person of the register. Among its scored pairs with register-holding
  components it links to candidate ``j`` with probability ``p_j`` (scaled down so they sum to
  at most 1), and to none with the rest;
* every other scored pair (two components both holding register rows: one child's register
  rows without an NHS number; or two components neither of which does) is linked
  independently with its probability;
* people are the connected components over the drawn edges, as in the linker.

Only the pairs the linker scored and kept are candidates: Splink's predictions are stored from
a match probability of 0.5 (``linkage.link._predict``), so a true pair scored below 0.5, or
never blocked together (a health record with no NHS number and a postcode no register row
has), is missed in every draw. Multiple linkage imputation carries the uncertainty *among the
scored candidates* into the intervals; it cannot recover links the blocking never proposed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ground.db import quote_ident
from ground.errors import CohortError
from ground.run_layout import RunLayout
from linkage.pipeline import write_analysis_zone
from linkage.pseudonym import pseudonymise
from linkage.settings import LinkageSettings
from schemas.contracts import SOURCES


class LinkDrawError(CohortError):
    """The linkage zone has no scored pairs or record clusters to draw link sets from."""


@dataclass(frozen=True)
class CandidateLinks:
    """The linkage zone reduced to what draws need (record ids only, no identifiers).

    ``records``: ``source, record_id, component`` (component: 0..n_components-1);
    ``edges``: component pairs ``a < b`` with the highest probability of their profile pairs;
    ``spine``: whether a component holds a population-register record."""

    records: pl.DataFrame
    edge_a: np.ndarray
    edge_b: np.ndarray
    edge_p: np.ndarray
    spine: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.spine.size)


def load_candidates(
    con: duckdb.DuckDBPyConnection, spine_source: str = "population_register"
) -> CandidateLinks:
    """Read ``linkage.record_person`` and ``linkage.scored_pairs`` (a linkage-zone connection)."""
    tables = {
        r[0]
        for r in con.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
        ).fetchall()
    }
    for t in ("linkage.record_person", "linkage.scored_pairs"):
        if t not in tables:
            raise LinkDrawError(f"the linkage zone has no {t}: run `cohort link` first")
    rec = con.sql(
        """SELECT source, record_id,
                  CAST(dense_rank() OVER (ORDER BY component_id) - 1 AS BIGINT) AS component
           FROM linkage.record_person ORDER BY source, record_id"""
    ).pl()
    if rec.height == 0:
        raise LinkDrawError("linkage.record_person is empty: nothing to draw")
    n = int(rec["component"].max()) + 1  # type: ignore[arg-type]
    con.register("rec_frame", rec)
    try:
        pairs = con.sql(
            """SELECT least(l.component, r.component) AS a, greatest(l.component, r.component) AS b,
                      max(s.match_probability) AS p
               FROM linkage.scored_pairs s
               JOIN rec_frame l ON l.source = s.table_l AND l.record_id = s.record_id_l
               JOIN rec_frame r ON r.source = s.table_r AND r.record_id = s.record_id_r
               WHERE l.component <> r.component
               GROUP BY 1, 2 ORDER BY 1, 2"""
        ).pl()
    finally:
        con.unregister("rec_frame")
    spine = np.zeros(n, bool)
    spine[rec.filter(pl.col("source") == spine_source)["component"].to_numpy()] = True
    return CandidateLinks(
        records=rec,
        edge_a=pairs["a"].to_numpy().astype(np.int64),
        edge_b=pairs["b"].to_numpy().astype(np.int64),
        edge_p=np.clip(pairs["p"].to_numpy().astype(np.float64), 0.0, 1.0),
        spine=spine,
    )


def draw_edges(c: CandidateLinks, rng: np.random.Generator) -> np.ndarray:
    """One plausible link set: a boolean per candidate edge (see the module docstring)."""
    a, b, p = c.edge_a, c.edge_b, c.edge_p
    keep = rng.random(p.size) < p  # independent draws (used where no constraint applies)
    # edges from a component without register rows to one with: at most one per such component
    sa, sb = c.spine[a], c.spine[b]
    to_spine = sa != sb
    if to_spine.any():
        idx = np.flatnonzero(to_spine)
        satellite = np.where(sa[idx], b[idx], a[idx])
        order = np.lexsort((idx, satellite))
        idx, satellite = idx[order], satellite[order]
        first = np.r_[True, satellite[1:] != satellite[:-1]]
        group = np.cumsum(first) - 1
        total = np.bincount(group, weights=p[idx])
        scale = np.maximum(total, 1.0)  # probabilities summing above 1 are scaled to sum 1
        share = p[idx] / scale[group]
        upper = np.cumsum(share)
        start = np.r_[0.0, upper][np.flatnonzero(first)]  # cumulative share before each group
        upper = upper - start[group]
        lower = upper - share
        u = rng.random(int(group[-1]) + 1)[group]
        keep[idx] = (u >= lower) & (u < upper)
    return keep


def clusters_of(c: CandidateLinks, keep: np.ndarray) -> np.ndarray:
    """The person (connected component over the kept edges) of each component."""
    n = c.n_components
    g = coo_matrix(
        (np.ones(int(keep.sum()), np.int8), (c.edge_a[keep], c.edge_b[keep])), shape=(n, n)
    )
    return connected_components(g, directed=False)[1]


def record_person_for(c: CandidateLinks, keep: np.ndarray, secret: bytes) -> pl.DataFrame:
    """``linkage.record_person`` of one link set: the columns ``write_analysis_zone`` reads
    (``source, record_id, person_id, person_key, component_id, link_method,
    match_probability``), with the person id and key made as the linker makes them."""
    cluster = clusters_of(c, keep)
    best = np.zeros(c.n_components)
    np.maximum.at(best, c.edge_a[keep], c.edge_p[keep])
    np.maximum.at(best, c.edge_b[keep], c.edge_p[keep])
    comp = c.records["component"].to_numpy()
    rec_cluster = cluster[comp]
    cluster_size = np.bincount(rec_cluster)[rec_cluster]
    comp_size = np.bincount(comp)[comp]
    method = np.where(
        best[comp] > 0, "probabilistic", np.where(comp_size > 1, "deterministic", "unlinked")
    )
    method = np.where(cluster_size == 1, "unlinked", method)
    prob = np.where(
        method == "probabilistic", best[comp], np.where(method == "deterministic", 1.0, np.nan)
    )
    out = c.records.with_columns(
        cluster=pl.Series(rec_cluster, dtype=pl.Int64),
        link_method=pl.Series(method),
        match_probability=pl.Series(prob).fill_nan(None),
    ).with_columns(person_id=(pl.col("source") + "|" + pl.col("record_id")).min().over("cluster"))
    return _keyed_record_person(out, secret)


def _keyed_record_person(out: pl.DataFrame, secret: bytes) -> pl.DataFrame:
    """``out`` (source, record_id, person_id, component, link_method, match_probability) as a
    ``record_person`` table: each person id keyed with ``secret``."""
    ids = out["person_id"].unique().sort()
    keys = pl.DataFrame({"person_id": ids, "person_key": pseudonymise(ids.to_list(), secret)})
    return out.join(keys, on="person_id").select(
        "source",
        "record_id",
        "person_id",
        "person_key",
        pl.col("component").alias("component_id"),
        "link_method",
        "match_probability",
    )


def draw_record_person(c: CandidateLinks, rng: np.random.Generator, secret: bytes) -> pl.DataFrame:
    """One multiply-imputed link set as a ``record_person`` table."""
    return record_person_for(c, draw_edges(c, rng), secret)


def true_record_person(records: pl.DataFrame, truth: pl.DataFrame, secret: bytes) -> pl.DataFrame:
    """``record_person`` from a known truth (``source, record_id, person_id``; the synthetic
    world's ``truth/record_person.parquet``): every record linked to its real person. A staged
    record the truth does not know (none expected) stays a person of its own."""
    t = truth.select("source", "record_id", pl.col("person_id").cast(pl.String))
    out = (
        records.select("source", "record_id", "component")
        .join(t, on=["source", "record_id"], how="left")
        .with_columns(
            person_id=pl.coalesce(
                "truth|" + pl.col("person_id"), pl.col("source") + "|" + pl.col("record_id")
            )
        )
    )
    return _keyed_record_person(
        out.with_columns(link_method=pl.lit("truth"), match_probability=pl.lit(1.0)), secret
    )


def write_link_set_zone(
    linkage_db: Path,
    record_person: pl.DataFrame,
    layout: RunLayout,
    settings: LinkageSettings | None = None,
) -> None:
    """Write ``layout``'s analysis zone as the linkage stage does, but from the link set
    ``record_person`` (a draw, or the truth) instead of the linker's. The run's linkage zone
    is only read (attached read-only); the staged sources are read through views."""
    layout.ensure()
    con = duckdb.connect()
    try:
        con.execute("ATTACH ? AS lz (READ_ONLY)", [str(linkage_db)])
        con.execute("CREATE SCHEMA staging")
        for name in SOURCES:
            con.execute(
                f"CREATE VIEW staging.{quote_ident(name)} AS "
                f"SELECT * FROM lz.staging.{quote_ident(name)}"
            )
        con.execute("CREATE SCHEMA linkage")
        con.register("record_person_frame", record_person)
        con.execute(
            "CREATE TABLE linkage.record_person AS SELECT * FROM record_person_frame "
            "ORDER BY source, record_id"
        )
        con.unregister("record_person_frame")
        write_analysis_zone(con, layout, settings or LinkageSettings())
    finally:
        con.close()
