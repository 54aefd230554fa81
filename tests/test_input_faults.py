"""Inputs as real systems write them, and faults that must never lose rows or leak text.

Each test plants one fault in a copy of a small synthetic delivery (300 children, or 20,000 for
the stray quote) and checks the validation stage either loads it correctly or stops with one
clear :class:`InputDataError` (exit code 2 from the CLI), having written nothing half-way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from ground.errors import InputDataError
from ground.run_layout import RunLayout
from schemas.contracts import SOURCES
from validation import ValidationSettings, ValidationSummary, validate_delivery

NO_GX = ValidationSettings(run_great_expectations=False)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world_300(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthetic_data import generate_world

    out = tmp_path_factory.mktemp("faults_world")
    generate_world(n_children=300, seed=5, out_dir=out)
    return out


@pytest.fixture()
def delivery(world_300: Path, tmp_path: Path) -> Path:
    out = tmp_path / "delivery"
    out.mkdir()
    for p in world_300.iterdir():
        if p.is_file():
            shutil.copy(p, out / p.name)
    return out


def _validate(delivery: Path, run: Path, settings: ValidationSettings = NO_GX) -> ValidationSummary:
    return validate_delivery(data_dir=delivery, layout=RunLayout.at(run), settings=settings)


def _clean_lines(world: Path, source: str) -> list[int]:
    """Indices (0 = header) of data lines carrying no injected defect: safe to plant one."""
    defects = pl.read_parquet(world / "truth" / "defects.parquet").filter(
        pl.col("source") == source
    )
    bad = set(defects["record_id"].to_list())
    lines = (world / f"{source}.csv").read_text(encoding="utf-8").split("\n")
    width = lines[0].count(",")
    return [
        i
        for i, line in enumerate(lines[1:-1], start=1)
        if line.count(",") == width and line.split(",")[0] not in bad
    ]


def _set_cells(path: Path, edits: dict[int, dict[str, str]]) -> dict[int, str]:
    """Set cells (by line index and column) of a quote-free CSV; returns line -> record id."""
    lines = path.read_text(encoding="utf-8").split("\n")
    header = lines[0].split(",")
    ids = {}
    for i, cells in edits.items():
        row = lines[i].split(",")
        for col, value in cells.items():
            row[header.index(col)] = value
        lines[i] = ",".join(row)
        ids[i] = row[0]
    path.write_text("\n".join(lines), encoding="utf-8")
    return ids


def _reasons(run: Path, source: str) -> dict[str, list[str]]:
    con = duckdb.connect(str(RunLayout.at(run).linkage_db), read_only=True)
    rows = con.execute(f"SELECT record_id, _reasons FROM quarantine.{source}").fetchall()
    con.close()
    return {r[0]: r[1] for r in rows}


def _staged(run: Path, source: str, column: str) -> dict[str, object]:
    con = duckdb.connect(str(RunLayout.at(run).linkage_db), read_only=True)
    rows = con.execute(f"SELECT record_id, {column} FROM staging.{source}").fetchall()
    con.close()
    return dict(rows)


def _no_building_tables(run: Path) -> bool:
    con = duckdb.connect(str(RunLayout.at(run).linkage_db), read_only=True)
    n = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE '%\\_\\_building' "
        "ESCAPE '\\'"
    ).fetchone()[0]  # type: ignore[index]
    con.close()
    return n == 0


# --- conservation against the file ------------------------------------------------------------


@pytest.fixture(scope="module")
def world_20k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthetic_data import generate_world

    out = tmp_path_factory.mktemp("faults_world_20k")
    generate_world(n_children=20_000, seed=7, out_dir=out)
    shutil.rmtree(out / "truth")
    return out


@pytest.mark.parametrize("where", ["field_start", "inside_field"])
def test_stray_quote_at_20000_children_is_an_error_naming_the_line(
    world_20k: Path, tmp_path: Path, where: str
) -> None:
    """One `"` in one school-census cell: the old reader swallowed the rest of the file as one
    record (99 of 202,814 rows read) and reported "conserved: yes"."""
    path = world_20k / "school_census.csv"
    original = path.read_bytes()
    lines = original.split(b"\n")
    cells = lines[100].split(b",")
    surname = cells[3]
    cells[3] = b'"' + surname if where == "field_start" else surname[:2] + b'"' + surname[2:]
    lines[100] = b",".join(cells)
    try:
        path.write_bytes(b"\n".join(lines))
        with pytest.raises(InputDataError) as err:
            _validate(world_20k, tmp_path / "run")
    finally:
        path.write_bytes(original)
    msg = str(err.value)
    assert "school_census.csv" in msg and "line 101" in msg and "unbalanced double quote" in msg
    assert surname.decode() not in msg and "\n" not in msg
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_every_record_of_the_file_is_counted(world_20k: Path, tmp_path: Path) -> None:
    """Without faults, the records counted from the bytes equal rows read, staged + quarantined,
    and the summary shows them."""
    summary = _validate(world_20k, tmp_path / "run")
    for source, r in summary.sources.items():
        text = (world_20k / f"{SOURCES[source].file_stem}.csv").read_bytes()
        assert r.file_records == text.count(b"\n") - 1  # header; no blank lines, no quotes
        assert r.conserved and r.rows_staged + r.rows_quarantined == r.file_records
    assert "| records in file |" in summary.to_markdown()


def test_quoted_value_spanning_lines_is_refused(delivery: Path, tmp_path: Path) -> None:
    path = delivery / "looked_after_episodes.csv"
    lines = path.read_text(encoding="utf-8").split("\n")
    cells = lines[7].split(",")
    cells[1] = '"two\nlines"'
    lines[7] = ",".join(cells)
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(InputDataError, match="looked_after_episodes.csv.*line 8.*double quote"):
        _validate(delivery, tmp_path / "run")


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_blank_lines_are_counted_apart(delivery: Path, tmp_path: Path, line_end: str) -> None:
    """The reader skips blank lines: they are counted from the bytes, not lost records."""
    path = delivery / "attainment.csv"
    lines = path.read_text(encoding="utf-8").split("\n")
    n_records = len([line for line in lines[1:] if line])
    lines[10:10] = ["", ""]
    path.write_bytes((line_end.join(lines) + line_end).encode())
    result = _validate(delivery, tmp_path / "run").sources["attainment"]
    assert result.conserved and result.file_records == result.rows_read == n_records
    assert "3 blank line(s) in the file skipped" in result.warnings


def test_reader_short_of_the_file_is_an_error_and_nothing_half_staged(
    delivery: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the reader returns fewer records than the file holds (planted: the file's count is
    raised by one), the run stops; earlier staging stays and no __building table is left."""
    from validation import core

    run = tmp_path / "run"
    before = _validate(delivery, run)
    real = core.count_csv_records

    def one_more(path: Path, contract, **kw):  # type: ignore[no-untyped-def]
        records = real(path, contract, **kw)
        if contract.name != "looked_after_episodes":
            return records
        return type(records)(records.records + 1, records.nul_bytes)

    monkeypatch.setattr(core, "count_csv_records", one_more)
    with pytest.raises(InputDataError, match="reading went wrong: the file holds"):
        _validate(delivery, run)
    assert _no_building_tables(run)
    con = duckdb.connect(str(RunLayout.at(run).linkage_db), read_only=True)
    for source, r in before.sources.items():
        n = con.execute(f"SELECT count(*) FROM staging.{source}").fetchone()[0]  # type: ignore[index]
        assert n == r.rows_staged
    con.close()


