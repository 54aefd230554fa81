"""End-to-end helpers shared by test files: the `cohort` CLI in a subprocess with an isolated
Prefect home, and one small world run once per session (`full_run`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthetic_data import generate_world

    out = tmp_path_factory.mktemp("e2e_world")
    generate_world(n_children=2500, seed=13, out_dir=out)
    return out


@pytest.fixture(scope="session")
def full_run(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("e2e")
    r = _cohort("run", "--data", str(world), "--out", str(tmp / "run"), env=_env(tmp), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "run"
