"""Real deliveries, Wales and several layouts per delivery (issue #23): a world written in the
Welsh looked after children census (`wales_lac`) and the Children Receiving Care and Support
census (`wales_crcs`) adapted back into the contracts' extracts gives the native extracts, and a
run on it the native run's cohort tables and estimates; a delivery may hold several layouts
(the 903 for social care and HES for health) but never two that make the same contract; the
Welsh layouts' mapping and delivery errors are one line, with nothing written."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from deliveries import (
    LayoutConflictError,
    MappingError,
    SourceLayoutError,
    adapt_delivery,
    declared_layouts,
    detect_layout,
    detect_layouts,
    inspect_delivery,
    load_layout,
    load_layouts,
)
from ground.errors import ConfigError
from tests.e2e import _cohort, _env, contract_rows, zone_tables

WALES = ("wales_crcs", "wales_lac")
SOCIAL_CARE = ("looked_after_episodes", "care_support_census")


@pytest.fixture(scope="module")
def wales_world(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's world (2,500 children, seed 13, default scenario) with its social care
    written in the two Welsh returns."""
    from synthetic_data import generate_world

    out = tmp_path_factory.mktemp("wales_world")
    generate_world(n_children=2500, seed=13, out_dir=out, layout=["wales_lac", "wales_crcs"])
    return out


