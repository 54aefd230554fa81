"""The leak test: everything one run wrote, scanned by tests/leak_scan.py.

The `full_run` session run (tests/e2e.py; its Prefect home is `prefect_home` beside the run) must
hold no identifier of its delivery outside the linkage zone, publish no small or unrounded count,
and write nothing that makes a remote request. A copy of the run with planted errors shows that
the scanner catches each kind where it was planted (the run folder, Prefect's database, a DuckDB
file, a release table, a Data Docs page).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sqlite3
from datetime import date
from pathlib import Path

import duckdb
import pytest

from schemas.contracts import SOURCES
from tests.e2e import headless_chromium
from tests.leak_scan import (
    DeliveryIdentifiers,
    DisclosureRule,
    Finding,
    ScanReport,
    check_artifact_data,
    check_csv,
    check_html,
    check_text,
    remote_references,
    scan_file,
    scan_run,
    summary,
)


def _prefect_home(run: Path) -> Path:
    # tests/e2e.py `_env(tmp)` sets PREFECT_HOME to tmp / "prefect_home"; the run is tmp / "run"
    return run.parent / "prefect_home"


def _temp_dir(run: Path) -> Path | None:
    # scanned too if `_env(tmp)` gives the run its own TMPDIR, tmp / "tmpdir"
    path = run.parent / "tmpdir"
    return path if path.is_dir() else None


@pytest.fixture(scope="module")
def delivery_ids(world: Path) -> DeliveryIdentifiers:
    return DeliveryIdentifiers.from_delivery(world)


@pytest.fixture(scope="module")
def run_scan(full_run: Path, delivery_ids: DeliveryIdentifiers) -> ScanReport:
    return scan_run(full_run, delivery_ids, _prefect_home(full_run), _temp_dir(full_run))


# --- the real run -------------------------------------------------------------------------------


def test_scan_covers_everything_the_run_wrote(run_scan: ScanReport, full_run: Path) -> None:
    scanned = set(run_scan.files_scanned)
    assert "PREFECT_HOME/prefect.db" in scanned
    assert "RUN/analysis_zone.duckdb" in scanned
    assert "RUN/report.html" in scanned
    assert any(f.startswith("RUN/validation/gx/") and f.endswith("index.html") for f in scanned)
    assert any(f.startswith("RUN/release/") for f in scanned)
    assert not any(f.startswith("RUN/linkage_zone") for f in scanned)


def test_linkage_zone_holds_identifiers_the_scanner_can_read(
    full_run: Path, delivery_ids: DeliveryIdentifiers, tmp_path: Path
) -> None:
    """Positive control: the one place identifiers belong is full of them, and the scanner reads
    them out of DuckDB storage (one staged source copied into a small DuckDB file, to be quick)."""
    sample = tmp_path / "sample.duckdb"
    con = duckdb.connect(str(sample))
    con.execute("ATTACH ? AS zone (READ_ONLY)", [str(full_run / "linkage_zone.duckdb")])
    con.execute("CREATE TABLE care AS SELECT * FROM zone.staging.care_support_census")
    con.close()
    report = ScanReport()
    scan_file(sample, "sample.duckdb", delivery_ids, report)
    kinds = {f.kind for f in report.findings}
    assert {"nhs_number", "upn", "postcode", "name_pair", "la_child_id"} <= kinds, kinds


def test_run_writes_no_identifier_outside_the_linkage_zone(run_scan: ScanReport) -> None:
    assert not run_scan.identifier_findings, summary(run_scan.identifier_findings)


def test_nothing_written_makes_a_remote_request(run_scan: ScanReport) -> None:
    assert not run_scan.remote_findings, summary(run_scan.remote_findings)


@pytest.mark.parametrize(
    "published",
    [
        "RUN/release/",
        "RUN/report.html",
        "PREFECT_HOME/prefect.db artifact",
        "PREFECT_HOME/prefect.db log",
    ],
)
def test_published_counts_pass_disclosure_control(run_scan: ScanReport, published: str) -> None:
    """The release folder, the report, Prefect artifacts and Prefect logs: no count from 1 to
    threshold - 1 and every count a multiple of the rounding base."""
    found = [f for f in run_scan.count_findings if f.file.startswith(published)]
    assert not found, summary(found, limit=60)


def _data_docs_index(run: Path) -> Path:
    (index,) = run.glob("validation/gx/**/data_docs/local_site/index.html")
    return index


def test_data_docs_index_shows_each_status_without_network(full_run: Path) -> None:
    """The index's validation table is static HTML (not filled in by a CDN script): one status
    per source, each row linking to its validation page, which exists."""
    index = _data_docs_index(full_run)
    page = index.read_text(encoding="utf-8")
    assert "bootstrapTable" not in page and "<script" not in page
    statuses = re.findall(r'<span class="ge-status [^"]*">[^<]*(Success|Failed)</span>', page)
    links = re.findall(r'<a href="(validations/[^"]+\.html)"><span class="ge-status', page)
    assert len(statuses) == len(SOURCES) == len(links), (statuses, links)
    for link in links:
        assert (index.parent / link).is_file(), link


def test_data_docs_index_renders_offline_in_a_browser(full_run: Path, tmp_path: Path) -> None:
    index = _data_docs_index(full_run)
    dom = headless_chromium("--dump-dom", index.as_uri(), profile=tmp_path / "chr").stdout
    assert len(re.findall(r"ge-status[^>]*>[^<]*(Success|Failed)<", dom)) == len(SOURCES)


GX_LIKE_PAGE = """<!DOCTYPE html><html><head>
<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>
<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script>
<style>.x { background: url('https://great-expectations-web-assets.s3.amazonaws.com/a.png') }</style>
</head><body>
<img class="NO-CACHE" src="https://great-expectations-web-assets.s3.amazonaws.com/logo-long.png?d=1"
  alt="Great Expectations" style="width: auto"/>