def test_parquet_rows_checked_against_the_footer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from synthetic_data import generate_world
    from validation import core

    data = tmp_path / "pq"
    generate_world(n_children=150, seed=3, out_dir=data, file_format="parquet")
    summary = _validate(data, tmp_path / "run")
    for source, r in summary.sources.items():
        footer = pq.ParquetFile(data / f"{source}.parquet").metadata.num_rows
        assert r.file_records == footer == r.rows_read and r.conserved
    # planted: a footer claiming one row more than the scan returns
    real = core._parquet_file

    class Footer:
        def __init__(self, f: pq.ParquetFile) -> None:
            self.schema_arrow = f.schema_arrow
            self.metadata = type("M", (), {"num_rows": f.metadata.num_rows + 1})()

    monkeypatch.setattr(core, "_parquet_file", lambda p, w: Footer(real(p, w)))
    with pytest.raises(InputDataError, match="reading went wrong"):
        _validate(data, tmp_path / "run2")


def test_not_parquet_is_a_clear_error(delivery: Path, tmp_path: Path) -> None:
    (delivery / "attainment.csv").rename(delivery / "attainment.parquet")
    with pytest.raises(InputDataError, match="attainment.parquet.*not a readable Parquet"):
        _validate(delivery, tmp_path / "run")


