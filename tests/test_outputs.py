"""Outputs others can use: release CSVs that Stata and R read as numbers (suppression in a
column of its own), read back exactly by the one reader; the codebook; the Parquet exports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.disclosure import SUPPRESSED, WITHHELD, control_release
from models.outputs import read_release_csv, release_file_frame, write_release_csv


def _released() -> dict[str, pd.DataFrame]:
    """Tables released with every kind of marked cell: a small count, a withheld estimate, a
    total with a suppressed part, a p-value below 0.001."""
    t1 = pd.DataFrame(
        {
            "characteristic": ["female", "disability", "children"],
            "n_CLA": [52, 4, 145],
            "n_NLA": [121, 44, 195],
        }
    )
    est = pd.DataFrame(
        [
            {
                "outcome": o,
                "contrast": "looked_after",
                "method": "cox",
                "scale": "hazard_ratio",
                "estimate": 2.3456,
                "ci_low": 1.1234,
                "ci_high": 4.98765,
                "p_value": p,
                "n_exposed": 145,
                "n_unexposed": 195,
                "events_exposed": ev,
                "events_unexposed": 40,
                "warning": "",
            }
            for o, p, ev in (("self_harm", 0.00001, 31), ("appendicitis", 0.2, 3))
        ]
    )
    return control_release({"table1_counts": t1, "estimates": est}).tables


def test_release_csv_is_numeric_and_reads_back_as_released(tmp_path: Path) -> None:
    tables = _released()
    # every kind of marked cell is in the tables as released
    flat = pd.concat([t.astype(str) for t in tables.values()]).to_numpy().ravel().tolist()
    assert SUPPRESSED in flat and WITHHELD in flat and "<0.001" in flat
    assert any(str(v).endswith("+") for v in flat)
    for name, table in tables.items():
        path = tmp_path / f"{name}.csv"
        write_release_csv(table, path)
        cells = set(pd.read_csv(path, dtype=str, keep_default_na=False).to_numpy().ravel())
        assert not cells & {SUPPRESSED, WITHHELD, "<0.001"}, cells
        assert not any(c.endswith("+") for c in cells), cells
        # as R's read.csv or Stata's import delimited see it: counts and estimates are numbers
        plain = pd.read_csv(path)
        numeric = ["n_CLA", "n_NLA", "total"] if name == "table1_counts" else [
            "estimate", "ci_low", "ci_high", "p_value", "n_exposed", "n_unexposed",
            "events_exposed", "events_unexposed",
        ]  # fmt: skip
        for col in numeric:
            assert pd.api.types.is_numeric_dtype(plain[col]), (name, col, plain[col].tolist())
        # the one reader gives back exactly the released cells
        back = read_release_csv(path)
        pd.testing.assert_frame_equal(back, table.astype(str).reset_index(drop=True))
    est = pd.read_csv(tmp_path / "estimates.csv", keep_default_na=False)
    withheld = est[est["outcome"] == "appendicitis"].iloc[0]
    assert withheld["estimate"] == "" and "estimate" in withheld["suppressed"].split()
    assert "events_exposed" in withheld["suppressed"].split()
    shown = est[est["outcome"] == "self_harm"].iloc[0]
    # printed at the scale's precision (ratios 2 dp), not re-printed from a float
    assert (shown["estimate"], shown["ci_low"], shown["ci_high"]) == ("2.35", "1.12", "4.99")
    assert shown["p_value"] == "0.001" and shown["bounded"] == "p_value"
    t1 = pd.read_csv(tmp_path / "table1_counts.csv", keep_default_na=False)
    dis = t1[t1["characteristic"] == "disability"].iloc[0]
    assert dis["n_CLA"] == "" and dis["suppressed"] == "n_CLA" and dis["bounded"] == "total"


def test_release_file_frame_marks_only_marked_cells() -> None:
    table = pd.DataFrame({"item": ["a", "b"], "n": ["10", SUPPRESSED], "note": ["", "x+y"]})
    out = release_file_frame(table)
    assert out["n"].tolist() == ["10", ""]
    assert out["suppressed"].tolist() == ["", "n"]
    assert out["bounded"].tolist() == ["", ""]  # "x+y" is text, not a bound


def test_a_runs_release_csvs_are_numeric(full_run: Path) -> None:
    for path in sorted((full_run / "release").glob("*.csv")):
        cells = set(pd.read_csv(path, dtype=str, keep_default_na=False).to_numpy().ravel())
        assert not cells & {SUPPRESSED, WITHHELD, "<0.001"}, path.name
        back = read_release_csv(path)  # the format is the reader's
        assert len(back) == len(pd.read_csv(path))


def test_the_codebook_documents_every_column_of_every_output_table(full_run: Path) -> None:
    from orchestration.codebook import (
        COHORT_TABLES,
        RELEASE_TABLES,
        RESULT_TABLES,
        UNDOCUMENTED,
        codebook_csv,
    )

    book = pd.read_csv(full_run / "codebook.csv", keep_default_na=False)
    undocumented = book[book["meaning"] == UNDOCUMENTED]
    assert undocumented.empty, undocumented[["table", "column"]].to_string()
    # every output table the run wrote is in it, with every column the file has
    for t in (*COHORT_TABLES, *RESULT_TABLES, *RELEASE_TABLES):
        assert (book["table"] == t.name).any(), t.name
    for t in (*RESULT_TABLES, *RELEASE_TABLES):
        written = list(pd.read_csv(full_run / t.files, nrows=0).columns)
        assert book.loc[book["table"] == t.name, "column"].tolist() == written, t.name
    release = book[book["table"].str.startswith("release.")].set_index(["table", "column"])
    assert release.loc[("release.estimates", "estimate"), "type"] == "number"
    assert release.loc[("release.table1_counts", "n_CLA"), "type"] in ("integer", "number")
    md = (full_run / "codebook.md").read_text(encoding="utf-8")
    assert "## cohort.children" in md and "## release.estimates" in md and "## Analyses" in md
    # generated from the run as it is now: the file is what the generator writes
    from ground.run_layout import RunLayout

    assert (full_run / "codebook.csv").read_text(encoding="utf-8") == codebook_csv(
        RunLayout.at(full_run)
    )


def test_cohort_tables_are_exported_as_parquet(full_run: Path) -> None:
    import pyarrow.parquet as pq

    from cohort.export import COHORT_TABLES
    from ground.db import connect, quote_ident

    con = connect(full_run / "analysis_zone.duckdb", read_only=True)
    try:
        for table in COHORT_TABLES:
            path = full_run / "cohort" / "parquet" / f"{table}.parquet"
            exported = pq.read_table(path)
            expected = con.sql(f"SELECT * FROM {quote_ident('cohort.' + table)} ORDER BY ALL")
            assert exported.column_names == expected.columns, table
            assert exported.num_rows == len(expected.fetchall()), table
    finally:
        con.close()


def test_version_names_the_package_and_the_checkouts_commit() -> None:
    import re
    import subprocess

    from typer.testing import CliRunner

    from orchestration.cli import app
    from orchestration.manifest import PROJECT_ROOT, lock_hash
    from orchestration.state import sha256_file

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert re.fullmatch(r"cohort \d+\.\d+\.\d+ \(commit [0-9a-f]{12}(, uncommitted changes)?\)\n",
                        result.output), result.output  # fmt: skip
    assert head and head[:12] in result.output
    # the manifest's code version and lock hash are this checkout's (not a folder above it)
    assert lock_hash() == sha256_file(PROJECT_ROOT / "uv.lock")
