"""Linkage: quality against the truth, the split-file rule, the pseudonymiser, model reuse."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.linkage_truth import evaluate_linkage
from ground.errors import SecretError
from ground.run_layout import RunLayout
from linkage import (
    LinkageSettings,
    link_run,
    link_tables,
    pseudonymise,
    secret_from_environment,
)
from schemas.contracts import SOURCES
from tests.conftest import TEST_SECRET


def test_linkage_precision_and_recall_against_truth(small_world: Path, linked_run: Path) -> None:
    ev = evaluate_linkage(layout=RunLayout.at(linked_run), truth_dir=small_world / "truth")
    assert ev["pair_precision"] >= 0.99, ev
    assert ev["pair_recall"] >= 0.99, ev
    det = ev["deterministic_only"]
    assert det["pair_precision"] >= 0.999
    assert det["pair_recall"] < ev["pair_recall"]  # the probabilistic stage adds links
    assert set(ev["by_deprivation_quintile"]) == {"1", "2", "3", "4", "5"}
    assert "recall_gap_most_vs_least_deprived" in ev


def test_every_staged_record_gets_a_person_and_quality(linked_run: Path) -> None:
    con = duckdb.connect(str(RunLayout.at(linked_run).linkage_db), read_only=True)
    for s in SOURCES:
        staged = con.execute(f"SELECT count(*) FROM staging.{s}").fetchone()[0]
        linked = con.execute(
            "SELECT count(*), count(person_key) FROM linkage.record_person WHERE source = ?", [s]
        ).fetchone()
        assert linked == (staged, staged), s
    bad = con.execute(
        "SELECT count(*) FROM linkage.record_person WHERE (link_method = 'deterministic' AND match_probability <> 1) "
        "OR (link_method = 'probabilistic' AND (match_probability < 0.95 OR match_probability > 1)) "
        "OR (link_method = 'unlinked' AND match_probability IS NOT NULL)"
    ).fetchone()[0]
    con.close()
    assert bad == 0


def _identifier_values(con: duckdb.DuckDBPyConnection) -> set[str]:
    values: set[str] = set()
    for s, c in SOURCES.items():
        for col in c.identifier_columns:
            if col == "sex":
                continue
            rows = con.execute(
                f'SELECT DISTINCT CAST("{col}" AS VARCHAR) FROM staging.{s} WHERE "{col}" IS NOT NULL LIMIT 3000'
            ).fetchall()
            values |= {r[0] for r in rows if r[0] and len(r[0]) >= 5}
    return values


def test_split_file_no_identifier_reaches_analysis_zone_or_reports(linked_run: Path) -> None:
    layout = RunLayout.at(linked_run)
    lz = duckdb.connect(str(layout.linkage_db), read_only=True)
    ids = _identifier_values(lz)
    lz.close()
    assert len(ids) > 1000
    az = duckdb.connect(str(layout.analysis_db), read_only=True)
    cols = az.execute(
        "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns"
    ).fetchall()
    identifier_names = {c for s in SOURCES.values() for c in s.identifier_columns} - {"sex"}
    assert not {c[2] for c in cols} & identifier_names
    assert "date_of_birth" not in {c[2] for c in cols}
    leaked = []
    for schema, table, col, dtype in cols:
        if dtype == "VARCHAR":
            vals = az.execute(f'SELECT DISTINCT "{col}" FROM {schema}.{table}').fetchall()
            leaked += [v[0] for v in vals if v[0] in ids]
    # week of birth only: every week_of_birth is a Monday
    assert (
        az.execute(
            "SELECT count(*) FROM analysis.persons WHERE dayofweek(week_of_birth) <> 1"
        ).fetchone()[0]
        == 0
    )
    az.close()
    assert leaked == []
    for report in list(layout.linkage_dir.glob("*")) + list(
        layout.validation_dir.glob("dq_report.*")
    ):
        text = report.read_text(encoding="utf-8")
        assert not any(v in text for v in ids if len(v) >= 7), report


def test_logs_hold_no_identifier(
    validated_run: Path, linked_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(validated_run, run)
    with caplog.at_level(logging.DEBUG):
        link_run(
            layout=RunLayout.at(run),
            secret=TEST_SECRET,
            settings=LinkageSettings(
                model_path=str(RunLayout.at(linked_run).linkage_dir / "model.json")
            ),
        )
    lz = duckdb.connect(str(RunLayout.at(run).linkage_db), read_only=True)
    ids = _identifier_values(lz)
    lz.close()
    text = caplog.text
    assert not [v for v in ids if len(v) >= 7 and v in text]


def test_saved_model_is_reused_without_retraining(linked_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run2"
    shutil.copytree(linked_run, run)
    model = RunLayout.at(linked_run).linkage_dir / "model.json"
    link_run(
        layout=RunLayout.at(run),
        secret=TEST_SECRET,
        settings=LinkageSettings(model_path=str(model)),
    )
    a = duckdb.connect(str(RunLayout.at(linked_run).linkage_db), read_only=True)
    b = duckdb.connect(str(RunLayout.at(run).linkage_db), read_only=True)
    qa = a.execute(
        "SELECT source, record_id, person_key FROM linkage.record_person ORDER BY 1, 2"
    ).fetchall()
    qb = b.execute(
        "SELECT source, record_id, person_key FROM linkage.record_person ORDER BY 1, 2"
    ).fetchall()
    a.close()
    b.close()
    assert qa == qb


def test_missing_secret_is_a_clear_error() -> None:
    with pytest.raises(SecretError, match="COHORT_PSEUDONYM_SECRET"):
        secret_from_environment({})
    with pytest.raises(SecretError, match="shorter"):
        secret_from_environment({"COHORT_PSEUDONYM_SECRET": "short"})
    assert secret_from_environment({}, demo=True)
    assert secret_from_environment({"COHORT_PSEUDONYM_SECRET": "x" * 32}) == b"x" * 32


@given(
    st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=50),
    st.binary(min_size=16, max_size=64),
)
@settings(max_examples=50, deadline=None)
def test_pseudonym_stable_and_secret_dependent(values: list[str], secret: bytes) -> None:
    a = pseudonymise(values, secret)
    assert a == pseudonymise(values, secret)
    assert all(re.fullmatch(r"[0-9a-f]{64}", k) for k in a)
    other = pseudonymise(values, secret + b"x")
    assert all(x != y for x, y in zip(a, other, strict=True))


def test_pseudonyms_do_not_collide_on_a_large_sample() -> None:
    values = [f"population_register|PR{i:09d}" for i in range(300_000)]
    keys = pseudonymise(values, TEST_SECRET)
    assert len(set(keys)) == len(values)


def test_public_link_tables_on_user_data() -> None:
    people = pl.DataFrame(
        {
            "id": [f"a{i}" for i in range(6)],
            "forename": ["Siân", "Dafydd", "Rhys", "Megan", "Owain", "Cerys"],
            "family": ["Jones", "Evans", "Price", "Thomas", "Lloyd", "Hughes"],
            "dob": [
                "2005-03-04",
                "2006-11-12",
                "2004-01-30",
                "2007-07-07",
                "2005-05-15",
                "2008-02-02",
            ],
            "gender": ["F", "M", "M", "F", "M", "F"],
            "pc": ["CF10 1AA", "SA1 2BB", "LL57 3CC", "NP20 4DD", "CF24 5EE", "SA3 6FF"],
        }
    )
    visits = pl.DataFrame(
        {
            "visit": ["v1", "v2", "v3", "v4"],
            "first": ["Sian", "Dafyd", "Rhys", "Ffion"],  # diacritic dropped, typo
            "last": ["Jones", "Evans", "Price", "Morgan"],
            "birth": [
                "2005-04-03",
                "2006-11-12",
                "2004-01-30",
                "2009-09-09",
            ],  # v1: day/month swapped
            "sex": ["F", "M", "M", "F"],
            "postcode": ["CF10 1AA", "SA1 2BB", "LL57 3CC", "CF5 9ZZ"],
        }
    )
    roles = {
        "people": {
            "record_id": "id",
            "first_name": "forename",
            "surname": "family",
            "date_of_birth": "dob",
            "sex": "gender",
            "postcode": "pc",
        },
        "visits": {
            "record_id": "visit",
            "first_name": "first",
            "surname": "last",
            "date_of_birth": "birth",
            "sex": "sex",
            "postcode": "postcode",
        },
    }
    # a tiny data set cannot train a model: reuse the model trained on the synthetic run
    result = link_tables(
        {"people": people, "visits": visits},
        roles,
        settings=LinkageSettings(model_path=str(_trained_model())),
    )
    c = result.clusters
    cluster = dict(zip(c["record_id"].to_list(), c["cluster_id"].to_list(), strict=True))
    assert (
        cluster["v1"] == cluster["a0"]
        and cluster["v2"] == cluster["a1"]
        and cluster["v3"] == cluster["a2"]
    )
    assert cluster["v4"] not in {cluster[f"a{i}"] for i in range(6)}
    assert {"match_probability", "link_method"} <= set(c.columns)


_MODEL: list[Path] = []


def _trained_model() -> Path:
    return _MODEL[0]


@pytest.fixture(autouse=True)
def _model_path(linked_run: Path) -> None:
    if not _MODEL:
        _MODEL.append(RunLayout.at(linked_run).linkage_dir / "model.json")


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "floor"), [("default", 0.99), ("messy", 0.95)])
def test_linkage_quality_at_100k(tmp_path: Path, scenario: str, floor: float) -> None:
    from synthetic_data import generate_world
    from validation import ValidationSettings, validate_delivery

    generate_world(n_children=100_000, seed=21, scenario=scenario, out_dir=tmp_path / "w")
    layout = RunLayout.at(tmp_path / "r")
    validate_delivery(
        data_dir=tmp_path / "w",
        layout=layout,
        settings=ValidationSettings(run_great_expectations=False),
    )
    link_run(layout=layout, secret=TEST_SECRET)
    ev = evaluate_linkage(layout=layout, truth_dir=tmp_path / "w" / "truth")
    print(
        scenario,
        {k: ev[k] for k in ("pair_precision", "pair_recall", "recall_gap_most_vs_least_deprived")},
    )
    assert ev["pair_precision"] >= floor and ev["pair_recall"] >= floor


def test_cohort_agrees_with_truth_for_correctly_linked_children(
    small_world: Path, linked_run: Path, tmp_path: Path
) -> None:
    from cohort import build_cohort
    from evaluation.cohort_truth import cohort_truth_agreement

    run = tmp_path / "run"  # a copy: the session's linked run is shared by the xdist workers
    shutil.copytree(linked_run, run)
    layout = RunLayout.at(run)
    build_cohort(layout=layout)
    agreement = cohort_truth_agreement(layout=layout, truth_dir=small_world / "truth")
    assert agreement["children_checked"] > 200
    for k in ("care_entry", "recorded_adversity", "index_date", "ks4_care_days"):
        assert agreement[k] >= 0.99, agreement


def _register_identifiers(world: Path, n: int = 200) -> list[bytes]:
    """NHS numbers and surnames (6+ letters: shorter ones occur by chance in binary files) of
    the first ``n`` rows of the delivered population register."""
    import csv

    with (world / "population_register.csv").open(encoding="utf-8", newline="") as f:
        rows = [r for _, r in zip(range(n), csv.DictReader(f), strict=False)]
    values = {r["nhs_number"] for r in rows if r["nhs_number"]}
    values |= {r["surname"] for r in rows if len(r["surname"]) >= 6}
    return sorted(v.encode() for v in values)


def _files_holding(root: Path, values: list[bytes], allowed: set[Path]) -> list[str]:
    """Files under ``root`` (outside ``allowed`` files and folders) holding any of ``values``."""
    found = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(p == a or a in p.parents for a in allowed):
            continue
        data = p.read_bytes()
        if any(v in data for v in values):
            found.append(str(p.relative_to(root)))
    return found


def test_sigkill_mid_link_leaves_no_identifier_outside_the_linkage_zone(
    validated_run: Path, small_world: Path, tmp_path: Path
) -> None:
    """SIGKILL during `cohort link`: no file outside the linkage zone (its database and its
    scratch folder) holds an identifier; the next link stage empties the scratch folder before
    anything else, and removes it when it ends, also when it fails."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.e2e import ROOT, _env

    run = tmp_path / "run"
    shutil.copytree(validated_run, run)
    for stale in ("analysis_zone.duckdb", "linkage"):  # as a run that was never linked
        p = run / stale
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    layout = RunLayout.at(run)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", "link", "--run", str(run)],
        cwd=ROOT,
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (layout.linkage_dir / "linkage_settings.yaml").exists():
        time.sleep(0.1)
    time.sleep(3)  # mid-linkage: identifiers read, pairs being scored
    assert proc.poll() is None, "the link stage ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not layout.analysis_db.exists()

    ids = _register_identifiers(small_world)
    assert len(ids) > 150
    zone = {layout.linkage_db, Path(f"{layout.linkage_db}.wal"), layout.linkage_scratch_dir}
    assert _files_holding(run, ids, zone) == []
    assert _files_holding(tmp_path / "prefect_home", ids, set()) == []
    # the scratch folder, if the killed stage made one, is the owner's only
    if layout.linkage_scratch_dir.exists():
        assert layout.linkage_scratch_dir.stat().st_mode & 0o077 == 0

    # the next link stage empties the scratch folder first, and removes it on failure
    layout.linkage_scratch_dir.mkdir(exist_ok=True)
    planted = layout.linkage_scratch_dir / "left_by_a_killed_stage.tmp"
    planted.write_bytes(b"\n".join(ids))
    seen: list[bool] = []

    def first_step(message: str) -> None:
        seen.append(planted.exists())
        raise RuntimeError("stop after the first step")

    with pytest.raises(RuntimeError, match="first step"):
        link_run(layout=layout, secret=TEST_SECRET, progress=first_step)
    assert seen == [False]
    assert not layout.linkage_scratch_dir.exists()
    assert _files_holding(run, ids, {layout.linkage_db, Path(f"{layout.linkage_db}.wal")}) == []


def test_linkage_zone_connections_spill_inside_the_zone(tmp_path: Path) -> None:
    """DuckDB spill files of a linkage-zone connection go to its scratch folder (mode 0700),
    whatever temp folder the caller asked for; other databases keep theirs."""
    from ground.db import DuckDBSettings, connect, linkage_scratch_dir

    layout = RunLayout.at(tmp_path / "run")
    layout.root.mkdir()
    assert layout.linkage_scratch_dir == linkage_scratch_dir(layout.root)
    con = connect(
        layout.linkage_db, settings=DuckDBSettings(temp_directory=str(layout.tmp_dir / "duckdb"))
    )
    spill = Path(con.execute("SELECT current_setting('temp_directory')").fetchone()[0])  # type: ignore[index]
    con.close()
    assert spill.parent == layout.linkage_scratch_dir
    assert layout.linkage_scratch_dir.stat().st_mode & 0o777 == 0o700
    con = connect(
        layout.analysis_db, settings=DuckDBSettings(temp_directory=str(layout.tmp_dir / "duckdb"))
    )
    spill = Path(con.execute("SELECT current_setting('temp_directory')").fetchone()[0])  # type: ignore[index]
    con.close()
    assert spill == layout.tmp_dir / "duckdb"