# --- header text never reaches SQL or messages in full -----------------------------------------


def test_sql_in_a_header_is_loaded_harmlessly(delivery: Path, tmp_path: Path) -> None:
    target = tmp_path / "pwned.csv"
    evil = f"x'}}); COPY (SELECT 1) TO '{target}'; --"
    path = delivery / "looked_after_episodes.csv"
    lines = path.read_text(encoding="utf-8").split("\n")
    lines = [lines[0] + "," + evil] + [line + ",1" if line else line for line in lines[1:]]
    path.write_text("\n".join(lines), encoding="utf-8")
    settings = ValidationSettings.model_validate(
        {"run_great_expectations": False, "extra_columns": {"severity": "warn"}}
    )
    summary = _validate(delivery, tmp_path / "run", settings)
    assert not target.exists()
    result = summary.sources["looked_after_episodes"]
    assert result.conserved and result.rows_staged > 0
    assert any("unexpected column" in w for w in result.warnings)


def test_header_cells_are_cut_and_cleaned_in_errors(delivery: Path, tmp_path: Path) -> None:
    long_cell = "\x1b[31m" + "A" * 500
    path = delivery / "attainment.csv"
    text = path.read_text(encoding="utf-8")
    header, rest = text.split("\n", 1)
    extras = [long_cell] + [f"extra{i}" for i in range(10)]
    path.write_text(header + "," + ",".join(extras) + "\n" + rest, encoding="utf-8")
    with pytest.raises(InputDataError, match="unexpected column") as err:
        _validate(delivery, tmp_path / "run")
    msg = str(err.value)
    assert "\x1b" not in msg and "A" * 41 not in msg
    assert "extra3" in msg and "extra4" not in msg and "and 6 more" in msg


def test_a_file_without_its_header_is_not_echoed(delivery: Path, tmp_path: Path) -> None:
    path = delivery / "hospital_admissions.csv"
    _header, first, rest = path.read_text(encoding="utf-8").split("\n", 2)
    path.write_text(first + "\n" + rest, encoding="utf-8")
    with pytest.raises(InputDataError, match="none of the contract's columns") as err:
        _validate(delivery, tmp_path / "run")
    assert not any(cell and cell in str(err.value) for cell in first.split(",")[1:])


def test_duplicate_header_column_names_it(delivery: Path, tmp_path: Path) -> None:
    path = delivery / "attainment.csv"
    header, rest = path.read_text(encoding="utf-8").split("\n", 1)
    cols = header.split(",")
    cols[-1] = cols[1]
    path.write_text(",".join(cols) + "\n" + rest, encoding="utf-8")
    with pytest.raises(InputDataError, match=f"attainment.csv.*`{cols[1]}` appear more than once"):
        _validate(delivery, tmp_path / "run")


# --- encodings and line ends -------------------------------------------------------------------


def _staged_counts(summary: ValidationSummary) -> dict[str, tuple[int, int]]:
    return {s: (r.rows_staged, r.rows_quarantined) for s, r in summary.sources.items()}


@pytest.mark.parametrize("form", ["bom", "crlf", "bom_crlf"])
def test_excel_byte_order_mark_and_crlf_load_the_same_rows(
    world_300: Path, delivery: Path, tmp_path: Path, form: str
) -> None:
    expected = _staged_counts(_validate(world_300, tmp_path / "ref"))
    for source in ("school_census", "population_register"):
        p = delivery / f"{source}.csv"
        data = p.read_bytes()
        if "crlf" in form:
            data = data.replace(b"\n", b"\r\n")
        if "bom" in form:
            data = b"\xef\xbb\xbf" + data
        p.write_bytes(data)
    summary = _validate(delivery, tmp_path / "run")
    assert _staged_counts(summary) == expected
    assert all(r.conserved for r in summary.sources.values())
    if "crlf" in form:  # no carriage return left in a staged value
        con = duckdb.connect(str(RunLayout.at(tmp_path / "run").linkage_db), read_only=True)
        n = con.execute(
            "SELECT count(*) FROM staging.school_census WHERE contains(permanent_exclusion::VARCHAR || special_needs, chr(13))"
        ).fetchone()[0]  # type: ignore[index]
        con.close()
        assert n == 0


