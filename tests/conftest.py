"""Shared fixtures: small synthetic worlds generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4,000-child default world as CSV."""
    from synthetic_data import generate_world

    out = tmp_path_factory.mktemp("world_small")
    generate_world(n_children=4000, seed=7, scenario="default", out_dir=out)
    return out


@pytest.fixture(scope="session")
def validated_run(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small world validated into a run folder (with Great Expectations)."""
    from ground.run_layout import RunLayout
    from validation import validate_delivery

    run = tmp_path_factory.mktemp("run_small")
    validate_delivery(data_dir=small_world, layout=RunLayout.at(run))
    return run


TEST_SECRET = b"test-secret-key-0123456789abcdef"


@pytest.fixture(scope="session")
def linked_run(validated_run: Path) -> Path:
    """The small validated run, linked (analysis zone written)."""
    from ground.run_layout import RunLayout
    from linkage import link_run

    link_run(layout=RunLayout.at(validated_run), secret=TEST_SECRET)
    return validated_run


from tests.e2e import full_run, world  # noqa: E402,F401  (session fixtures shared by e2e tests)
