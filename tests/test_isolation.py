"""Stages in child processes: results, errors, logs and memory come back; no orphans."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ground.errors import InputDataError
from orchestration.isolation import (
    StageProcessError,
    call_stage,
    run_in_child_process,
)

ROOT = Path(__file__).resolve().parents[1]


def add_and_log(a: int, b: int) -> dict[str, int]:
    logging.getLogger("orchestration.test_child").info(
        "child says %d + %d, pid %d", a, b, os.getpid()
    )
    return {"sum": a + b, "pid": os.getpid()}


def bad_input(path: str) -> None:
    raise InputDataError(f"school_census: column 'upn' missing in {path}; re-export the file")


def internal_bug() -> None:
    {}["no such key"]


def killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def hold_memory(mib: int, seconds: float) -> int:
    block = bytearray(mib * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    time.sleep(seconds)
    return len(block)


def test_result_and_logs_come_back_from_the_child(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="orchestration"):
        out = run_in_child_process(add_and_log, a=2, b=3)
    assert out["sum"] == 5 and out["pid"] != os.getpid()
    assert any("child says 2 + 3" in r.getMessage() for r in caplog.records)
    # in-process when not isolated: same answer, this pid
    assert call_stage(add_and_log, False, a=2, b=3) == {"sum": 5, "pid": os.getpid()}


def test_user_error_is_reraised_as_itself_and_bugs_keep_their_traceback() -> None:
    with pytest.raises(InputDataError, match="column 'upn' missing in /data/x.csv"):
        run_in_child_process(bad_input, path="/data/x.csv")
    with pytest.raises(StageProcessError, match=r"KeyError[\s\S]*internal_bug"):
        run_in_child_process(internal_bug)


def test_a_killed_stage_process_is_a_clear_error() -> None:
    with pytest.raises(StageProcessError, match="exited with code -9.*rerun the same command"):
        run_in_child_process(killed)


def _fresh_python(script: str) -> str:
    """Run ``script`` in a fresh interpreter (a memory figure taken in a pytest worker also
    counts whatever its other tests started); its standard output."""
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_peak_memory_counts_the_stage_process() -> None:
    """Measured in a fresh process: a pytest worker's own process tree also holds whatever its
    other tests started (the session's `cohort run`, whose stage and model workers come and go),
    which moves its memory by more than the 400 MiB measured here."""
    script = (
        "import sys\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]\n"
        "from orchestration.isolation import run_in_child_process\n"
        "from orchestration.resources import PeakMemory, tree_rss_bytes\n"
        "from test_isolation import hold_memory\n"
        "base = tree_rss_bytes()\n"
        "with PeakMemory(interval=0.05) as mem:\n"
        "    run_in_child_process(hold_memory, mib=400, seconds=1.0)\n"
        "print(mem.peak_bytes - base)\n"
    )
    out = _fresh_python(script)
    assert int(out.split()[-1]) > 350 * 2**20, out


def test_peak_pss_counts_pages_shared_by_forked_workers_once() -> None:
    """Two forked workers that only read the parent's 400 MiB: the summed RSS counts those
    pages three times (about 1,200 MiB), the summed PSS once (about 400 MiB), which is what
    the tree takes from the machine (the model stage's workers share the cohort this way).
    A PSS read as RSS fails the upper bound."""
    script = (
        "import sys, os, time\n"
        f"sys.path[:0] = [{str(ROOT)!r}]\n"
        "from orchestration.resources import PeakMemory, tree_pss_bytes, tree_rss_bytes\n"
        "base_rss, base_pss = tree_rss_bytes(), tree_pss_bytes()\n"
        "held = bytearray(os.urandom(1)) * (400 * 2**20)\n"
        "with PeakMemory(interval=0.05, pss_interval=0.2) as mem:\n"
        "    kids = []\n"
        "    for _ in range(2):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            time.sleep(1.5)\n"
        "            os._exit(0 if held[-1] == held[0] else 1)\n"
        "        kids.append(pid)\n"
        "    for pid in kids:\n"
        "        os.waitpid(pid, 0)\n"
        "print(mem.peak_bytes - base_rss, mem.peak_pss_bytes - base_pss)\n"
    )
    out = _fresh_python(script)
    rss, pss = (int(x) for x in out.split()[-2:])
    mib = 2**20
    assert rss > 1100 * mib, out
    assert 350 * mib < pss < 600 * mib, out


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    """Killing only the parent (not its process group) must not leave the stage running."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import sys, os, time\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]\n"
        "from orchestration.isolation import run_in_child_process\n"
        "from test_isolation import write_pid_and_sleep\n"
        f"run_in_child_process(write_pid_and_sleep, path={str(pid_file)!r})\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline and not pid_file.exists():
        time.sleep(0.1)
    assert pid_file.exists(), "child never started"
    child = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child), "the stage process outlived its parent"


def write_pid_and_sleep(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_run_settings_files_fail_clearly(tmp_path: Path) -> None:
    from ground.errors import ConfigError
    from orchestration.settings import RunSettings, load_run_settings

    assert load_run_settings(None) == RunSettings()
    f = tmp_path / "s.yaml"
    with pytest.raises(ConfigError, match="settings file .* does not exist"):
        load_run_settings(f)
    for text, message in (
        ("model: [unclosed", "is not valid YAML"),
        ("- a list\n", "must be a mapping of keys to values"),
        (
            "linkage:\n  match_threshold: 2\n",
            r"linkage\.match_threshold: Input should be less than 1",
        ),
        ("modle: {}\n", "modle: Extra inputs are not permitted"),
        ("model: {bootstrap_replicates: 5}\n", "use 0 .analytic standard errors. or at least 20"),
    ):
        f.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match=message):
            load_run_settings(f)
    f.write_text("", encoding="utf-8")  # empty file: the defaults
    assert load_run_settings(f) == RunSettings()
