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
  components it links to candidate ``j`` with probability ``p_j`` where they sum to at most
  1 (to none with the rest), and with ``o_j / (1 + sum o)``, ``o = p / (1 - p)``, where they
  sum above 1 (:func:`satellite_shares`);
* every other scored pair (two components both holding register rows: one child's register
  rows without an NHS number; or two components neither of which does) is linked
  independently with its probability;
* people are the connected components over the drawn edges, as in the linker.

Candidates are the pairs the linker scored from 0.5 (``linkage.scored_pairs``) and, when the
linkage stage keeps them (``LinkageSettings.candidate_floor`` set, e.g. 0.001; off by default),
``linkage.candidate_pairs``: pairs scored from that floor up to 0.5, and pairs only the plan's candidate
rules propose (``linkage.link.PIPELINE_PLAN``: date of birth + sex for a record with no name,
such as a health record with no NHS number and a placement postcode, which no usual rule
pairs with its child). A candidate-rule pair is kept only from a record group without a
register person to a register group. Splink's probabilities are not calibrated on these data,
so draws use probabilities recalibrated on a labelled review sample (:class:`LinkCalibration`,
:func:`review_sample`) when labels are given, by stratum: among them the register child's care
on the health record's date (:func:`_care_then`), which is what tells a nameless record at a
placement address from the other children born that day in the area. A true pair never
scored at all (a date of birth wrong too) is still missed in every draw.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise
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
    ``edges``: component pairs ``a < b`` with the highest probability and match weight of
    their profile pairs (``edge_p``, ``edge_w``), and the features the calibration reads
    (:data:`FEATURES`): ``edge_candidate_rule`` (only a candidate rule proposed the pair: no
    usual blocking rule did), ``edge_looked_after`` (either side holds a looked-after episode),
    ``edge_unknown_postcode`` (either side holds a record whose postcode no register row
    holds, such as a placement address), ``edge_care_then`` (:func:`_care_then`: whether
    the register side's child, as the linker linked it, was looked after on the date of a
    hospital admission or emergency attendance of the other side, or had left care by then:
    a nameless record at a placement address points to a child in care that day, or to one
    who was before); ``spine``: whether a component holds a population-register record;
    ``rep_l, rep_r``: each edge's representative records (``source|record_id``), by which
    clerical reviewers' labels are matched."""

    records: pl.DataFrame
    edge_a: np.ndarray
    edge_b: np.ndarray
    edge_p: np.ndarray
    spine: np.ndarray
    edge_w: np.ndarray | None = None
    edge_candidate_rule: np.ndarray | None = None
    edge_looked_after: np.ndarray | None = None
    edge_unknown_postcode: np.ndarray | None = None
    edge_care_then: np.ndarray | None = None

    @property
    def n_components(self) -> int:
        return int(self.spine.size)

    def strata(self) -> np.ndarray:
        """Each edge's calibration stratum, one row of :data:`STRATA` per edge: whether only a
        candidate rule proposed it, whether a side is looked after, whether a side has an
        unknown postcode, the register side's care on a health record's date
        (:func:`_care_then`), and its match-weight band (:data:`WEIGHT_BANDS`)."""
        n = self.edge_p.size

        def flag(x: np.ndarray | None) -> np.ndarray:
            return np.zeros(n, np.int64) if x is None else x.astype(np.int64)

        return np.column_stack(
            [
                flag(self.edge_candidate_rule),
                flag(self.edge_looked_after),
                flag(self.edge_unknown_postcode),
                flag(self.edge_care_then),
                np.digitize(self.weights(), WEIGHT_BANDS),
            ]
        )

    def weights(self) -> np.ndarray:
        """Match weights (log2 Bayes factor with the prior); from the probabilities where the
        zone kept none."""
        if self.edge_w is not None:
            return self.edge_w
        p = np.clip(self.edge_p, 1e-12, 1 - 1e-12)
        return np.log2(p / (1 - p))

    def with_probabilities(self, p: np.ndarray) -> CandidateLinks:
        """The same candidates with the draw probability of each edge replaced."""
        return replace(self, edge_p=np.clip(p, 0.0, 1.0))