@pytest.fixture(scope="module")
def wales_adapted(wales_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wales_adapted") / "delivery"
    adapt_delivery(source_dir=wales_world, out_dir=out, layout=load_layouts(WALES))
    return out


def test_the_welsh_world_holds_the_returns_and_the_same_truth(
    world: Path, wales_world: Path
) -> None:
    names = {p.name for p in wales_world.iterdir()}
    assert "WLAC_episodes.csv" in names
    assert any(n.startswith("CRCS_20") and n.endswith(".csv") for n in names)
    assert not names & {"looked_after_episodes.csv", "care_support_census.csv"}
    header = (wales_world / "WLAC_episodes.csv").read_text().split("\n", 2)
    assert header[0].startswith("LocalAuthority,ChildIdentifier,DateOfBirth,Gender,")
    assert header[1].split(",")[2][2] == "/"  # dd/mm/yyyy
    for other in ("population_register.csv", "school_census.csv", "hospital_admissions.csv"):
        assert filecmp.cmp(world / other, wales_world / other, shallow=False)
    for truth in ("record_person.parquet", "persons.parquet", "effects.json"):
        assert filecmp.cmp(world / "truth" / truth, wales_world / "truth" / truth, shallow=False)
    meta = json.loads((wales_world / "delivery.json").read_text())
    assert meta["layouts"] == ["wales_lac", "wales_crcs"] and "layout" not in meta
    assert detect_layouts(wales_world) == list(WALES)
    assert detect_layout(wales_world) == "wales_crcs,wales_lac"


def test_adapting_the_welsh_world_gives_the_native_extracts_byte_for_byte(
    world: Path, wales_adapted: Path
) -> None:
    """Both Welsh returns carry every contract column (the LAC episode form repeats the child's
    details on each row): the adapted extracts are the native files byte for byte, and the
    other sources are copied unchanged."""
    for source in (*SOCIAL_CARE, "population_register", "attainment", "emergency_department"):
        name = f"{source}.csv"
        assert filecmp.cmp(world / name, wales_adapted / name, shallow=False), name
    meta = json.loads((wales_adapted / "delivery.json").read_text())
    assert meta["layouts"] == list(WALES)
    assert meta["adapted_sources"] == sorted(SOCIAL_CARE)


def test_a_messy_world_round_trips_through_the_welsh_returns(tmp_path: Path) -> None:
    """With the messy scenario's defects (unparseable and placeholder dates, codes outside the
    lists, duplicated and malformed lines, identifier noise) every row comes back, defects and
    all; the malformed lines stay malformed (validation quarantines them)."""
    from synthetic_data import generate_world

    native, layout_dir = tmp_path / "native", tmp_path / "layout"
    for out, layout in ((native, None), (layout_dir, "wales_lac,wales_crcs")):
        generate_world(n_children=1500, seed=5, scenario="messy", out_dir=out, layout=layout)
    summary = adapt_delivery(
        source_dir=layout_dir, out_dir=tmp_path / "adapted", layout=load_layouts(WALES)
    )
    for source in SOCIAL_CARE:
        name = f"{source}.csv"
        assert contract_rows(tmp_path / "adapted" / name).equals(contract_rows(native / name)), (
            source
        )
        malformed_native = (native / name).read_text().count(",EXTRA\n")
        assert summary.malformed[source] == malformed_native, source
    assert sum(summary.malformed.values()) > 0, "the messy world should plant malformed lines"
    defects = pl.read_parquet(layout_dir / "truth" / "defects.parquet")
    planted = defects.filter(pl.col("source").is_in(SOCIAL_CARE))["defect"].unique().to_list()
    assert {"unparseable_date", "code_outside_list", "malformed_line"} <= set(planted)


def test_one_delivery_may_hold_the_903_and_hes_layouts_at_once(world: Path, tmp_path: Path) -> None:
    """A delivery with social care in the 903 + CIN census and health as HES APC spells, adapted
    in one step (the layouts detected): each contract is made by its layout, the rest copied."""
    from synthetic_data import generate_world

    source = tmp_path / "delivery"
    generate_world(n_children=2500, seed=13, out_dir=source, layout=["ssda903", "hes_apc"])
    assert json.loads((source / "delivery.json").read_text())["layouts"] == ["ssda903", "hes_apc"]
    assert detect_layouts(source) == ["hes_apc", "ssda903"]
    text = inspect_delivery(source)
    assert "layout `hes_apc`" in text and "layout `ssda903`" in text
    assert "| hospital_admissions | apc (HES_APC_spells.csv) |" in text
    out = tmp_path / "adapted"
    summary = adapt_delivery(
        source_dir=source, out_dir=out, layout=load_layouts(detect_layouts(source))
    )
    assert set(summary.rows) == {"hospital_admissions", *SOCIAL_CARE}
    for same in ("hospital_admissions", "care_support_census", "school_census", "attainment"):
        assert filecmp.cmp(world / f"{same}.csv", out / f"{same}.csv", shallow=False), same
    assert {p.name for p in (out / "adapted").iterdir()} >= {
        "source_lines_hospital_admissions.csv",
        "source_lines_looked_after_episodes.csv",
        "dfe_ssda903_failures.csv",
    }
    assert json.loads((out / "delivery.json").read_text())["layouts"] == ["hes_apc", "ssda903"]


def test_two_layouts_making_one_contract_are_refused_with_nothing_written(
    wales_world: Path, tmp_path: Path
) -> None:
    """The English 903 and the Welsh looked-after census both make the looked-after episodes:
    `synth` refuses to write both, `adapt` refuses to read both, `inspect` says so."""
    from synthetic_data import generate_world

    out = tmp_path / "world"
    with pytest.raises(ConfigError, match="ssda903 and wales_lac both write looked_after_ep"):
        generate_world(n_children=200, seed=1, out_dir=out, layout="ssda903,wales_lac")
    assert not out.exists()
    with pytest.raises(LayoutConflictError, match=r"ssda903 and wales_lac both make looked_after"):
        load_layouts(["ssda903", "wales_lac"])
    # a delivery holding both returns' files
    source = tmp_path / "both"
    shutil.copytree(wales_world, source, ignore=shutil.ignore_patterns("truth"))
    (source / "SSDA903_header.csv").write_text("LA,CHILD,SEX,DOB\n")
    (source / "SSDA903_episodes.csv").write_text("LA,CHILD,DECOM,RNE,LS,PLACE,DEC,REC,HOME_POST\n")
    (source / "CIN_census_2020.xml").write_text("<Message/>\n")
    (source / "delivery.json").unlink()
    assert "CONFLICT: more than one detected layout makes" in inspect_delivery(source)
    r = _cohort("adapt", "--source", str(source), "--out", str(tmp_path / "o"), env=_env(tmp_path))
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().count("\n") == 0 and "both make" in r.stderr
    assert not (tmp_path / "o").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cohort_synth_and_adapt_take_several_layouts_on_the_command_line(
    world: Path, tmp_path: Path
) -> None:
    """`synth --layout wales_lac --layout wales_crcs` (repeated), `adapt` reading the layouts
    delivery.json declares; prelinked cannot be combined with a return layout."""
    from synthetic_data.layouts import layout_names

    env = _env(tmp_path)
    source, out = tmp_path / "src", tmp_path / "data"
    r = _cohort(
        "synth", "--children", "300", "--seed", "3", "--out", str(source),
        "--layout", "wales_lac", "--layout", "wales_crcs", env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert declared_layouts(source) == ["wales_lac", "wales_crcs"]
    text = inspect_delivery(source)
    assert "layout `wales_crcs`" in text and "layout `wales_lac`" in text
    r = _cohort("adapt", "--source", str(source), "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wales_lac + wales_crcs" in r.stderr  # delivery.json's order, not detection's
    assert (out / "looked_after_episodes.csv").is_file()
    assert (out / "care_support_census.csv").is_file()
    with pytest.raises(ConfigError, match="prelinked .* cannot be combined"):
        layout_names("prelinked,hes_apc")


def test_an_older_single_layout_delivery_json_is_still_read(tmp_path: Path) -> None:
    (tmp_path / "delivery.json").write_text('{"layout": "ssda903", "seed": 1}\n')
    assert declared_layouts(tmp_path) == ["ssda903"]
    (tmp_path / "delivery.json").write_text('{"layouts": ["ssda903", "hes_apc"]}\n')
    assert declared_layouts(tmp_path) == ["ssda903", "hes_apc"]


def _welsh_copy(tmp_path: Path, name: str, edit) -> Path:  # type: ignore[no-untyped-def]
    raw = yaml.safe_load(load_layout(name).path.read_text(encoding="utf-8"))
    edit(raw)
    path = tmp_path / f"edited_{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_a_welsh_mapping_naming_a_missing_column_or_an_unknown_code_is_refused_at_load(
    tmp_path: Path,
) -> None:
    def missing(raw):  # type: ignore[no-untyped-def]
        raw["outputs"]["looked_after_episodes"]["columns"]["legal_status"]["from"] = "LegalStat"

    def unknown(raw):  # type: ignore[no-untyped-def]
        codes = raw["outputs"]["care_support_census"]["columns"]["child_protection_category"]
        codes["codes"]["Financial"] = "FIN"

    with pytest.raises(MappingError, match=r"legal_status.from: column 'LegalStat' is not decl"):
        load_layout(_welsh_copy(tmp_path, "wales_lac", missing))
    with pytest.raises(MappingError, match=r"FIN not in code list child_protection_categories"):
        load_layout(_welsh_copy(tmp_path, "wales_crcs", unknown))


def test_a_welsh_return_missing_a_declared_column_stops_with_nothing_written(
    wales_world: Path, tmp_path: Path
) -> None:
    source = tmp_path / "delivery"
    shutil.copytree(wales_world, source, ignore=shutil.ignore_patterns("truth"))
    census = sorted(source.glob("CRCS_*.csv"))[3]
    text = census.read_text().splitlines(keepends=True)
    census.write_text(text[0].replace("CategoryOfNeed,", "NeedCode,") + "".join(text[1:]))
    out = tmp_path / "out"
    with pytest.raises(SourceLayoutError, match=r"column\(s\) CategoryOfNeed missing") as err:
        adapt_delivery(source_dir=source, out_dir=out, layout=load_layouts(WALES))
    assert census.name in str(err.value) and "NeedCode" not in str(err.value)
    assert "\n" not in str(err.value)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_welsh_date_format_that_does_not_read_the_dates_stops_in_one_line(
    wales_world: Path, tmp_path: Path
) -> None:
    """`cohort adapt` with a layout whose date format reads the CRCS dates the American way:
    one line, exit 2, nothing written (the other layout of the delivery included)."""

    def edit(raw):  # type: ignore[no-untyped-def]
        raw["outputs"]["care_support_census"]["columns"]["referral_date"]["date"] = "%m/%d/%Y"

    bad = _welsh_copy(tmp_path, "wales_crcs", edit)
    out = tmp_path / "o"
    r = _cohort(
        "adapt", "--source", str(wales_world), "--out", str(out),
        "--layout", "wales_lac", "--layout", str(bad), env=_env(tmp_path),
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    # the progress log names the layouts' sources as they are read; the error is one line
    error = [line for line in r.stderr.splitlines() if not line.startswith("INFO ")]
    assert len(error) == 1 and error[0].startswith("error:"), r.stderr[-2000:]
    assert "values of CareAndSupportStartDate do not read as '%m/%d/%Y'" in error[0]
    assert "(first: CRCS_20" in error[0]  # the first failing file and line
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_unknown_code_in_a_welsh_return_is_quarantined_and_traced_to_its_line(
    wales_world: Path, tmp_path: Path
) -> None:
    """A category of abuse the layout does not recode (financial abuse, which Wales's
    safeguarding procedures name and the contract does not) is written as delivered; validation
    quarantines its row as code_outside_list, and adapted/ points it to its file and line."""
    from validation import ValidationSettings, validate_delivery

    source = tmp_path / "delivery"
    shutil.copytree(wales_world, source, ignore=shutil.ignore_patterns("truth"))
    census = next(p for p in sorted(source.glob("CRCS_*.csv")) if ",Neglect," in p.read_text())
    lines = census.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if ",Neglect," in line)
    lines[at] = lines[at].replace(",Neglect,", ",Financial,")
    census.write_text("".join(lines))
    data = tmp_path / "data"
    adapt_delivery(source_dir=source, out_dir=data, layout=load_layouts(WALES))
    from ground.run_layout import RunLayout

    run = RunLayout.at(tmp_path / "run")
    summary = validate_delivery(
        data_dir=data, layout=run, settings=ValidationSettings(run_great_expectations=False)
    )
    assert summary.sources["care_support_census"].rows_quarantined >= 1
    traced = pl.read_csv(data / "adapted" / "source_lines_care_support_census.csv",
                         infer_schema=False)  # fmt: skip
    hit = traced.filter(
        (pl.col("source_file") == census.name) & (pl.col("source_line") == str(at + 1))
    )
    assert hit.height == 1
    written = pl.read_csv(data / "care_support_census.csv", infer_schema=False)
    row = written.filter(pl.col("record_id") == hit["record_id"][0])
    assert row["child_protection_category"].to_list() == ["Financial"]


@pytest.mark.slow
def test_a_run_on_the_adapted_welsh_delivery_gives_the_native_runs_cohort_and_estimates(
    full_run: Path, wales_adapted: Path, tmp_path: Path
) -> None:
    """End to end: `cohort run` on the adapted Welsh delivery gives the session run's cohort
    tables and estimates."""
    r = _cohort("run", "--data", str(wales_adapted), "--out", str(tmp_path / "run"),
                env=_env(tmp_path), timeout=1200)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    native, wales = zone_tables(full_run, "cohort"), zone_tables(run, "cohort")
    assert set(native) == set(wales) and {"children", "person_time"} <= set(native)
    for name, table in native.items():
        assert wales[name].equals(table), name
    for results in ("estimates.csv", "estimate_analyses.csv"):
        assert (run / "results" / results).read_bytes() == (
            full_run / "results" / results
        ).read_bytes(), results