<p>Powered by <a href="https://greatexpectations.io">Great Expectations</a></p>
<i class="fas fa-check-circle text-success" ></i>
<table
  id="t1"
  class="table-sm"
  data-toggle="table"
>
</table>
<script>
  $('#t1').bootstrapTable(
    Object.assign(
      {
        columns: [{'field': 'validation_success', 'title': 'Status'}, {'field': 'asset_name', 'title': 'Asset Name'}],
        data: [{'validation_success': '<i class="fas fa-times"></i>', '_validation_success_text': 'Failed', 'asset_name': 'attainment', '_table_row_link_path': 'validations/a.html'}],
        toolbar: '#t1-toolbar'
      },
      {'search': 'true'}
    )
  );
</script></body></html>"""


def test_offline_page_drops_remote_requests_and_makes_tables_static() -> None:
    from validation.data_docs import offline_page

    page = offline_page(GX_LIKE_PAGE)
    assert remote_references(page, "page") == []
    assert "<script" not in page and "bootstrapTable" not in page
    assert (
        '<a href="validations/a.html"><span class="ge-status text-danger">✗ Failed</span></a>'
        in page
    )
    assert "<td>attainment</td>" in page and "<th>Asset Name</th>" in page
    assert '<span class="text-success">✓</span>' in page
    assert "Great Expectations" in page  # the logo's alt text and the link's text stay
    assert offline_page(page) == page  # a rewritten page is left as it is


# --- the scanner's count rules ------------------------------------------------------------------

RULE = DisclosureRule(threshold=10, rounding=5)


def test_count_rules_skip_estimates_percentages_years_and_ages() -> None:
    text = (
        "outcome,estimate,ci_low,p_value,pct_CLA,birth_cohort,age_at_index,step,n_exposed\n"
        "ks4,3.2,-7,0.004,5.0,2003,7,2,15\n"
    )
    assert check_csv(text, "t.csv", RULE) == []
    assert check_text("Estimates resting on fewer than 10 children are withheld", "t", RULE) == []


def test_count_rules_flag_small_and_unrounded_counts() -> None:
    small = check_csv("characteristic,n_CLA,total\nfemale,7,[c]\n", "t.csv", RULE)
    assert [f.kind for f in small] == ["small_count"]
    unrounded = check_csv("step,n_remaining,n_excluded\n1,257,0\n", "t.csv", RULE)
    assert [f.kind for f in unrounded] == ["unrounded_count"]
    kv = check_csv("analysis,item,value\npropensity,n_exposed,3\npropensity,auc,0.9\n", "t", RULE)
    assert [f.kind for f in kv] == ["small_count"]
    assert [f.kind for f in check_text("cohort: excluded 1 child", "log", RULE)] == ["small_count"]
    md = json.dumps("| source | rows read | quarantined |\n|---|---:|---:|\n| a | 1,240 | 4 |")
    assert [f.kind for f in check_artifact_data(md, "artifact", RULE)] == ["small_count"]
    page = "<table><tr><th>group</th><th>records</th></tr><tr><td>F</td><td>12</td></tr></table>"
    assert [f.kind for f in check_html(page, "report.html", RULE)] == ["unrounded_count"]


def test_release_format_suppressed_cells_must_be_empty() -> None:
    """release/*.csv name a row's suppressed cells in `suppressed` and leave them empty."""
    header = "characteristic,n_CLA,n_NLA,total,suppressed,bounded\n"
    ok = header + "female,,120,120,n_CLA,total\nmale,60,120,180,,\n"
    assert check_csv(ok, "t.csv", RULE) == []
    shown = header + "female,15,120,135,n_CLA,total\n"  # flagged, yet the value is there
    assert [f.kind for f in check_csv(shown, "t.csv", RULE)] == ["suppressed_shown"]
    unknown = header + "female,,120,120,n_CLA n_XYZ,total\n"
    assert [f.kind for f in check_csv(unknown, "t.csv", RULE)] == ["suppressed_shown"]


# --- planted errors -----------------------------------------------------------------------------


def _one_person(world: Path) -> dict[str, str]:
    with (world / "population_register.csv").open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["nhs_number"] and row["first_name"] and row["surname"] and row["postcode"]:
                return row
    raise AssertionError("no complete population-register row in the test world")


Planted = tuple[ScanReport, dict[str, str]]


@pytest.fixture(scope="module")
def planted(
    full_run: Path,
    world: Path,
    delivery_ids: DeliveryIdentifiers,
    tmp_path_factory: pytest.TempPathFactory,
) -> Planted:
    """A copy of the run and its Prefect home with one planted error of each kind, scanned whole."""
    base = tmp_path_factory.mktemp("planted")
    run, home = base / "run", base / "prefect_home"
    shutil.copytree(full_run, run)
    shutil.copytree(_prefect_home(full_run), home)
    person = _one_person(world)
    nhs, first, surname = person["nhs_number"], person["first_name"], person["surname"]
    postcode, dob = person["postcode"], person["date_of_birth"]
    # 1. an identifier in a results file
    (run / "results" / "planted.csv").write_text(f"child,score\n{nhs},3.1\n", encoding="utf-8")
    # 2. an identifier in a copy of a Prefect artifact row (and a small count in its text)
    db = sqlite3.connect(home / "prefect.db")
    with db:
        (artifact_id,) = db.execute("SELECT id FROM artifact ORDER BY key LIMIT 1").fetchone()
        db.execute(
            "INSERT INTO artifact (id, created, updated, key, type, data, description) "
            "SELECT id || '-planted', created, updated, 'planted', type, ?, description "
            "FROM artifact WHERE id = ?",
            [json.dumps(f"check record for {nhs}: excluded 2"), artifact_id],
        )
    db.close()
    # 3. a small count in a release table's count column
    attrition = run / "release" / "attrition.csv"
    rows = list(csv.reader(attrition.open(encoding="utf-8", newline="")))
    rows[2][rows[0].index("n_excluded")] = "3"
    with attrition.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)
    # 4. a name pair in two cells of one DuckDB row, and exact dates in a week-of-birth column
    con = duckdb.connect(str(run / "analysis_zone.duckdb"))
    con.execute("CREATE TABLE analysis.planted_names (first VARCHAR, n INT, last VARCHAR)")
    con.execute("INSERT INTO analysis.planted_names VALUES (?, 1, ?)", [first, surname])
    con.execute("CREATE TABLE analysis.planted_birth (week_of_birth DATE)")
    con.execute(
        "INSERT INTO analysis.planted_birth VALUES (?), (?)", [date(2003, 5, 5), date(2003, 5, 7)]
    )
    con.close()
    # 5. a postcode and date of birth in a log file under tmp/
    (run / "tmp" / "planted.log").write_text(f"dob {dob} at {postcode}\n", encoding="utf-8")
    # 6. a CDN script in a Data Docs page
    page = _data_docs_index(run)
    page.write_text(
        page.read_text(encoding="utf-8").replace(
            "</head>", '<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script></head>'
        ),
        encoding="utf-8",
    )
    return scan_run(run, delivery_ids, home), {"nhs": nhs, "postcode": postcode, "dob": dob}


def _found(report: ScanReport, file: str, kind: str) -> list[Finding]:
    return [f for f in report.findings if f.file.startswith(file) and f.kind == kind]


def test_planted_identifier_in_results_is_found(planted: Planted) -> None:
    report, _ = planted
    assert _found(report, "RUN/results/planted.csv", "nhs_number")


def test_planted_identifier_in_prefect_artifact_is_found(planted: Planted) -> None:
    report, _ = planted
    assert _found(report, "PREFECT_HOME/prefect.db", "nhs_number")


def test_planted_small_count_in_release_table_is_found(planted: Planted) -> None:
    report, _ = planted
    found = _found(report, "RUN/release/attrition.csv", "small_count")
    assert any("n_excluded = 3" in f.context for f in found), summary(report.count_findings)


def test_planted_small_count_in_prefect_artifact_is_found(planted: Planted) -> None:
    report, _ = planted
    found = _found(report, "PREFECT_HOME/prefect.db artifact planted", "small_count")
    assert any("excluded 2" in f.context for f in found)


def test_planted_names_and_exact_birth_dates_in_duckdb_are_found(planted: Planted) -> None:
    report, _ = planted
    assert _found(report, "RUN/analysis_zone.duckdb", "name_pair")
    births = _found(report, "RUN/analysis_zone.duckdb", "date_of_birth")
    assert any("planted_birth.week_of_birth" in f.context for f in births)


def test_planted_postcode_and_date_of_birth_in_tmp_are_found(planted: Planted) -> None:
    report, _ = planted
    assert _found(report, "RUN/tmp/planted.log", "postcode")
    assert _found(report, "RUN/tmp/planted.log", "date_of_birth")


def test_planted_remote_script_in_data_docs_is_found(planted: Planted) -> None:
    report, _ = planted
    found = [f for f in report.remote_findings if f.file.endswith("local_site/index.html")]
    assert [f.context for f in found] == ["https://code.jquery.com/jquery-3.7.1.min.js"]


def test_findings_never_show_the_identifier(planted: Planted) -> None:
    report, person = planted
    shown = "\n".join(str(f) for f in report.findings)
    assert person["nhs"] not in shown
    assert person["postcode"] not in shown and person["postcode"].replace(" ", "") not in shown
    assert person["dob"] not in shown
