"""Health and education layouts (issue #23): a world written as an ECDS extract of emergency
department attendances, a DfE school census pupil-level extract and NPD key stage 2 / key stage 4
pupil files, adapted back into the contracts' extracts (`cohort adapt`), and the errors a
mapping or a delivery in these layouts stops with."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from deliveries import (
    MappingError,
    SourceLayoutError,
    adapt_delivery,
    detect_layouts,
    load_layout,
    load_layouts,
)
from schemas.contracts import load_codelist
from tests.e2e import _cohort, _env, zone_tables

LAYOUTS = ["ecds", "key_stages", "school_census"]
SOURCES_MADE = ("emergency_department", "attainment", "school_census")
# What ECDS cannot carry (synthetic_data/layouts_health_education.py): the ICD-10 external cause
# of self-harm (intent is its own ECDS field) and two codes whose SNOMED CT concept the layout's
# map shares with another code.
ECDS_GIVES_BACK = {
    "X60": "X84",
    "X61": "X84",
    "X62": "X84",
    "X64": "X84",
    "X78": "X84",
    "K35.3": "K35.8",
    "S60.0": "T14.0",
}


@pytest.fixture(scope="module")
def layout_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's world (2,500 children, seed 13, default scenario) with its emergency
    department, school census and attainment written in the three layouts."""
    from synthetic_data import generate_world

    out = tmp_path_factory.mktemp("health_education_world")
    generate_world(n_children=2500, seed=13, out_dir=out, layout=LAYOUTS)
    return out


