"""Real deliveries: a world written in a statutory-return layout (SSDA903 CSVs + CIN census XML)
adapted back into the contracts' extracts (`cohort adapt`), and the layout mapping's errors."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from deliveries import MappingError, SourceLayoutError, adapt_delivery, detect_layout, load_layout
from tests.e2e import _cohort, _env, contract_rows, zone_tables

SOCIAL_CARE = ("looked_after_episodes", "care_support_census")


@pytest.fixture(scope="module")
def layout_world(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's world (same size, seed and scenario) written in the ssda903 layout."""
    from synthetic_data import generate_world

    out = tmp_path_factory.mktemp("ssda903_world")
    generate_world(n_children=2500, seed=13, out_dir=out, layout="ssda903")
    return out


@pytest.fixture(scope="module")
def adapted(layout_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adapted") / "delivery"
    adapt_delivery(source_dir=layout_world, out_dir=out, layout=load_layout("ssda903"))
    return out


def test_the_layout_world_holds_the_layout_files_and_the_same_truth(
    world: Path, layout_world: Path
) -> None:
    names = {p.name for p in layout_world.iterdir()}
    assert {"SSDA903_header.csv", "SSDA903_episodes.csv"} <= names
    assert any(n.startswith("CIN_census_") and n.endswith(".xml") for n in names)
    assert not names & {"looked_after_episodes.csv", "care_support_census.csv"}
    for other in ("population_register.csv", "school_census.csv", "hospital_admissions.csv"):
        assert filecmp.cmp(world / other, layout_world / other, shallow=False)
    for truth in ("record_person.parquet", "persons.parquet", "effects.json"):
        assert filecmp.cmp(world / "truth" / truth, layout_world / "truth" / truth, shallow=False)
    assert detect_layout(layout_world) == "ssda903"
    assert detect_layout(world) is None


def _header_values(episodes: pl.DataFrame) -> pl.DataFrame:
    """Native episodes with each child's date of birth and sex taken from its first row: what
    the 903 carries (one Header row per child)."""
    first = episodes.group_by(["la_code", "la_child_id"], maintain_order=True).agg(
        dob=pl.col("date_of_birth").first(), sx=pl.col("sex").first()
    )
    return (
        episodes.join(first, on=["la_code", "la_child_id"], how="left", maintain_order="left")
        .with_columns(date_of_birth=pl.col("dob"), sex=pl.col("sx"))
        .drop("dob", "sx")
    )


def test_adapting_the_layout_world_gives_the_native_extracts(world: Path, adapted: Path) -> None:
    """Same seed, same world: the adapted census is the native file byte for byte, the adapted
    episodes are the native rows in the native order with the one thing the 903 cannot carry
    (a second date of birth or sex for a child) replaced by the header's; the other sources are
    copied unchanged."""
    care = "care_support_census"
    assert filecmp.cmp(world / f"{care}.csv", adapted / f"{care}.csv", shallow=False)
    native = pl.read_csv(world / "looked_after_episodes.csv", infer_schema=False)
    got = pl.read_csv(adapted / "looked_after_episodes.csv", infer_schema=False)
    assert got.equals(_header_values(native))
    changed = (got["date_of_birth"] != native["date_of_birth"]).sum()
    assert changed <= 0.01 * native.height
    for other in ("population_register", "attainment", "emergency_department"):
        assert filecmp.cmp(world / f"{other}.csv", adapted / f"{other}.csv", shallow=False)


def test_a_messy_world_round_trips_apart_from_what_the_903_header_cannot_carry(
    tmp_path: Path,
) -> None:
    """With the messy scenario's defects (unparseable and placeholder dates, codes outside the
    lists, duplicated and malformed lines, identifier noise) every row comes back, defects and
    all; the one loss is the 903 header's single date of birth and sex per child."""
    from synthetic_data import generate_world

    native, layout_dir = tmp_path / "native", tmp_path / "layout"
    for out, layout in ((native, None), (layout_dir, "ssda903")):
        generate_world(n_children=1500, seed=5, scenario="messy", out_dir=out, layout=layout)
    summary = adapt_delivery(
        source_dir=layout_dir, out_dir=tmp_path / "adapted", layout=load_layout("ssda903")
    )
    adapted = tmp_path / "adapted"
    care = "care_support_census"
    assert contract_rows(adapted / f"{care}.csv").equals(contract_rows(native / f"{care}.csv"))
    malformed_native = (native / f"{care}.csv").read_text().count(",EXTRA\n")
    assert malformed_native > 0, "the messy world should plant malformed lines"
    assert summary.malformed[care] == malformed_native
    # episodes: the child's first row gives the header's date of birth and sex
    expected = _header_values(
        pl.read_csv(
            native / "looked_after_episodes.csv", infer_schema=False, truncate_ragged_lines=True
        )
    )
    got = contract_rows(adapted / "looked_after_episodes.csv")
    assert got.equals(expected.sort(expected.columns, nulls_last=True))
    defects = pl.read_parquet(layout_dir / "truth" / "defects.parquet")
    planted = defects.filter(pl.col("source").is_in(SOCIAL_CARE))["defect"].unique().to_list()
    assert {"unparseable_date", "code_outside_list", "duplicate_row", "malformed_line"} <= set(
        planted
    )


def test_every_written_row_points_back_to_its_source_file_and_line(
    layout_world: Path, adapted: Path
) -> None:
    for source in SOCIAL_CARE:
        lines = pl.read_csv(adapted / "adapted" / f"source_lines_{source}.csv", infer_schema=False)
        written = pl.read_csv(adapted / f"{source}.csv", infer_schema=False)
        assert lines.height == written.height
        assert lines["record_id"].to_list() == written["record_id"].to_list()
        for row in lines.gather_every(97).iter_rows(named=True):
            text = (layout_world / row["source_file"]).read_text().splitlines()
            at = int(row["source_line"]) - 1
            # 903: the episode's own line; CIN XML: its Assessments element, RecordID inside it
            window = "\n".join(text[at : at + 3])
            assert row["record_id"] in window, (source, row)


def test_cohort_inspect_names_the_layout_and_what_it_leaves_empty(
    world: Path, layout_world: Path, tmp_path: Path
) -> None:
    from deliveries import inspect_delivery

    text = inspect_delivery(layout_world)
    assert "layout `ssda903`" in text
    assert "| looked_after_episodes | episodes (SSDA903_episodes.csv) + header" in text
    assert "| school_census | native school_census.csv | - |" in text
    assert "no shipped layout detected" in inspect_delivery(world)

    def edit(raw):  # type: ignore[no-untyped-def]
        del raw["outputs"]["care_support_census"]["columns"]["postcode"]

    layout = load_layout(_layout_copy(tmp_path, edit))
    assert layout.outputs["care_support_census"].uncovered_columns() == ["postcode"]
    r = _cohort("inspect", "--data", str(layout_world), env=_env(tmp_path))
    assert r.returncode == 0 and "ssda903" in r.stderr


def _layout_copy(tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    raw = yaml.safe_load(load_layout("ssda903").path.read_text(encoding="utf-8"))
    edit(raw)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_a_mapping_naming_a_missing_column_is_refused_at_load(tmp_path: Path) -> None:
    def edit(raw):  # type: ignore[no-untyped-def]
        raw["outputs"]["looked_after_episodes"]["columns"]["episode_start"]["from"] = "DECOMM"

    with pytest.raises(MappingError, match=r"episode_start.from: column 'DECOMM' is not declared"):
        load_layout(_layout_copy(tmp_path, edit))


def test_a_mapping_recoding_to_an_unknown_code_is_refused_at_load(tmp_path: Path) -> None:
    def edit(raw):  # type: ignore[no-untyped-def]
        raw["outputs"]["looked_after_episodes"]["columns"]["sex"]["codes"]["2"] = "Female"

    with pytest.raises(MappingError, match=r"sex.codes: Female not in code list sex"):
        load_layout(_layout_copy(tmp_path, edit))


def test_a_mapping_leaving_a_required_column_unmapped_is_refused(tmp_path: Path) -> None:
    def edit(raw):  # type: ignore[no-untyped-def]
        del raw["outputs"]["looked_after_episodes"]["columns"]["episode_start"]

    with pytest.raises(MappingError, match=r"required contract column\(s\) episode_start"):
        load_layout(_layout_copy(tmp_path, edit))


def test_a_date_format_that_does_not_read_the_dates_stops_with_nothing_written(
    layout_world: Path, tmp_path: Path
) -> None:
    def edit(raw):  # type: ignore[no-untyped-def]
        raw["outputs"]["looked_after_episodes"]["columns"]["episode_start"]["date"] = "%m/%d/%Y"

    layout = load_layout(_layout_copy(tmp_path, edit))
    out = tmp_path / "out"
    with pytest.raises(MappingError, match=r"values of DECOM do not read as '%m/%d/%Y'") as err:
        adapt_delivery(source_dir=layout_world, out_dir=out, layout=layout)
    assert "\n" not in str(err.value)
    assert "SSDA903_episodes.csv line" in str(err.value)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_delivery_missing_a_declared_column_stops_with_nothing_written(
    layout_world: Path, tmp_path: Path
) -> None:
    source = tmp_path / "delivery"
    shutil.copytree(layout_world, source, ignore=shutil.ignore_patterns("truth"))
    episodes = source / "SSDA903_episodes.csv"
    text = episodes.read_text().splitlines(keepends=True)
    episodes.write_text(text[0].replace("DECOM,", "DATE_COMMENCED,") + "".join(text[1:]))
    out = tmp_path / "out"
    with pytest.raises(SourceLayoutError, match=r"column\(s\) DECOM missing") as err:
        adapt_delivery(source_dir=source, out_dir=out, layout=load_layout("ssda903"))
    assert "DATE_COMMENCED" not in str(err.value)  # header cells are never echoed
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder


def test_cohort_adapt_prints_one_line_and_exits_2(layout_world: Path, tmp_path: Path) -> None:
    def edit(raw):  # type: ignore[no-untyped-def]
        raw["outputs"]["care_support_census"]["columns"]["sex"]["codes"]["9"] = "X"

    bad = _layout_copy(tmp_path, edit)
    r = _cohort(
        "adapt", "--source", str(layout_world), "--out", str(tmp_path / "o"), "--layout", str(bad),
        env=_env(tmp_path),
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().count("\n") == 0 and "error:" in r.stderr
    assert "X not in code list sex" in r.stderr
    assert not (tmp_path / "o").exists()


def _planted_903(layout_world: Path, tmp_path: Path) -> tuple[Path, dict[str, set[int]]]:
    """A copy of the world's 903 files with one breach of each DfE rule planted, and the line
    each breach is on."""
    source = tmp_path / "delivery"
    shutil.copytree(layout_world, source, ignore=shutil.ignore_patterns("truth"))
    header_path, episodes_path = source / "SSDA903_header.csv", source / "SSDA903_episodes.csv"
    header = pl.read_csv(header_path, infer_schema=False)
    episodes = pl.read_csv(episodes_path, infer_schema=False)
    planted: dict[str, set[int]] = {}

    def plant(
        df: pl.DataFrame, row: int, column: str, value: str | None, rule: str
    ) -> pl.DataFrame:
        planted.setdefault(rule, set()).add(row + 2)  # the header is line 1
        return df.with_columns(df[column].scatter(row, value))

    header = plant(header, 3, "SEX", "3", "101")
    header = plant(header, 5, "DOB", "31/02/2010", "102")
    # children with two or more episodes, first and second rows of each
    firsts = (
        episodes.with_row_index()
        .group_by(["LA", "CHILD"], maintain_order=True)
        .agg(pl.col("index").first().alias("i0"), pl.col("index").slice(1, 1).first().alias("i1"))
        .filter(pl.col("i1").is_not_null())
    )
    (a0, a1), (b0, _), (c0, _), (d0, d1), (e0, _), (f0, _), (g0, _) = (
        firsts.select("i0", "i1").rows()[k] for k in range(7)
    )
    episodes = plant(episodes, e0, "DECOM", "2015-13-01", "141")
    episodes = plant(episodes, a0, "DEC", None, "142")
    episodes = plant(episodes, f0, "RNE", "Q", "143")
    episodes = plant(episodes, b0, "LS", "Z9", "144")
    episodes = plant(episodes, c0, "PLACE", "U9", "146")
    episodes = plant(episodes, g0, "REC", "E99", "149")
    # 357: a first episode that is not S; 501: the second starts before the first ends
    episodes = plant(episodes, d0, "RNE", "P", "357")
    start = episodes["DECOM"][d1]
    episodes = plant(episodes, d0, "DEC", "31/12/2099", "ignored")
    planted["501"] = {d1 + 2}
    planted.pop("ignored")
    del a1, start
    header.write_csv(header_path)
    episodes.write_csv(episodes_path)
    return source, planted


def test_the_dfe_rules_report_every_planted_breach(layout_world: Path, tmp_path: Path) -> None:
    """Each of the ten DfE rules finds its planted breach on its line, beyond what the clean
    delivery already fails."""

    def failures(source: Path, out: Path) -> dict[str, set[int]]:
        adapt_delivery(source_dir=source, out_dir=out, layout=load_layout("ssda903"))
        found: dict[str, set[int]] = {}
        rows = pl.read_csv(out / "adapted" / "dfe_ssda903_failures.csv", infer_schema=False)
        for rule, line in rows.select("rule", "source_line").rows():
            found.setdefault(rule, set()).add(int(line))
        return found

    baseline = failures(layout_world, tmp_path / "clean")
    source, planted = _planted_903(layout_world, tmp_path)
    found = failures(source, tmp_path / "planted")
    from deliveries.dfe_rules import RULES

    assert set(planted) == {r.code for r in RULES}
    for rule, lines in planted.items():
        new = found.get(rule, set()) - baseline.get(rule, set())
        assert lines <= new, (rule, lines, new)
    # the planted 142 breach also makes its episode overlap the next one: nothing else is new
    extra = {r: found[r] - baseline.get(r, set()) - planted.get(r, set()) for r in found}
    assert all(len(v) <= 2 for v in extra.values()), extra


def test_the_dfe_cin_rules_read_every_section47_enquiry_and_report_planted_breaches(
    world: Path, layout_world: Path, tmp_path: Path
) -> None:
    """The CIN census's Section 47 enquiries are read (one per protection plan the world
    records) and checked by the DfE's rules 2889, 8615 and 8839, not mapped: the clean delivery
    fails none; each planted breach is found on its enquiry's line, and nothing else."""

    def failures(source: Path, out: Path) -> tuple[int | None, dict[str, set[tuple[str, int]]]]:
        summary = adapt_delivery(source_dir=source, out_dir=out, layout=load_layout("ssda903"))
        found: dict[str, set[tuple[str, int]]] = {}
        rows = pl.read_csv(out / "adapted" / "dfe_cin_section47_failures.csv", infer_schema=False)
        for rule, file, line in rows.select("rule", "source_file", "source_line").rows():
            found.setdefault(rule, set()).add((file, int(line)))
        return summary.section47_enquiries, found

    native = pl.read_csv(world / "care_support_census.csv", infer_schema=False)
    plans = native["child_protection_plan_start"].str.contains(r"^\d{4}-\d{2}-\d{2}$").sum()
    enquiries, clean = failures(layout_world, tmp_path / "clean")
    assert enquiries == plans > 0
    assert clean == {}
    source = tmp_path / "delivery"
    shutil.copytree(layout_world, source, ignore=shutil.ignore_patterns("truth"))
    census = max(source.glob("CIN_census_*.xml"), key=lambda p: p.read_text().count("<Section47>"))
    lines = census.read_text().splitlines(keepends=True)
    at = [i for i, line in enumerate(lines) if "<Section47>" in line]
    assert len(at) >= 3 and "<S47ActualStartDate>" in lines[at[0] + 1]
    # 2889: the enquiry starts before the referral; 8615: after its initial conference
    lines[at[0] + 1] = "        <S47ActualStartDate>1990-01-01</S47ActualStartDate>\n"
    lines[at[1] + 1] = "        <S47ActualStartDate>2099-01-01</S47ActualStartDate>\n"
    # 8839: two open enquiries (no conference, not marked not required) in one CINdetails
    start, end = at[2], at[2] + 4
    assert "</Section47>" in lines[end]
    open_enquiry = [lines[start], lines[start + 1], lines[start + 3], lines[end]]
    lines[start : end + 1] = open_enquiry + open_enquiry
    census.write_text("".join(lines))
    enquiries, found = failures(source, tmp_path / "planted")
    assert enquiries == plans + 1
    name = census.name
    assert found == {
        "2889": {(name, at[0] + 1)},
        "8615": {(name, at[1] + 1)},
        "8839": {(name, at[2] + 1), (name, at[2] + 5)},
    }


@pytest.mark.slow
def test_a_run_on_the_adapted_delivery_gives_the_native_runs_cohort_and_estimates(
    full_run: Path, adapted: Path, tmp_path: Path
) -> None:
    """End to end: `cohort run` on the adapted 903 delivery gives the session run's cohort
    tables and estimates, and its data-quality report carries the DfE rules and the traced
    quarantine."""
    r = _cohort("run", "--data", str(adapted), "--out", str(tmp_path / "run"), env=_env(tmp_path),
                timeout=1200)  # fmt: skip
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
    report = (run / "validation" / "dq_report.md").read_text(encoding="utf-8")
    assert "## DfE SSDA903 validation rules" in report
    assert "quarantined rows traced to their source lines" in report


def test_validating_an_unadapted_layout_folder_says_to_adapt_it_first(
    layout_world: Path, tmp_path: Path
) -> None:
    for command in ("validate", "run"):
        r = _cohort(
            command, "--data", str(layout_world), "--out", str(tmp_path / command),
            env=_env(tmp_path),
        )  # fmt: skip
        assert r.returncode == 2, r.stderr[-2000:]
        assert "holds a delivery in the ssda903 layout" in r.stderr
        assert "run `cohort adapt --source" in r.stderr
        assert not (tmp_path / command).exists()


def test_a_903_file_not_in_utf8_stops_with_its_line_and_nothing_written(
    layout_world: Path, tmp_path: Path
) -> None:
    source = tmp_path / "delivery"
    shutil.copytree(layout_world, source, ignore=shutil.ignore_patterns("truth"))
    episodes = source / "SSDA903_episodes.csv"
    lines = episodes.read_bytes().split(b"\n")
    lines[5] = lines[5].replace(b",", b",\xe9", 1)  # a cp1252 e-acute on line 6
    episodes.write_bytes(b"\n".join(lines))
    out = tmp_path / "out"
    with pytest.raises(
        SourceLayoutError, match=r"SSDA903_episodes.csv \(table episodes\) is not UTF-8"
    ):
        adapt_delivery(source_dir=source, out_dir=out, layout=load_layout("ssda903"))
    assert not out.exists()


def test_the_dfe_failures_and_traced_quarantine_reach_the_data_quality_report(
    layout_world: Path, tmp_path: Path
) -> None:
    """Validation of an adapted delivery with planted DfE breaches: the data-quality report
    carries each rule's failures beside validation's sections, the linkage zone holds each
    failing line, and every quarantined row of an adapted source is traced to its line."""
    import duckdb

    from deliveries.report import report_adapted_checks
    from ground.run_layout import RunLayout
    from validation import ValidationSettings, validate_delivery

    source, planted = _planted_903(layout_world, tmp_path)
    data = tmp_path / "data"
    adapt_delivery(source_dir=source, out_dir=data, layout=load_layout("ssda903"))
    run = RunLayout.at(tmp_path / "run")
    summary = validate_delivery(
        data_dir=data, layout=run, settings=ValidationSettings(run_great_expectations=False)
    )
    checks = report_adapted_checks(data_dir=data, layout=run)
    assert checks is not None
    for rule in planted:
        assert checks.dfe_failures.get(rule, 0) >= 1, rule
    report = (run.validation_dir / "dq_report.md").read_text(encoding="utf-8")
    assert report.index("## looked_after_episodes") < report.index("## DfE SSDA903 validation")
    assert "## DfE children in need census rules on Section 47 enquiries" in report
    assert "| 146 | Episodes | Placement type code is not a valid code. |" in report
    for source_name in SOCIAL_CARE:
        assert checks.traced[source_name] == summary.sources[source_name].rows_quarantined
    con = duckdb.connect(str(run.linkage_db), read_only=True)
    try:
        lines = con.execute(
            "SELECT source_line FROM validation.dfe_ssda903_failures WHERE rule = '146'"
        ).fetchall()
    finally:
        con.close()
    assert planted["146"] <= {int(x) for (x,) in lines}
    traced = pl.read_csv(run.validation_dir / "quarantine_source_lines.csv", infer_schema=False)
    assert (
        traced.filter(pl.col("source") == "looked_after_episodes")["reasons"]
        .str.contains("placement_type:code_outside_list")
        .any()
    )


def test_a_messy_world_in_the_hes_apc_layout_gives_the_native_admissions_byte_for_byte(
    tmp_path: Path,
) -> None:
    """Hospital admissions as a HES APC spells extract (HES field names, sex 1/2, ICD-10 without
    its dot), defects and malformed lines included, come back as the native file."""
    from synthetic_data import generate_world

    native, layout_dir = tmp_path / "native", tmp_path / "layout"
    for out, layout in ((native, None), (layout_dir, "hes_apc")):
        generate_world(n_children=3000, seed=7, scenario="messy", out_dir=out, layout=layout)
    assert detect_layout(layout_dir) == "hes_apc"
    header = (layout_dir / "HES_APC_spells.csv").read_text().split("\n", 2)
    assert header[0].startswith("EPIKEY,NEWNHSNO,DOB,SEX,")
    assert "." not in header[1].split(",")[8]  # DIAG_4_01 as HES writes it
    summary = adapt_delivery(
        source_dir=layout_dir, out_dir=tmp_path / "adapted", layout=load_layout("hes_apc")
    )
    assert summary.malformed["hospital_admissions"] > 0
    admissions = "hospital_admissions.csv"
    assert filecmp.cmp(native / admissions, tmp_path / "adapted" / admissions, shallow=False)
