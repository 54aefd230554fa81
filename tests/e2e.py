"""End-to-end helpers shared by test files: the `cohort` CLI in a subprocess with an isolated
Prefect home, one small world run once per session (`full_run`), and `built_once`, which builds
a session fixture's folder once for all pytest-xdist workers.

The session fixtures' folders are shared by every worker (and every test): a test that changes a
run or a world works on its own copy (`shutil.copytree(full_run, tmp_path / "run")`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
SECRET = "orchestration-test-secret-0123456789"


def _env(tmp: Path) -> dict[str, str]:
    """The CLI's environment: its own Prefect home and system temp folder under ``tmp`` (so the
    leak scan can read everything a run wrote, tests/test_leaks.py)."""
    env = dict(os.environ)
    (tmp / "tmpdir").mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "COHORT_PSEUDONYM_SECRET": SECRET,
            "PREFECT_HOME": str(tmp / "prefect_home"),
            "TMPDIR": str(tmp / "tmpdir"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        }
    )
    env.pop("PREFECT_API_URL", None)
    return env


def _cohort(*args: str, env: dict[str, str], **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "orchestration.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        **kw,
    )


def chromium() -> str:
    """Debian's headless Chromium (.ci/run installs it); skips the test where there is none."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium not installed (.ci/run installs Debian's chromium)")
    return found


def headless_chromium(
    *args: str, profile: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Chromium, headless and offline (no network, no updates, a throwaway profile), with
    ``args`` (``--dump-dom URI``, ``--screenshot=PNG URI``...)."""
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def contract_rows(path: Path) -> pl.DataFrame:
    """A contract CSV as text, malformed lines cut to the contract's columns, rows sorted."""
    df = pl.read_csv(path, infer_schema=False, truncate_ragged_lines=True)
    return df.sort(df.columns, nulls_last=True)


def zone_tables(run: Path, schema: str) -> dict[str, pl.DataFrame]:
    """Every table of one schema of a run's analysis zone, rows sorted (to compare two runs)."""
    import duckdb

    con = duckdb.connect(str(run / "analysis_zone.duckdb"), read_only=True)
    try:
        names = [
            t
            for (t,) in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ? "
                "ORDER BY 1",
                [schema],
            ).fetchall()
        ]
        tables = {}
        for t in names:
            df = con.sql(f'SELECT * FROM "{schema}"."{t}"').pl()
            tables[t] = df.sort(df.columns, nulls_last=True)
        return tables
    finally:
        con.close()


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """The folder ``name``, made by ``build(folder)`` once per test session.

    Under pytest-xdist every worker runs each session fixture itself; the first worker to ask
    builds the folder in the temp directory all workers share (the parent of each worker's own
    ``getbasetemp()``) while holding a file lock, and writes a done-marker naming it; the others
    wait on the lock and reuse it. Without xdist the folder is made in the session's temp
    directory. A failed build is recorded, so the other workers fail at once with its error
    instead of spending minutes building it again."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    folder, done, failed = (shared / name, shared / f"{name}.done", shared / f"{name}.failed")
    with FileLock(shared / f"{name}.lock"):
        if failed.exists():
            pytest.fail(f"session fixture {name!r} failed on another worker: {failed.read_text()}")
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            try:
                build(folder)
            except BaseException as exc:
                failed.write_text(f"{type(exc).__name__}: {exc}"[-3000:], encoding="utf-8")
                raise
            done.write_text(json.dumps({"folder": str(folder)}), encoding="utf-8")
    return Path(json.loads(done.read_text(encoding="utf-8"))["folder"])


def read_only(folder: Path) -> Iterator[Path]:
    """Yield ``folder``, then fail (at the teardown of the worker's last test) if any test
    changed, added or removed a file in it: a shared session folder is read only."""
    before = _files(folder)
    yield folder
    after = _files(folder)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, (
        f"a test changed the shared session folder {folder.name}/ ({changed[:5]}): "
        "copy it to tmp_path before changing it"
    )


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def _world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def synth(out: Path) -> None:
        env = _env(out.parent / "e2e_world_env")
        r = _cohort(
            "synth", "--children", "2500", "--seed", "13", "--out", str(out), env=env, timeout=600
        )
        assert r.returncode == 0, r.stderr[-3000:]

    return built_once(tmp_path_factory, "e2e_world", synth)


def _full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    world = _world(tmp_path_factory)

    def run(tmp: Path) -> None:
        r = _cohort(
            "run", "--data", str(world), "--out", str(tmp / "run"), env=_env(tmp), timeout=600
        )
        assert r.returncode == 0, r.stderr[-3000:]

    return built_once(tmp_path_factory, "e2e", run) / "run"


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`cohort synth --children 2500 --seed 13`: a default world as CSV, shared by all
    workers: read only."""
    yield from read_only(_world(tmp_path_factory))


@pytest.fixture(scope="session")
def full_run(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`cohort run` on `world`: the run folder ``e2e/run``, with its Prefect home and temp folder
    beside it (``e2e/prefect_home``, ``e2e/tmpdir``; tests/test_leaks.py scans all three).
    Shared by all workers: read only (copy it to change or rerun it)."""
    yield from read_only(_full_run(tmp_path_factory))


@pytest.fixture(scope="session", autouse=True)
def full_run_started_early(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """When a selected test needs `full_run`, start making it (`cohort synth`, `cohort run`:
    1.5 minutes on a quiet machine) as the session starts, so no worker sits idle waiting for
    it when it reaches its first test that needs it. A background thread of each worker asks
    for it; the first one builds it, the others wait on the same lock, and so does the
    `full_run` fixture. The thread only waits on subprocesses: it shares no state with the tests.
    A failed build is reported by the fixture, not here."""
    if not any("full_run" in item.fixturenames for item in request.session.items):
        yield
        return

    def build() -> None:
        with contextlib.suppress(BaseException):  # recorded by built_once; the fixture reports it
            _full_run(tmp_path_factory)

    # the worker's temp folder made here, first: made by the thread and by the first test's
    # tmp_path at once, one of them failed with FileExistsError (seen once in `make test-slow`)
    tmp_path_factory.getbasetemp()
    thread = threading.Thread(target=build, name="full_run_started_early", daemon=True)
    thread.start()
    yield
    thread.join()