@pytest.fixture(scope="module")
def adapted(layout_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("health_education_adapted") / "delivery"
    adapt_delivery(source_dir=layout_world, out_dir=out, layout=load_layouts(LAYOUTS))
    return out


def _csv(path: Path) -> pl.DataFrame:
    return pl.read_csv(path, infer_schema=False, truncate_ragged_lines=True)


def _sorted(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort(df.columns, nulls_last=True)


def _groups(code: str) -> set[str]:
    """The code list groups (schemas/codelists/icd10_groups.csv) an ICD-10 code falls in."""
    head = code[:3]
    return {
        g
        for g, row in load_codelist("icd10_groups").items()
        if row["code_from"] <= head <= row["code_to"]
    }


def _ecds_diagnoses(native: pl.DataFrame) -> pl.DataFrame:
    """The native attendances as the ECDS layout gives them back."""
    return native.with_columns(pl.col("diagnosis").replace(ECDS_GIVES_BACK))


def _key_stage_rows(native: pl.DataFrame) -> pl.DataFrame:
    """The native attainment rows the NPD files carry: key stage 2 and key stage 4 results (a
    planted key stage code outside them has no file)."""
    return native.filter(pl.col("key_stage").is_in(["KS2", "KS4"]))


# --- the world in the layouts ------------------------------------------------------------------


def test_the_layout_world_holds_the_layout_files_and_the_same_truth(
    world: Path, layout_world: Path
) -> None:
    names = {p.name for p in layout_world.iterdir()}
    assert {
        "ECDS_attendances.csv",
        "School_census_pupils.csv",
        "NPD_KS2_pupils.csv",
        "NPD_KS4_pupils.csv",
    } <= names
    assert not names & {f"{s}.csv" for s in SOURCES_MADE}
    for other in ("population_register", "hospital_admissions", "looked_after_episodes"):
        assert filecmp.cmp(world / f"{other}.csv", layout_world / f"{other}.csv", shallow=False)
    for truth in ("record_person.parquet", "persons.parquet", "effects.json"):
        assert filecmp.cmp(world / "truth" / truth, layout_world / "truth" / truth, shallow=False)
    assert detect_layouts(layout_world) == LAYOUTS
    assert detect_layouts(world) == []


def test_the_ecds_extract_holds_snomed_concepts_and_the_injury_intent(layout_world: Path) -> None:
    """Every diagnosis is written as a SNOMED CT concept id except the planted code defect
    (9XX, which no map holds); self-harm carries ECDS's intent "self inflicted"."""
    ecds = _csv(layout_world / "ECDS_attendances.csv")
    assert ecds.columns[:7] == [
        "EC_Ident", "NHS_Number", "Date_Of_Birth", "Sex", "Postcode", "Arrival_Date",
        "EC_Diagnosis_01",
    ]  # fmt: skip
    not_snomed = set(
        ecds.filter(~pl.col("EC_Diagnosis_01").str.contains(r"^\d{6,18}$"))[
            "EC_Diagnosis_01"
        ].to_list()
    )
    assert not_snomed <= {"9XX"}, not_snomed
    intent = ecds.filter(pl.col("EC_Injury_Intent_SNOMED_CT").is_not_null())
    assert intent.height > 0
    assert set(intent["EC_Diagnosis_01"].to_list()) == {"276853009"}
    assert set(ecds["Sex"].to_list()) <= {"1", "2", "9", "X"}


def test_adapting_gives_the_native_school_census_byte_for_byte(world: Path, adapted: Path) -> None:
    assert filecmp.cmp(world / "school_census.csv", adapted / "school_census.csv", shallow=False)


def test_adapting_gives_the_native_attendances_but_what_ecds_cannot_carry(
    world: Path, adapted: Path
) -> None:
    """The native attendances in the native order, every column as it was but the diagnoses the
    ECDS map gives back differently; each of those stays in its outcome group."""
    native = _csv(world / "emergency_department.csv")
    got = _csv(adapted / "emergency_department.csv")
    assert got.equals(_ecds_diagnoses(native))
    changed = native.filter(pl.col("diagnosis") != got["diagnosis"])
    assert 0 < changed.height < 0.2 * native.height
    for code, back in ECDS_GIVES_BACK.items():
        assert _groups(code) == _groups(back), (code, back)


def test_adapting_gives_the_native_key_stage_results(world: Path, adapted: Path) -> None:
    """The native attainment rows (KS2 then KS4: the two files stacked), values unchanged;
    the planted key stage code outside KS2 / KS4 is the one row the layout cannot carry."""
    native = _csv(world / "attainment.csv")
    got = _csv(adapted / "attainment.csv")
    assert _sorted(got).equals(_sorted(_key_stage_rows(native)))
    assert got["key_stage"].to_list() == sorted(got["key_stage"].to_list())  # KS2 file first
    assert native.height - got.height == (~native["key_stage"].is_in(["KS2", "KS4"])).sum()


def test_a_messy_world_round_trips_defects_and_all(tmp_path: Path) -> None:
    """The messy scenario's defects (unparseable and placeholder dates, codes outside the lists,
    duplicated and malformed lines, identifier noise) come back and are quarantined as in the
    native world."""
    from synthetic_data import generate_world

    native, layout_dir = tmp_path / "native", tmp_path / "layout"
    for out, layouts in ((native, None), (layout_dir, LAYOUTS)):
        generate_world(n_children=1500, seed=5, scenario="messy", out_dir=out, layout=layouts)
    summary = adapt_delivery(
        source_dir=layout_dir, out_dir=tmp_path / "adapted", layout=load_layouts(LAYOUTS)
    )
    adapted = tmp_path / "adapted"
    assert filecmp.cmp(native / "school_census.csv", adapted / "school_census.csv", shallow=False)
    ed = _ecds_diagnoses(_csv(native / "emergency_department.csv"))
    assert _csv(adapted / "emergency_department.csv").equals(ed)
    attainment = _key_stage_rows(_csv(native / "attainment.csv"))
    assert _sorted(_csv(adapted / "attainment.csv")).equals(_sorted(attainment))
    for source in SOURCES_MADE:
        malformed = (native / f"{source}.csv").read_text().count(",EXTRA\n")
        assert summary.malformed[source] == malformed, source
    defects = pl.read_parquet(layout_dir / "truth" / "defects.parquet")
    planted = defects.filter(pl.col("source").is_in(SOURCES_MADE))["defect"].unique().to_list()
    assert {"unparseable_date", "code_outside_list", "duplicate_row", "malformed_line"} <= set(
        planted
    )
    # validated: every quarantined row of the three sources is traced to its source line (the
    # key stage files' rows numbered on across the two parts)
    from deliveries.report import report_adapted_checks
    from ground.run_layout import RunLayout
    from validation import ValidationSettings, validate_delivery

    run = RunLayout.at(tmp_path / "run")
    validated = validate_delivery(
        data_dir=adapted, layout=run, settings=ValidationSettings(run_great_expectations=False)
    )
    checks = report_adapted_checks(data_dir=adapted, layout=run)
    assert checks is not None
    for source in SOURCES_MADE:
        quarantined = validated.sources[source].rows_quarantined
        assert quarantined > 0 and checks.traced[source] == quarantined, source
    traced = pl.read_csv(run.validation_dir / "quarantine_source_lines.csv", infer_schema=False)
    ks4 = traced.filter(pl.col("source_file") == "NPD_KS4_pupils.csv")
    assert ks4.height > 0  # quarantined rows of the second part point into its own file


def test_every_written_row_points_back_to_its_source_file_and_line(
    layout_world: Path, adapted: Path
) -> None:
    text: dict[str, list[str]] = {}  # source file -> its lines
    for source in SOURCES_MADE:
        lines = pl.read_csv(adapted / "adapted" / f"source_lines_{source}.csv", infer_schema=False)
        written = _csv(adapted / f"{source}.csv")
        assert lines.height == written.height
        assert lines["record_id"].to_list() == written["record_id"].to_list()
        for row in lines.gather_every(53).iter_rows(named=True):
            name = row["source_file"]
            if name not in text:
                text[name] = (layout_world / name).read_text().splitlines()
            assert row["record_id"] in text[name][int(row["source_line"]) - 1], (source, row)


def test_cohort_inspect_names_the_layouts(layout_world: Path, tmp_path: Path) -> None:
    from deliveries import inspect_delivery

    text = inspect_delivery(layout_world)
    for name in LAYOUTS:
        assert f"layout `{name}`" in text
    assert "| emergency_department | attendances (ECDS_attendances*.csv) | none |" in text
    assert "| school_census | pupils (School_census_*.csv) | none |" in text
    assert "| attainment | ks2 (NPD_KS2_pupils*.csv) + ks4 (NPD_KS4_pupils*.csv) | none |" in text
    r = _cohort("inspect", "--data", str(layout_world), env=_env(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    for name in LAYOUTS:
        assert name in r.stderr + r.stdout


def test_validating_the_layout_folder_says_to_adapt_it_first(layout_world: Path) -> None:
    from deliveries.adapt import refuse_unadapted
    from ground.errors import InputDataError

    with pytest.raises(InputDataError, match=r"in the ecds layout .*run `cohort adapt --source"):
        refuse_unadapted(layout_world)


# --- errors: one line, nothing written ---------------------------------------------------------


def _layout_copy(tmp_path: Path, name: str, edit) -> Path:  # type: ignore[no-untyped-def]
    raw = yaml.safe_load(load_layout(name).path.read_text(encoding="utf-8"))
    edit(raw)
    path = tmp_path / f"edited_{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _nothing_written(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


@pytest.mark.parametrize(
    ("file", "column", "table"),
    [
        ("ECDS_attendances.csv", "EC_Diagnosis_01", "attendances"),
        ("School_census_pupils.csv", "SENprovision", "pupils"),
        ("NPD_KS4_pupils.csv", "KS4_ATT8", "ks4"),
    ],
)
def test_a_delivery_missing_a_column_stops_with_one_line_and_nothing_written(
    layout_world: Path, tmp_path: Path, file: str, column: str, table: str
) -> None:
    source = tmp_path / "delivery"
    shutil.copytree(layout_world, source, ignore=shutil.ignore_patterns("truth"))
    text = (source / file).read_text().splitlines(keepends=True)
    (source / file).write_text(text[0].replace(column, "RENAMED") + "".join(text[1:]))
    out = tmp_path / "out"
    with pytest.raises(SourceLayoutError, match=rf"{file} \(table {table}\): column\(s\) {column}"):
        adapt_delivery(source_dir=source, out_dir=out, layout=load_layouts(LAYOUTS))
    _nothing_written(out)


def test_a_mapping_recoding_to_an_unknown_code_is_refused(tmp_path: Path) -> None:
    """A recoding whose target is outside the contract's code list, or does not match the
    contract column's pattern (an ECDS concept mapped to something that is not ICD-10)."""

    def sex(raw):  # type: ignore[no-untyped-def]
        raw["outputs"]["emergency_department"]["columns"]["sex"]["codes"]["X"] = "Unknown"

    with pytest.raises(MappingError, match=r"sex.codes: Unknown not in code list sex") as err:
        load_layout(_layout_copy(tmp_path, "ecds", sex))
    assert "\n" not in str(err.value)

    def diagnosis(raw):  # type: ignore[no-untyped-def]
        raw["outputs"]["emergency_department"]["columns"]["diagnosis"]["codes"]["44465007"] = (
            "Sprain of ankle"
        )

    with pytest.raises(MappingError, match=r"diagnosis.codes: 'Sprain of ankle' does not match"):
        load_layout(_layout_copy(tmp_path, "ecds", diagnosis))

    def key_stage(raw):  # type: ignore[no-untyped-def]
        raw["outputs"]["attainment"]["parts"][1]["columns"]["key_stage"]["value"] = "GCSE"

    with pytest.raises(MappingError, match=r"key_stage.value: 'GCSE' does not match"):
        load_layout(_layout_copy(tmp_path, "key_stages", key_stage))


def test_a_malformed_parts_or_value_rule_is_refused_at_load(tmp_path: Path) -> None:
    def beside(raw):  # type: ignore[no-untyped-def]
        raw["outputs"]["attainment"]["rows"] = "ks2"

    with pytest.raises(MappingError, match=r"attainment.parts: give a list of mappings"):
        load_layout(_layout_copy(tmp_path, "key_stages", beside))

    def nested(raw):  # type: ignore[no-untyped-def]
        parts = raw["outputs"]["attainment"]["parts"]
        parts[1] = {"parts": [parts[1]]}

    with pytest.raises(MappingError, match=r"a part cannot have parts of its own"):
        load_layout(_layout_copy(tmp_path, "key_stages", nested))

    def value_and_from(raw):  # type: ignore[no-untyped-def]
        raw["outputs"]["attainment"]["parts"][0]["columns"]["key_stage"]["from"] = "KS2_UPN"

    with pytest.raises(MappingError, match=r"key_stage.value: give the text alone"):
        load_layout(_layout_copy(tmp_path, "key_stages", value_and_from))

    def required(raw):  # type: ignore[no-untyped-def]
        del raw["outputs"]["attainment"]["parts"][1]["columns"]["key_stage"]

    with pytest.raises(MappingError, match=r"parts\[1\]: required contract column\(s\) key_stage"):
        load_layout(_layout_copy(tmp_path, "key_stages", required))


@pytest.mark.parametrize(
    ("name", "source", "column", "delivered"),
    [
        ("ecds", "emergency_department", "arrival_date", "Arrival_Date"),
        ("school_census", "school_census", "date_of_birth", "DOB"),
    ],
)
def test_a_date_format_that_does_not_read_the_dates_stops_with_nothing_written(
    layout_world: Path, tmp_path: Path, name: str, source: str, column: str, delivered: str
) -> None:
    def edit(raw):  # type: ignore[no-untyped-def]
        raw["outputs"][source]["columns"][column]["date"] = "%d/%m/%Y"

    layouts = [load_layout(_layout_copy(tmp_path, name, edit))] + [
        load_layout(n) for n in LAYOUTS if n != name
    ]
    out = tmp_path / "out"
    with pytest.raises(MappingError, match=rf"values of {delivered} do not read as") as err:
        adapt_delivery(source_dir=layout_world, out_dir=out, layout=layouts)
    assert "\n" not in str(err.value) and "values not shown" in str(err.value)
    _nothing_written(out)


def test_cohort_adapt_prints_one_line_and_exits_2(layout_world: Path, tmp_path: Path) -> None:
    def edit(raw):  # type: ignore[no-untyped-def]
        raw["outputs"]["school_census"]["columns"]["sex"]["codes"] = {"M": "Male"}

    bad = _layout_copy(tmp_path, "school_census", edit)
    r = _cohort(
        "adapt", "--source", str(layout_world), "--out", str(tmp_path / "o"),
        "--layout", f"ecds,key_stages,{bad}", env=_env(tmp_path),
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().count("\n") == 0 and "error:" in r.stderr
    assert "Male not in code list sex" in r.stderr
    assert not (tmp_path / "o").exists()


# --- the whole run -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_on_the_adapted_delivery_gives_the_native_runs_cohort_and_estimates(
    full_run: Path, adapted: Path, tmp_path: Path
) -> None:
    """End to end: `cohort run` on the adapted delivery (ECDS, school census and key stage
    layouts) gives the session run's cohort tables and estimates byte for byte; its analysis
    zone is the native one but for the ECDS diagnoses given back differently."""
    r = _cohort("run", "--data", str(adapted), "--out", str(tmp_path / "run"), env=_env(tmp_path),
                timeout=1800)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    native, layout = zone_tables(full_run, "cohort"), zone_tables(run, "cohort")
    assert set(native) == set(layout) and {"children", "person_time"} <= set(native)
    for name, table in native.items():
        assert layout[name].equals(table), name
    for results in ("estimates.csv", "estimate_analyses.csv"):
        assert (run / "results" / results).read_bytes() == (
            full_run / "results" / results
        ).read_bytes(), results
    native, layout = zone_tables(full_run, "analysis"), zone_tables(run, "analysis")
    assert set(native) == set(layout)
    for name, table in native.items():
        if name == "emergency_department":
            table = _sorted(_ecds_diagnoses(table))
        assert layout[name].equals(table), name
