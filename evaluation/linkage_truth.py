"""Linkage quality against the synthetic truth (never used by the pipeline itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from ground.db import quote_ident
from ground.errors import RunStateError
from ground.run_layout import RunLayout


def _pair_metrics(
    con: duckdb.DuckDBPyConnection,
    pred_col: str,
    where: str = "TRUE",
    params: list[Any] | None = None,
) -> dict[str, Any]:
    """Pairwise precision / recall from cluster-by-person cell counts (no pair enumeration).

    ``pred_col`` and ``where`` are this module's SQL; values from data go in ``params``.
    """
    pred_col = quote_ident(pred_col)
    row = con.execute(
        f"""WITH e AS (SELECT * FROM ev WHERE {where}),
        cells AS (SELECT count(*) AS n FROM e GROUP BY {pred_col}, person_id),
        pred AS (SELECT count(*) AS n FROM e GROUP BY {pred_col}),
        truth AS (SELECT count(*) AS n FROM e GROUP BY person_id)
        SELECT (SELECT sum(n * (n - 1) / 2) FROM cells),
               (SELECT sum(n * (n - 1) / 2) FROM pred),
               (SELECT sum(n * (n - 1) / 2) FROM truth),
               (SELECT count(*) FROM e)""",
        params or [],
    ).fetchone()
    tp, pp, tt, n = (float(x or 0) for x in row)  # type: ignore[union-attr]
    precision = tp / pp if pp else 1.0
    recall = tp / tt if tt else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "records": int(n),
        "pair_precision": round(precision, 6),
        "pair_recall": round(recall, 6),
        "pair_f1": round(f1, 6),
        "true_pairs": int(tt),
        "predicted_pairs": int(pp),
    }


def _cluster_metrics(con: duckdb.DuckDBPyConnection, pred_col: str) -> dict[str, Any]:
    pred_col = quote_ident(pred_col)
    row = con.execute(
        f"""WITH t AS (SELECT person_id, count(DISTINCT {pred_col}) AS k FROM ev GROUP BY 1),
        p AS (SELECT {pred_col}, count(DISTINCT person_id) AS k FROM ev GROUP BY 1)
        SELECT (SELECT avg(CASE WHEN k = 1 THEN 1.0 ELSE 0.0 END) FROM t),
               (SELECT avg(CASE WHEN k = 1 THEN 1.0 ELSE 0.0 END) FROM p),
               (SELECT count(*) FROM t), (SELECT count(*) FROM p)"""
    ).fetchone()
    assert row is not None
    return {
        "true_persons": int(row[2]),
        "predicted_clusters": int(row[3]),
        "persons_in_one_cluster": round(float(row[0]), 6),
        "clusters_pure": round(float(row[1]), 6),
    }


def evaluate_linkage(*, layout: RunLayout, truth_dir: str | Path) -> dict[str, Any]:
    """Pairwise and cluster-level quality, overall, by subgroup and for the deterministic pass."""
    truth = Path(truth_dir)
    if not (truth / "record_person.parquet").exists():
        raise RunStateError(
            f"{truth} has no record_person.parquet: is it a synthetic truth folder?"
        )
    con = duckdb.connect()
    con.execute("ATTACH ? AS lz (READ_ONLY)", [str(layout.linkage_db)])
    con.execute(
        """CREATE TABLE ev AS
        SELECT source, record_id, rp.person_key, rp.component_id, rp.link_method,
               t.person_id AS person_id, p.deprivation_decile, p.sex, p.ethnicity
        FROM lz.linkage.record_person rp
        JOIN read_parquet(?) t USING (source, record_id)
        JOIN read_parquet(?) p ON p.person_id = t.person_id""",
        [str(truth / "record_person.parquet"), str(truth / "persons.parquet")],
    )
    out: dict[str, Any] = _pair_metrics(con, "person_key")
    out["cluster"] = _cluster_metrics(con, "person_key")
    out["deterministic_only"] = _pair_metrics(con, "component_id")
    out["by_deprivation_quintile"] = {
        str(q): _pair_metrics(con, "person_key", "(deprivation_decile + 1) // 2 = ?", [q])
        for q in range(1, 6)
    }
    recalls = [v["pair_recall"] for v in out["by_deprivation_quintile"].values()]
    out["recall_gap_most_vs_least_deprived"] = round(recalls[0] - recalls[-1], 6)
    out["by_sex"] = {s: _pair_metrics(con, "person_key", "sex = ?", [s]) for s in ("F", "M")}
    eths = [r[0] for r in con.execute("SELECT DISTINCT ethnicity FROM ev ORDER BY 1").fetchall()]
    out["by_ethnicity"] = {e: _pair_metrics(con, "person_key", "ethnicity = ?", [e]) for e in eths}
    out["by_source"] = {
        s: _pair_metrics(
            con, "person_key", "person_id IN (SELECT person_id FROM ev WHERE source = ?)", [s]
        )
        for (s,) in con.execute("SELECT DISTINCT source FROM ev ORDER BY 1").fetchall()
    }
    con.close()
    return out