def test_carriage_return_line_ends_are_refused(delivery: Path, tmp_path: Path) -> None:
    p = delivery / "attainment.csv"
    p.write_bytes(p.read_bytes().replace(b"\n", b"\r"))
    with pytest.raises(InputDataError, match="carriage return alone"):
        _validate(delivery, tmp_path / "run")


def test_declared_legacy_encoding_is_transcoded(delivery: Path, tmp_path: Path) -> None:
    p = delivery / "school_census.csv"
    # Windows-1252 has â, ô, ï but not the Welsh ŵ and ŷ
    text = p.read_text(encoding="utf-8").translate(str.maketrans("ŵŷŴŶ", "wyWY"))
    assert "Siân" in text or "Siôn" in text
    p.write_text(text, encoding="utf-8")
    reference = tmp_path / "ref"
    _validate(delivery, reference)
    p.write_bytes(text.encode("cp1252"))
    with pytest.raises(InputDataError, match="school_census.csv.*not UTF-8.*encodings"):
        _validate(delivery, tmp_path / "refused")
    settings = NO_GX.model_copy(update={"encodings": {"school_census": "cp1252"}})
    run = tmp_path / "run"
    summary = _validate(delivery, run, settings)
    for column in ("first_name", "surname"):
        assert _staged(run, "school_census", column) == _staged(reference, "school_census", column)
    assert summary.sources["school_census"].conserved
    # the UTF-8 copy (identifiers) is gone with the linkage zone's scratch folder
    assert not (run / "linkage_zone.tmp").exists()
    assert not list(run.rglob("school_census*.csv"))


def test_byte_undefined_in_the_declared_encoding_names_the_line(
    delivery: Path, tmp_path: Path
) -> None:
    p = delivery / "attainment.csv"
    lines = p.read_bytes().split(b"\n")
    lines[30] = lines[30] + b"\x81"  # not a character in Windows-1252
    p.write_bytes(b"\n".join(lines))
    settings = NO_GX.model_copy(update={"encodings": {"attainment": "cp1252"}})
    with pytest.raises(InputDataError, match="attainment.csv.*not cp1252 as declared.*line 31"):
        _validate(delivery, tmp_path / "run", settings)
    assert not (tmp_path / "run" / "linkage_zone.tmp").exists()  # no partial copy left
    assert not list((tmp_path / "run").rglob("attainment*.csv"))


def test_encoding_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        ValidationSettings.model_validate({"encodings": {"school_census": "klingon"}})
    with pytest.raises(ValueError, match="UTF-16"):
        ValidationSettings.model_validate({"encodings": {"school_census": "utf-16"}})
    with pytest.raises(ValueError, match="unknown source"):
        ValidationSettings.model_validate({"encodings": {"schools": "cp1252"}})


# --- row faults: NUL bytes, placeholder and absurd dates, UK dates ------------------------------

TOMORROW = (date.today() + timedelta(days=1)).isoformat()
DATE_FAULTS = {
    "19000101": "placeholder_date",
    "1900-01-01": "placeholder_date",
    "01/01/1900": "placeholder_date",
    "0001-01-01": "implausible_date",
    "1850-06-01": "implausible_date",
    TOMORROW: "future_date",
    "2999-12-31": "future_date",
    "12/25/2010": "unparseable_date",  # US order: no 25th month
}


