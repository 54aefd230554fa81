"""Validation: defects caught, clean rows kept, conservation, and every bad input handled."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest

from ground.errors import InputDataError
from ground.run_layout import RunLayout
from schemas.contracts import SOURCES
from validation import ValidationSettings, validate_delivery

NO_GX = ValidationSettings(run_great_expectations=False)


def _quarantine(run: Path) -> pl.DataFrame:
    con = duckdb.connect(str(RunLayout.at(run).linkage_db), read_only=True)
    frames = []
    for s in SOURCES:
        frames.append(
            con.sql(f"SELECT '{s}' AS source, record_id, _reasons FROM quarantine.{s}").pl()
        )
    con.close()
    return pl.concat(frames)


def test_every_injected_defect_caught_and_clean_rows_kept(
    small_world: Path, validated_run: Path
) -> None:
    defects = pl.read_parquet(small_world / "truth" / "defects.parquet")
    q = _quarantine(validated_run)
    caught = defects.join(
        q.select("source", "record_id").unique(), on=["source", "record_id"], how="semi"
    )
    assert caught.height / defects.height >= 0.99
    rp = pl.read_parquet(small_world / "truth" / "record_person.parquet")
    clean = rp.join(defects, on=["source", "record_id"], how="anti")
    false_pos = (
        q.join(defects, on=["source", "record_id"], how="anti")
        .select("source", "record_id")
        .unique()
    )
    assert false_pos.height / clean.height <= 0.001


def test_reasons_name_the_rule(small_world: Path, validated_run: Path) -> None:
    defects = pl.read_parquet(small_world / "truth" / "defects.parquet")
    q = _quarantine(validated_run).explode("_reasons")
    expected = {
        "placeholder_date": "placeholder_date",
        "unparseable_date": "unparseable_date",
        "referral_after_closure": "rule:referral_before_closure",
        "nhs_number_wrong_length": "nhs_number:pattern",
        "duplicate_row": "duplicate_row",
        "malformed_line": "malformed_line",
    }
    for defect, fragment in expected.items():
        ids = defects.filter(pl.col("defect") == defect).select("source", "record_id")
        got = q.join(ids, on=["source", "record_id"]).filter(
            pl.col("_reasons").str.contains(fragment)
        )
        assert got.select("source", "record_id").unique().height == ids.height, defect


def test_conservation_and_summary(validated_run: Path) -> None:
    con = duckdb.connect(str(RunLayout.at(validated_run).linkage_db), read_only=True)
    rows = con.execute("SELECT * FROM validation.summary").fetchall()
    assert len(rows) == 7
    for source, read, staged, quarantined, conserved, in_file in rows:
        assert in_file == read == staged + quarantined and conserved, source
        assert con.execute(f"SELECT count(*) FROM staging.{source}").fetchone()[0] == staged
    types = dict(
        con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema='staging' AND table_name='hospital_admissions'"
        ).fetchall()
    )
    assert types["admission_date"] == "DATE"
    con.close()


def test_gx_results_and_data_docs_written(validated_run: Path) -> None:
    import json

    layout = RunLayout.at(validated_run)
    report = json.loads((layout.validation_dir / "dq_report.json").read_text())
    assert all(report[s]["expectations"] for s in SOURCES)
    exp = {e["expectation"] for e in report["school_census"]["expectations"]}
    assert (
        "expect_column_values_to_be_in_set" in exp and "expect_column_values_to_match_regex" in exp
    )
    docs = list((layout.validation_dir / "gx").rglob("index.html"))
    assert docs
    # the report holds aggregates only: no identifier value of any staged row
    text = (layout.validation_dir / "dq_report.md").read_text() + json.dumps(report)
    con = duckdb.connect(str(layout.linkage_db), read_only=True)
    nhs = [
        r[0]
        for r in con.execute(
            "SELECT nhs_number FROM staging.population_register WHERE nhs_number IS NOT NULL LIMIT 200"
        ).fetchall()
    ]
    con.close()
    assert not any(n in text for n in nhs)


# --- bad input ---------------------------------------------------------------------------------


@pytest.fixture()
def delivery(small_world: Path, tmp_path: Path) -> Path:
    out = tmp_path / "delivery"
    out.mkdir()
    for p in small_world.glob("*.csv"):
        shutil.copy(p, out / p.name)
    return out


def _run(delivery: Path, tmp_path: Path) -> RunLayout:
    layout = RunLayout.at(tmp_path / "run")
    validate_delivery(data_dir=delivery, layout=layout, settings=NO_GX)
    return layout


def _rewrite(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    path.write_text(fn(path.read_text(encoding="utf-8")), encoding="utf-8")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda t: t.replace("arrival_date", "arrival", 1),
            "column\\(s\\) `arrival_date` missing.*renamed",
        ),
        (lambda t: t.replace("\n", ",extra\n"), "unexpected column"),
        (lambda t: t.replace(",", ";"), "';' as delimiter"),
        (lambda t: "", "empty file"),
        (lambda t: t.split("\n")[0] + "\n", "0 data rows"),
    ],
    ids=["missing_column", "extra_column", "wrong_delimiter", "empty_file", "header_only"],
)
def test_table_rule_errors_stop_the_run(delivery: Path, tmp_path: Path, mutate, message) -> None:  # type: ignore[no-untyped-def]
    layout = _run(delivery, tmp_path)  # a good earlier delivery
    before = duckdb.connect(str(layout.linkage_db), read_only=True)
    n_before = before.execute("SELECT count(*) FROM staging.emergency_department").fetchone()[0]
    before.close()
    _rewrite(delivery / "emergency_department.csv", mutate)
    with pytest.raises(InputDataError, match=message):
        validate_delivery(data_dir=delivery, layout=layout, settings=NO_GX)
    con = duckdb.connect(str(layout.linkage_db), read_only=True)
    assert (
        con.execute("SELECT count(*) FROM staging.emergency_department").fetchone()[0] == n_before
    )
    leftovers = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE '%__building'"
    ).fetchone()[0]
    assert leftovers == 0
    con.close()


def test_non_utf8_bytes_are_a_clear_error(delivery: Path, tmp_path: Path) -> None:
    p = delivery / "care_support_census.csv"
    p.write_bytes(p.read_bytes().replace(b"Jones", b"J\xf6nes", 1))
    with pytest.raises(InputDataError, match="not UTF-8.*line"):
        _run(delivery, tmp_path)


def test_file_of_another_source_under_wrong_name(delivery: Path, tmp_path: Path) -> None:
    shutil.copy(delivery / "hospital_admissions.csv", delivery / "emergency_department.csv")
    with pytest.raises(
        InputDataError, match="looks like an extract of source `hospital_admissions`"
    ):
        _run(delivery, tmp_path)


def test_welsh_diacritics_survive(delivery: Path, tmp_path: Path) -> None:
    layout = _run(delivery, tmp_path)
    con = duckdb.connect(str(layout.linkage_db), read_only=True)
    n = con.execute(
        "SELECT count(*) FROM staging.school_census WHERE first_name IN ('Siân', 'Llŷr', 'Siôn', 'Gwenllïan')"
    ).fetchone()[0]
    con.close()
    assert n > 0


def _edit_rows(path: Path, edits: dict[int, dict[str, str]]) -> list[str]:
    df = pl.read_csv(path, infer_schema=False, truncate_ragged_lines=True)
    ids = []
    for i, cols in edits.items():
        for c, v in cols.items():
            df[i, c] = v
        ids.append(df[i, "record_id"])
    df.write_csv(path)
    return ids


def test_row_level_bad_input_is_quarantined_with_reason(delivery: Path, tmp_path: Path) -> None:
    p = delivery / "hospital_admissions.csv"
    df = pl.read_csv(p, infer_schema=False, truncate_ragged_lines=True)
    # clean rows only (rows without injected defects) to edit
    good = [
        i
        for i in range(50, 400)
        if df[i, "nhs_number"]
        and len(df[i, "nhs_number"]) == 10
        and df[i, "admission_date"][:2] == "20"
    ][:6]
    a = df[good[0], "admission_date"]
    ids = _edit_rows(
        p,
        {
            good[0]: {"admission_date": f"{a[8:10]}/{a[5:7]}/{a[:4]}"},  # DD/MM/YYYY: normalised
            good[1]: {"admission_date": a.replace("-", "")},  # YYYYMMDD: normalised
            good[2]: {"nhs_number": "12345678901"},  # 11 digits
            good[3]: {"nhs_number": "123456789"},  # 9 digits
            good[4]: {"record_id": df[good[5], "record_id"]},  # duplicate primary key
        },
    )
    layout = _run(delivery, tmp_path)
    con = duckdb.connect(str(layout.linkage_db), read_only=True)
    staged = {
        r[0] for r in con.execute("SELECT record_id FROM staging.hospital_admissions").fetchall()
    }
    reasons = dict(
        con.execute("SELECT record_id, _reasons FROM quarantine.hospital_admissions").fetchall()
    )
    dmy = con.execute(
        "SELECT admission_date::VARCHAR FROM staging.hospital_admissions WHERE record_id = ?",
        [ids[0]],
    ).fetchone()[0]
    con.close()
    assert ids[0] in staged and ids[1] in staged and dmy == a
    assert "nhs_number:pattern" in reasons[ids[2]] and "nhs_number:pattern" in reasons[ids[3]]
    assert "duplicate_primary_key" in reasons[ids[4]]


def test_malformed_line_quarantined_with_line(delivery: Path, tmp_path: Path) -> None:
    p = delivery / "looked_after_episodes.csv"
    lines = p.read_text(encoding="utf-8").split("\n")
    rid = lines[5].split(",")[0]
    lines[5] = lines[5] + ",oops"
    p.write_text("\n".join(lines), encoding="utf-8")
    layout = _run(delivery, tmp_path)
    con = duckdb.connect(str(layout.linkage_db), read_only=True)
    row = con.execute(
        "SELECT _reasons FROM quarantine.looked_after_episodes WHERE record_id = ?", [rid]
    ).fetchone()
    read, staged, quarantined = con.execute(
        "SELECT rows_read, rows_staged, rows_quarantined FROM validation.summary WHERE source = 'looked_after_episodes'"
    ).fetchone()
    con.close()
    assert row is not None and row[0][0].startswith("malformed_line")
    assert read == staged + quarantined


def test_parquet_delivery(small_world: Path, tmp_path: Path) -> None:
    from synthetic_data import generate_world

    out = tmp_path / "pq"
    generate_world(n_children=800, seed=3, out_dir=out, file_format="parquet")
    layout = RunLayout.at(tmp_path / "run")
    summary = validate_delivery(data_dir=out, layout=layout, settings=NO_GX)
    assert all(r.conserved and r.rows_staged > 0 for r in summary.sources.values())


def test_cli_bad_data_exits_without_traceback(delivery: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    (delivery / "attainment.csv").write_text("", encoding="utf-8")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestration.cli",
            "validate",
            "--data",
            str(delivery),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "empty file" in r.stderr and "Traceback" not in r.stderr