#: the calibration's strata (columns of ``CandidateLinks.strata``) and match-weight bands
STRATA = ("candidate_rule", "looked_after", "unknown_postcode", "care_then", "weight_band")
WEIGHT_BANDS = (-10.0, -7.0, -5.0, -3.0, -1.0, 0.0, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0)

LOOKED_AFTER_SOURCE = "looked_after_episodes"
#: the health sources whose records carry a date a child in care can be placed on, and its column
HEALTH_RECORD_DATES = {
    "hospital_admissions": "admission_date",
    "emergency_department": "arrival_date",
}


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {
        r[0]
        for r in con.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
        ).fetchall()
    }


def _unknown_postcode_components(
    con: duckdb.DuckDBPyConnection, rec: pl.DataFrame, spine_source: str
) -> np.ndarray:
    """Per component: whether it holds a record whose postcode (upper case, no spaces) no
    record of the register holds. Postcodes are read and compared inside the linkage zone;
    only the flag leaves it."""
    n = int(rec["component"].max()) + 1  # type: ignore[arg-type]
    out = np.zeros(n, bool)
    with_postcode = {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = 'staging' AND column_name = 'postcode'"
        ).fetchall()
    }
    if spine_source not in with_postcode:
        return out
    norm = "upper(replace(CAST(postcode AS VARCHAR), ' ', ''))"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE register_postcodes AS SELECT DISTINCT {norm} AS pc "
        f"FROM staging.{quote_ident(spine_source)} WHERE postcode IS NOT NULL"
    )
    con.register("rec_frame", rec)
    try:
        for source in sorted(with_postcode - {spine_source}):
            comps = con.execute(
                f"""SELECT DISTINCT f.component
                    FROM staging.{quote_ident(source)} s
                    JOIN rec_frame f ON f.source = ? AND f.record_id = CAST(s.record_id AS VARCHAR)
                    WHERE s.postcode IS NOT NULL
                      AND {norm} NOT IN (SELECT pc FROM register_postcodes)""",
                [source],
            ).fetchnumpy()["component"]
            out[np.asarray(comps, dtype=np.int64)] = True
    finally:
        con.unregister("rec_frame")
        con.execute("DROP TABLE register_postcodes")
    return out


def _care_then(
    con: duckdb.DuckDBPyConnection,
    rec: pl.DataFrame,
    a: np.ndarray,
    b: np.ndarray,
    spine: np.ndarray,
    spine_source: str,
) -> np.ndarray:
    """Per edge from a record group without a register record to one with, the register
    group's child's care on the dates of the other group's hospital admissions and emergency
    attendances: 1 looked after on one of those dates; else 2 had left care before one of
    them; else 0 (not yet or never looked after). The child is the register group's person
    as the linker linked it, so the care episodes the linker joined to it count. Dates are
    compared inside the linkage zone; only the code leaves it."""
    out = np.zeros(a.size, np.int8)
    tables = _tables(con)
    health = [s for s in sorted(HEALTH_RECORD_DATES) if f"staging.{s}" in tables]
    if f"staging.{LOOKED_AFTER_SOURCE}" not in tables or not health:
        return out
    to_spine = np.flatnonzero(spine[a] != spine[b])
    if to_spine.size == 0:
        return out
    edges = pl.DataFrame(
        {
            "edge": to_spine,
            "satellite": np.where(spine[a[to_spine]], b[to_spine], a[to_spine]),
            "register": np.where(spine[a[to_spine]], a[to_spine], b[to_spine]),
        }
    )
    dated = " UNION ALL ".join(
        f"""SELECT f.component, CAST(s.{quote_ident(HEALTH_RECORD_DATES[source])} AS DATE) AS day
            FROM staging.{quote_ident(source)} s
            JOIN rec_frame f ON f.source = ? AND f.record_id = CAST(s.record_id AS VARCHAR)"""
        for source in health
    )
    con.register("rec_frame", rec.select("source", "record_id", "component"))
    con.register("edge_frame", edges)
    try:
        found = con.execute(
            f"""WITH dated AS ({dated}),
                register_person AS (
                    SELECT DISTINCT f.component, r.person_id
                    FROM linkage.record_person r
                    JOIN rec_frame f ON f.source = r.source AND f.record_id = r.record_id
                    WHERE r.source = ?),
                care AS (
                    SELECT r.person_id, CAST(s.episode_start AS DATE) AS start,
                           coalesce(CAST(s.episode_end AS DATE), DATE '9999-12-31') AS stop
                    FROM staging.{quote_ident(LOOKED_AFTER_SOURCE)} s
                    JOIN linkage.record_person r
                      ON r.source = ? AND r.record_id = CAST(s.record_id AS VARCHAR))
                SELECT e.edge,
                       CASE WHEN bool_or(d.day BETWEEN c.start AND c.stop) THEN 1 ELSE 2 END
                           AS code
                FROM edge_frame e
                JOIN register_person rp ON rp.component = e.register
                JOIN care c ON c.person_id = rp.person_id
                JOIN dated d ON d.component = e.satellite
                WHERE d.day >= c.start
                GROUP BY e.edge""",
            [*health, spine_source, LOOKED_AFTER_SOURCE],
        ).fetchnumpy()
    finally:
        con.unregister("edge_frame")
        con.unregister("rec_frame")
    out[np.asarray(found["edge"], dtype=np.int64)] = np.asarray(found["code"], dtype=np.int8)
    return out