@pytest.fixture(scope="module")
def row_faults(world_300: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One delivery with every row fault planted in clean school-census rows, validated once."""
    tmp = tmp_path_factory.mktemp("row_faults")
    data = tmp / "delivery"
    shutil.copytree(world_300, data, ignore=shutil.ignore_patterns("truth"))
    clean = _clean_lines(world_300, "school_census")
    edits: dict[int, dict[str, str]] = {
        line: {"date_of_birth": value} for line, value in zip(clean, DATE_FAULTS, strict=False)
    }
    rest = clean[len(DATE_FAULTS) :]
    edits[rest[0]] = {"surname": "Jo\x00nes"}
    edits[rest[1]] = {"record_id": "SC\x00123"}
    lines = (data / "school_census.csv").read_text(encoding="utf-8").split("\n")
    at = lines[0].split(",").index("date_of_birth")
    born = {i: date.fromisoformat(lines[i].split(",")[at]) for i in rest[2:4]}
    edits[rest[2]] = {"date_of_birth": born[rest[2]].strftime("%d/%m/%Y")}  # UK order
    edits[rest[3]] = {"date_of_birth": born[rest[3]].strftime("%Y%m%d")}
    ids = _set_cells(data / "school_census.csv", edits)
    run = tmp / "run"
    _validate(data, run)
    return {"ids": ids, "edits": edits, "run": run, "lines": list(edits), "born": born}


@pytest.mark.parametrize(("value", "reason"), list(DATE_FAULTS.items()))
def test_placeholder_absurd_and_future_dates_quarantined(
    row_faults: dict, value: str, reason: str
) -> None:
    line = next(i for i, e in row_faults["edits"].items() if e.get("date_of_birth") == value)
    reasons = _reasons(row_faults["run"], "school_census")
    assert f"date_of_birth:{reason}" in reasons[row_faults["ids"][line]]


def test_nul_bytes_quarantined(row_faults: dict) -> None:
    reasons = _reasons(row_faults["run"], "school_census")
    lines = row_faults["lines"]
    assert "surname:nul_byte" in reasons[row_faults["ids"][lines[len(DATE_FAULTS)]]]
    assert "record_id:nul_byte" in reasons["SC\x00123"]
    staged = _staged(row_faults["run"], "school_census", "surname")
    assert not any("\x00" in str(k) + str(v) for k, v in staged.items())


def test_uk_and_compact_dates_parsed(row_faults: dict) -> None:
    dob = _staged(row_faults["run"], "school_census", "date_of_birth")
    assert len(row_faults["born"]) == 2
    for line, born in row_faults["born"].items():
        assert dob[row_faults["ids"][line]] == born


# --- the delivery folder -----------------------------------------------------------------------


def test_extra_and_misnamed_files_are_warned(delivery: Path, tmp_path: Path) -> None:
    shutil.copy(delivery / "attainment.csv", delivery / "attainment_OLD.csv")
    (delivery / "notes.txt").write_text("see email\n", encoding="utf-8")
    summary = _validate(delivery, tmp_path / "run")
    text = summary.to_markdown()
    assert "`attainment_OLD.csv`" in text and "`notes.txt`" in text and "not read" in text
    report = (tmp_path / "run" / "validation" / "dq_report.md").read_text(encoding="utf-8")
    assert "attainment_OLD.csv" in report


def test_case_variant_of_an_extract_name_is_an_error(delivery: Path, tmp_path: Path) -> None:
    (delivery / "attainment.csv").rename(delivery / "Attainment.CSV")
    with pytest.raises(InputDataError, match="Attainment.CSV.*rename it to attainment.csv"):
        _validate(delivery, tmp_path / "run")


def test_symlinked_extract_refused_without_reading_it(delivery: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secrets.env"
    secret.write_text("COHORT_PSEUDONYM_SECRET=hunter2-do-not-leak\n", encoding="utf-8")
    (delivery / "attainment.csv").unlink()
    (delivery / "attainment.csv").symlink_to(secret)
    with pytest.raises(InputDataError, match="attainment.csv.*symbolic link") as err:
        _validate(delivery, tmp_path / "run")
    assert "hunter2" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_symlinked_delivery_metadata_refused(delivery: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secrets.json"
    secret.write_text('{"secret": "hunter2"}', encoding="utf-8")
    (delivery / "delivery.json").unlink()
    (delivery / "delivery.json").symlink_to(secret)
    with pytest.raises(InputDataError, match="delivery.json.*symbolic link"):
        _validate(delivery, tmp_path / "run")


@pytest.mark.timeout(60)  # opening a fifo blocks: without the check the test would hang
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_extract_that_is_not_a_regular_file_refused(
    delivery: Path, tmp_path: Path, kind: str
) -> None:
    p = delivery / "attainment.csv"
    p.unlink()
    if kind == "directory":
        p.mkdir()
    else:
        os.mkfifo(p)  # opening it would block: it must not be opened
    with pytest.raises(InputDataError, match="attainment.csv.*not a regular file"):
        _validate(delivery, tmp_path / "run")


# --- the command line --------------------------------------------------------------------------


def test_cli_input_faults_exit_2_in_one_line(delivery: Path, tmp_path: Path) -> None:
    path = delivery / "emergency_department.csv"
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[40] = lines[40].replace(",", ',"', 1)
    path.write_text("\n".join(lines), encoding="utf-8")
    run = tmp_path / "r"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestration.cli",
            "validate",
            "--data",
            str(delivery),
            "--out",
            str(run),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "line 41" in r.stderr
    assert "emergency_department.csv" in r.stderr
    assert not run.exists()
