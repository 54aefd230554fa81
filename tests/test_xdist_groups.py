"""The suite's own plumbing: under `make test` (pytest-xdist, ``--dist loadgroup``) the tests
that share a module-scoped fixture run on one worker, so it is built once (tests/conftest.py).
Until 2026-12-03 no group took effect (the conftest hook ran after xdist's, and pytest 9 hid the
group from xdist): the 4,000-child relinking of tests/test_candidate_pairs.py ran on both
workers, 30 s each."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def module_fixture() -> str:
    return "shared"


def test_module_fixtures_are_built_on_one_worker(
    module_fixture: str, request: pytest.FixtureRequest
) -> None:
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by an xdist worker under --dist loadgroup")
    # xdist groups a test by the "@group" suffix of its node id; without it the test is its own
    # unit of work and may run on any worker
    assert request.node.nodeid.endswith("@" + request.module.__name__), request.node.nodeid