def load_candidates(
    con: duckdb.DuckDBPyConnection, spine_source: str = "population_register"
) -> CandidateLinks:
    """Read ``linkage.record_person``, ``linkage.scored_pairs`` and, when the linkage stage
    kept them, ``linkage.candidate_pairs`` (the pairs below the linker's floor and those only
    the candidate rules propose) from a linkage-zone connection."""
    tables = _tables(con)
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
    if "linkage.candidate_pairs" in tables:
        _require_component_pairs(con)
    # every scored pair as a pair of record groups (dense component numbers): the linker's
    # pairs are stored by representative record, the kept candidates by component id
    candidates = (
        """UNION ALL
        SELECT l.component, r.component, k.match_probability, k.match_weight, k.candidate_rule
        FROM linkage.candidate_pairs k
        JOIN groups l ON l.component_id = k.component_id_l
        JOIN groups r ON r.component_id = k.component_id_r"""
        if "linkage.candidate_pairs" in tables
        else ""
    )
    con.register("rec_frame", rec)
    try:
        pairs = con.sql(
            f"""WITH groups AS (
                   SELECT DISTINCT component_id,
                          CAST(dense_rank() OVER (ORDER BY component_id) - 1 AS BIGINT)
                              AS component
                   FROM linkage.record_person),
               by_group AS (
                   SELECT l.component AS cl, r.component AS cr, s.match_probability,
                          s.match_weight, false AS candidate_rule
                   FROM linkage.scored_pairs s
                   JOIN rec_frame l ON l.source = s.table_l AND l.record_id = s.record_id_l
                   JOIN rec_frame r ON r.source = s.table_r AND r.record_id = s.record_id_r
                   {candidates})
               SELECT least(cl, cr) AS a, greatest(cl, cr) AS b,
                      max(match_probability) AS p, max(match_weight) AS w,
                      bool_and(candidate_rule) AS candidate_rule
               FROM by_group WHERE cl <> cr
               GROUP BY 1, 2 ORDER BY 1, 2"""
        ).pl()
    finally:
        con.unregister("rec_frame")
    spine = np.zeros(n, bool)
    spine[rec.filter(pl.col("source") == spine_source)["component"].to_numpy()] = True
    care = np.zeros(n, bool)
    care[rec.filter(pl.col("source") == LOOKED_AFTER_SOURCE)["component"].to_numpy()] = True
    unknown = _unknown_postcode_components(con, rec, spine_source)
    a = pairs["a"].to_numpy().astype(np.int64)
    b = pairs["b"].to_numpy().astype(np.int64)
    # A candidate rule proposes a register person for a record group without one (a health
    # record with no NHS number). Its other pairs are dropped: two register persons (a
    # register group also holds its children's nameless health records, so the rule pairs
    # those with every other child born that day: never a match on these worlds, yet drawn
    # independently they merged two children), and a school or care group of a child whose
    # register group is itself a candidate (drawn independently of that choice, they joined
    # one child's records to another).
    to_spine = spine[a] != spine[b]
    kept = ~pairs["candidate_rule"].to_numpy().astype(bool) | to_spine
    pairs, a, b = pairs.filter(pl.Series(kept)), a[kept], b[kept]
    return CandidateLinks(
        records=rec,
        edge_a=a,
        edge_b=b,
        edge_p=np.clip(pairs["p"].to_numpy().astype(np.float64), 0.0, 1.0),
        spine=spine,
        edge_w=pairs["w"].to_numpy().astype(np.float64),
        edge_candidate_rule=pairs["candidate_rule"].to_numpy().astype(bool),
        edge_looked_after=care[a] | care[b],
        edge_unknown_postcode=unknown[a] | unknown[b],
        edge_care_then=_care_then(con, rec, a, b, spine, spine_source),
    )


