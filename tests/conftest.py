"""Shared fixtures: small synthetic worlds and runs built once per test session (once for all
pytest-xdist workers: tests/e2e.py `built_once`), and the xdist grouping of tests that share a
module fixture.

`make test` runs the suite on two xdist workers (`-n 2 --dist loadgroup`). The session fixtures
here and in tests/e2e.py are folders shared by both workers: read them, and copy one before
changing it."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

# Each xdist worker gets its own Prefect home for this session (set before Prefect is imported;
# removed at exit): two processes that start ephemeral servers on one Prefect database, two
# workers or the same worker of two sessions in one checkout, can fail with "database is locked".
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    _PREFECT_HOME = tempfile.mkdtemp(prefix=f"pytest-prefect-{_WORKER}-")
    os.environ["PREFECT_HOME"] = _PREFECT_HOME
    atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)

from tests.e2e import (  # noqa: E402,F401  (session fixtures)
    built_once,
    full_run,
    full_run_started_early,
    read_only,
    world,
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup`, keep the tests that share a module-scoped fixture of their own
    module on one worker, so that fixture (a world, a validated delivery, a planted copy of the
    run) is built once, not once per worker. Tests already given an `xdist_group` keep it.
    ``tryfirst``: xdist turns the marks into groups in its own hook of this name, which may run
    first; the marks were then ignored (and with pytest 9, whose nodeid xdist 3.8 cannot
    change, all groups are: pyproject.toml pins pytest below 9). Checked by
    tests/test_xdist_groups.py."""
    for item in items:
        if item.get_closest_marker("xdist_group") or not isinstance(item, pytest.Function):
            continue
        defs = item._fixtureinfo.name2fixturedefs
        module_fixtures = [
            name for name in item.fixturenames if name in defs and defs[name][-1].scope == "module"
        ]
        if module_fixtures:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    # The tests that need `full_run` last (a stable sort: the same order on every worker), so
    # the workers run everything else while it is made (tests/e2e.py full_run_started_early):
    # with them first, both workers waited for it (470-500 s each under load 35).
    items.sort(key=lambda item: "full_run" in item.fixturenames)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 4,000-child default world as CSV (read only)."""
    from synthetic_data import generate_world

    yield from read_only(
        built_once(
            tmp_path_factory,
            "world_small",
            lambda out: generate_world(n_children=4000, seed=7, scenario="default", out_dir=out),
        )
    )


@pytest.fixture(scope="session")
def validated_run(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The small world validated into a run folder, with Great Expectations (read only)."""
    from ground.run_layout import RunLayout
    from validation import validate_delivery

    yield from read_only(
        built_once(
            tmp_path_factory,
            "run_small",
            lambda run: validate_delivery(data_dir=small_world, layout=RunLayout.at(run)),
        )
    )


TEST_SECRET = b"test-secret-key-0123456789abcdef"


@pytest.fixture(scope="session")
def linked_run(validated_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the small validated run, linked (analysis zone written; read only). A copy, so
    that `validated_run` stays a validated-only run whichever tests ran first."""
    from ground.run_layout import RunLayout
    from linkage import link_run

    def link(run: Path) -> None:
        shutil.copytree(validated_run, run)
        link_run(layout=RunLayout.at(run), secret=TEST_SECRET)

    yield from read_only(built_once(tmp_path_factory, "run_small_linked", link))