def _require_component_pairs(con: duckdb.DuckDBPyConnection) -> None:
    """A clear error for a linkage zone whose ``linkage.candidate_pairs`` names records (the
    layout before 2026-12-03) rather than record groups."""
    cols = {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'linkage' AND table_name = 'candidate_pairs'"
        ).fetchall()
    }
    if not {"component_id_l", "component_id_r"} <= cols:
        raise LinkDrawError(
            "linkage.candidate_pairs names records (the layout before 2026-12-03), not record "
            "groups: relink the run with `cohort link` (candidate_floor set) and try again"
        )


# ---------------------------------------------------------------- calibration


@dataclass(frozen=True)
class LinkCalibration:
    """Draw probabilities recalibrated on a labelled sample of candidate pairs.

    Splink's match probabilities are not calibrated on these data (they assume the
    comparisons independent given match status, and one prior for every pair; docs/
    linkage_error.md has the bins). Within each group of the first four :data:`STRATA`
    (candidate rule, looked after, unknown postcode, care on the record's date), the labelled
    share of true matches by match-weight band is made non-decreasing in the band
    (pool-adjacent-violators, weighted by the labels), which borrows strength between
    neighbouring bands; that is the stratum's calibrated share, and every pair of the stratum
    keeps its rank by Splink (``logit p`` moved by the stratum's ``offset``). A stratum
    without labels keeps Splink's probabilities. ``table``: one row per labelled stratum
    (``STRATA`` columns, ``labelled, matches, splink, calibrated, offset``)."""

    table: pl.DataFrame
    labelled: int

    def probabilities(self, c: CandidateLinks) -> np.ndarray:
        key = pl.DataFrame(c.strata(), schema=list(STRATA), orient="row")
        offset = key.join(
            self.table.select(*STRATA, "offset"), on=list(STRATA), how="left", maintain_order="left"
        )["offset"].fill_null(0.0)
        return _expit(_logit(c.edge_p) + offset.to_numpy())

    def to_json(self) -> dict[str, object]:
        return {"labelled": self.labelled, "strata": self.table.to_dicts()}


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-9, 1 - 1e-9)
    return np.asarray(np.log(q / (1 - q)))


def _expit(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(x, -40, 40))))


def review_sample(c: CandidateLinks, n: int, rng: np.random.Generator) -> np.ndarray:
    """Edges to label by clerical review (indices into the edges): up to ``n``, spread evenly
    over the calibration's strata (:data:`STRATA`), so that the rare strata the draws depend
    on are labelled too."""
    _, stratum = np.unique(c.strata(), axis=0, return_inverse=True)
    stratum = stratum.ravel()
    counts = np.bincount(stratum)
    take = np.zeros(counts.size, np.int64)
    left = min(n, stratum.size)
    while left > 0:  # equal shares, capped by each stratum's size
        open_ = np.flatnonzero(take < counts)
        if left < open_.size:
            add = np.zeros(open_.size, np.int64)
            add[rng.choice(open_.size, left, replace=False)] = 1
        else:
            add = np.minimum(counts[open_] - take[open_], left // open_.size)
        take[open_] += add
        left -= int(add.sum())
    order = rng.permutation(stratum.size)
    by_stratum = stratum[order]
    picked = [order[by_stratum == s_][: take[s_]] for s_ in np.flatnonzero(take)]
    return np.sort(np.concatenate(picked)) if picked else np.array([], np.int64)


def _increasing(share: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-decreasing fit of ``share`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, w in zip(share, weight, strict=True):
        blocks.append([float(v), float(w), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.repeat([b[0] for b in blocks], [int(b[2]) for b in blocks])


def fit_calibration(c: CandidateLinks, edges: np.ndarray, is_match: np.ndarray) -> LinkCalibration:
    """The calibration from the labels ``is_match`` of the labelled ``edges`` (see
    :class:`LinkCalibration`)."""
    y = np.asarray(is_match, dtype=bool)
    if y.size < 50 or y.all() or not y.any():
        raise LinkDrawError(
            f"calibration needs at least 50 labelled pairs with both matches and non-matches; "
            f"got {y.size} ({int(y.sum())} matches): label more pairs of the review sample"
        )
    lab = pl.DataFrame(c.strata()[edges], schema=list(STRATA), orient="row").with_columns(
        y=pl.Series(y.astype(float)), p=pl.Series(c.edge_p[edges])
    )
    table = (
        lab.group_by(list(STRATA))
        .agg(labelled=pl.len(), matches=pl.col("y").sum(), splink=pl.col("p").mean())
        .sort(list(STRATA))
    )
    group = list(STRATA[:-1])
    calibrated = np.empty(table.height)
    for _, part in table.with_row_index("row").group_by(group, maintain_order=True):
        rows = part["row"].to_numpy()
        share = (part["matches"] / part["labelled"]).to_numpy()
        calibrated[rows] = _increasing(share, part["labelled"].to_numpy().astype(float))
    offset = _logit(calibrated) - _logit(table["splink"].to_numpy())
    return LinkCalibration(
        table.with_columns(calibrated=pl.Series(calibrated), offset=pl.Series(offset)),
        labelled=int(y.size),
    )


def edge_labels(c: CandidateLinks, labels: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Clerical-review labels (``source_l, record_id_l, source_r, record_id_r, is_match``:
    any two records of the two record groups) as (edge indices, labels)."""
    missing = {"source_l", "record_id_l", "source_r", "record_id_r", "is_match"} - set(
        labels.columns
    )
    if missing:
        raise LinkDrawError(
            f"the link labels lack column(s) {sorted(missing)}: expected source_l, "
            "record_id_l, source_r, record_id_r, is_match"
        )
    comp = c.records.select("source", "record_id", "component")
    lab = (
        labels.select(
            pl.col("source_l").cast(pl.String),
            pl.col("record_id_l").cast(pl.String),
            pl.col("source_r").cast(pl.String),
            pl.col("record_id_r").cast(pl.String),
            pl.col("is_match").cast(pl.Boolean),
        )
        .join(
            comp.rename({"source": "source_l", "record_id": "record_id_l", "component": "cl"}),
            on=["source_l", "record_id_l"],
        )
        .join(
            comp.rename({"source": "source_r", "record_id": "record_id_r", "component": "cr"}),
            on=["source_r", "record_id_r"],
        )
        .with_columns(a=pl.min_horizontal("cl", "cr"), b=pl.max_horizontal("cl", "cr"))
    )
    edges = pl.DataFrame({"a": c.edge_a, "b": c.edge_b}).with_row_index("edge")
    hit = lab.join(edges, on=["a", "b"])
    return hit["edge"].to_numpy().astype(np.int64), hit["is_match"].to_numpy()


def edge_records(c: CandidateLinks, edges: np.ndarray) -> pl.DataFrame:
    """One record of each side of ``edges`` (``source_l, record_id_l, source_r,
    record_id_r``): what a reviewer looks up, and what the labels name."""
    first = c.records.group_by("component").agg(
        pl.col("source").first(), pl.col("record_id").first()
    )
    first = first.sort("component")
    src = np.full(c.n_components, "", dtype=object)
    rid = np.full(c.n_components, "", dtype=object)
    idx = first["component"].to_numpy()
    src[idx] = first["source"].to_numpy()
    rid[idx] = first["record_id"].to_numpy()
    a, b = c.edge_a[edges], c.edge_b[edges]
    return pl.DataFrame(
        {
            "source_l": src[a].tolist(),
            "record_id_l": rid[a].tolist(),
            "source_r": src[b].tolist(),
            "record_id_r": rid[b].tolist(),
        },
        schema={k: pl.String for k in ("source_l", "record_id_l", "source_r", "record_id_r")},
    )


def calibration_bins(p: np.ndarray, is_match: np.ndarray, w: np.ndarray) -> pl.DataFrame:
    """Predicted against observed share of true matches by match-weight band (for the docs
    and the benchmark: is a probability what it says?)."""
    edges_ = [-np.inf, -10, -7, -5, -3, -1, 0, 1, 2, 3, 5, 7, 10, 15, np.inf]
    band = np.digitize(w, edges_[1:-1])
    d = pl.DataFrame({"band": band, "p": p, "y": is_match.astype(float)})
    labels = [f"[{lo}, {hi})" for lo, hi in pairwise(edges_)]
    return (
        d.group_by("band")
        .agg(pairs=pl.len(), predicted=pl.col("p").mean(), observed=pl.col("y").mean())
        .sort("band")
        .with_columns(match_weight=pl.col("band").map_elements(lambda i: labels[i], pl.String))
        .select("match_weight", "pairs", "predicted", "observed")
    )


def satellite_shares(p: np.ndarray, group: np.ndarray) -> np.ndarray:
    """The probability that each candidate is its record group's one register person.

    Where a group's candidates' probabilities sum to at most 1 they are used as they are (each
    pair's own probability, the rest "none"). Where they sum above 1 they cannot all hold, and
    candidate ``j`` gets ``o_j / (1 + sum o)`` with ``o = p / (1 - p)``: the chance that ``j``
    alone matches if the pairs matched independently, given that at most one does. Scaling
    them to sum 1 instead handed a false 0.89 candidate 47% next to a sure link (p ~ 1),
    which put looked-after episodes on other children's attainment records
    (docs/linkage_error.md)."""
    total = np.bincount(group, weights=p)
    odds = np.clip(p, 0.0, 1.0 - 1e-12)
    odds = odds / (1.0 - odds)
    by_odds = odds / (1.0 + np.bincount(group, weights=odds))[group]
    return np.where(total[group] > 1.0, by_odds, p)


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
        share = satellite_shares(p[idx], group)
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


def record_person_for(
    c: CandidateLinks, keep: np.ndarray, rng: np.random.Generator
) -> pl.DataFrame:
    """``linkage.record_person`` of one link set: the columns ``write_analysis_zone`` reads
    (``source, record_id, person_id, person_key, component_id, link_method,
    match_probability``). A draw's person key is a random number (a permutation of its
    persons drawn from ``rng``, zero-padded text): no identifier goes into it, so nothing
    needs keying, the draw is reproducible from its seed, and the short keys join and sort
    far faster than 64-character pseudonyms (``person_id`` is the same number). Every
    column is computed on arrays: at 1,000,000 children a draw has 19 million records."""
    cluster = clusters_of(c, keep)
    n_persons = int(cluster.max()) + 1 if cluster.size else 0
    best = np.zeros(c.n_components)
    np.maximum.at(best, c.edge_a[keep], c.edge_p[keep])
    np.maximum.at(best, c.edge_b[keep], c.edge_p[keep])
    comp = c.records["component"].to_numpy()
    rec_cluster = cluster[comp]
    alone = np.bincount(rec_cluster, minlength=n_persons)[rec_cluster] == 1
    method = np.where(best[comp] > 0, 2, np.where(np.bincount(comp)[comp] > 1, 1, 0))
    method[alone] = 0
    prob = np.where(method == 2, best[comp], np.where(method == 1, 1.0, np.nan))
    key = pl.Series(rng.permutation(n_persons)[rec_cluster]).cast(pl.String)
    key = key.str.zfill(len(str(max(n_persons - 1, 0))))
    return c.records.select(
        "source",
        "record_id",
        person_id=key,
        person_key=key,
        component_id=pl.col("component"),
        link_method=pl.Series(method).replace_strict(_METHOD_NAMES, return_dtype=pl.String),
        match_probability=pl.Series(prob).fill_nan(None),
    )


#: ``link_method`` by the code ``record_person_for`` computes
_METHOD_NAMES = {0: "unlinked", 1: "deterministic", 2: "probabilistic"}


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


def draw_record_person(c: CandidateLinks, rng: np.random.Generator) -> pl.DataFrame:
    """One multiply-imputed link set as a ``record_person`` table."""
    return record_person_for(c, draw_edges(c, rng), rng)


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
