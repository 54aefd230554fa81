"""End to end: `cohort run`, resume after a kill, the run lock, `cohort reproduce`, the report
rendered in headless Chromium, and the real Prefect server path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e import ROOT, _cohort, _env


def _hashes(run: Path) -> dict[str, str]:
    return json.loads((run / "manifest.json").read_text())["output_hashes"]


def test_run_writes_everything_and_resumes_without_redoing(
    full_run: Path, world: Path, tmp_path: Path
) -> None:
    m = json.loads((full_run / "manifest.json").read_text())
    for key in (
        "input_hashes",
        "study_config",
        "code_version",
        "lock_file_sha256",
        "package_versions",
        "seeds",
        "row_counts",
        "timings_seconds",
        "output_hashes",
    ):
        assert m[key], key
    assert set(m["timings_seconds"]) == {"validate", "link", "build", "model", "report"}
    assert m["delivery_metadata"]["seed"] == 13
    r = _cohort(
        "run", "--data", str(world), "--out", str(full_run), env=_env(tmp_path), timeout=600
    )
    assert r.returncode == 0 and "none (all complete)" in r.stderr


def test_killed_run_resumes_and_equals_uninterrupted_run(
    full_run: Path, world: Path, tmp_path: Path
) -> None:
    run = tmp_path / "killed"
    env = _env(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", "run", "--data", str(world), "--out", str(run)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "linkage" / "linkage_settings.yaml").exists():
        time.sleep(0.2)
    assert (run / ".stages" / "validate.json").exists(), "link stage never started"
    time.sleep(2)  # mid-linkage
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / ".stages" / "link.json").exists()
    r = _cohort("run", "--data", str(world), "--out", str(run), env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stages run: link, build, model, report" in r.stderr
    assert _hashes(run) == _hashes(full_run)


def test_run_settings_reach_their_stage_and_rerun_only_from_there(
    full_run: Path, world: Path, tmp_path: Path
) -> None:
    run = tmp_path / "resettled"
    shutil.copytree(full_run, run)
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "model:\n  bootstrap_replicates: 0\n  disclosure: {threshold: 12, rounding: 10}\n"
        "build:\n  duckdb_memory_limit: 2GB\n",
        encoding="utf-8",
    )
    # other settings than the folder was made with: refused unless asked to resume
    r = _cohort(
        "run", "--data", str(world), "--out", str(run), "--settings", str(settings),
        env=_env(tmp_path), timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "different settings" in r.stderr and "--resume" in r.stderr
    r = _cohort(
        "run", "--data", str(world), "--out", str(run), "--settings", str(settings), "--resume",
        env=_env(tmp_path), timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    # validate and link settings unchanged: only the stages from `build` on rerun
    assert "stages run: build, model, report" in r.stderr
    used = (run / "results" / "model_settings.yaml").read_text(encoding="utf-8")
    assert "bootstrap_replicates: 0" in used and "threshold: 12" in used
    m = json.loads((run / "manifest.json").read_text())
    assert "duckdb_memory_limit: 2GB" in m["run_settings"]
    assert "rounded to the nearest 10" in (run / "release" / "README.txt").read_text()
    # a misspelt key is a clear error naming it, before any work
    settings.write_text("model:\n  bootstrap_replicatez: 0\n", encoding="utf-8")
    r = _cohort(
        "run", "--data", str(world), "--out", str(run), "--settings", str(settings),
        env=_env(tmp_path), timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "model.bootstrap_replicatez" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_second_run_on_same_folder_is_refused(world: Path, tmp_path: Path) -> None:
    from ground.errors import RunStateError
    from orchestration.state import RunLock

    with RunLock(tmp_path), pytest.raises(RunStateError, match="in use by pid"), RunLock(tmp_path):
        pass
    # the CLI says so without a traceback
    run = tmp_path / "locked"
    run.mkdir()
    with RunLock(run):
        r = _cohort("run", "--data", str(world), "--out", str(run), env=_env(tmp_path), timeout=300)
    assert r.returncode == 2 and "in use" in r.stderr and "Traceback" not in r.stderr


def test_reproduce_gives_byte_identical_outputs(full_run: Path, tmp_path: Path) -> None:
    r = _cohort(
        "reproduce",
        str(full_run),
        "--out",
        str(tmp_path / "again"),
        env=_env(tmp_path),
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "all outputs byte-identical" in r.stdout


def test_missing_secret_fails_before_any_work(world: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    env.pop("COHORT_PSEUDONYM_SECRET")
    r = _cohort(
        "run", "--data", str(world), "--out", str(tmp_path / "nosecret"), env=env, timeout=300
    )
    assert r.returncode == 2 and "COHORT_PSEUDONYM_SECRET" in r.stderr
    assert not (tmp_path / "nosecret" / "linkage_zone.duckdb").exists()


def test_report_renders_in_headless_chromium(full_run: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (.ci/run installs Debian's chromium)")
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chr'}",
            "--dump-dom",
            (full_run / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for section in (
        "data-quality",
        "linkage",
        "attrition",
        "table1",
        "estimates",
        "km",
        "diagnostics",
        "sensitivity",
        "disclosure",
    ):
        assert f'id="{section}"' in dom, section
    assert dom.count("data:image/png;base64,") >= 5
    assert "http://" not in dom.replace("http://www.w3.org", "") and "https://" not in dom


def test_prefect_server_deploy_worker_run(world: Path, tmp_path: Path) -> None:
    """The real path: server on 127.0.0.1, process pool, deploy, worker, run, stop by pid."""
    env = _env(tmp_path)
    env["PREFECT_HOME"] = str(tmp_path / "server_home")
    r = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "prefect_server_demo.sh"),
            str(world),
            str(tmp_path / "srv_run"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "COMPLETED" in r.stdout
    assert (tmp_path / "srv_run" / "linkage_zone.duckdb").exists()
    leftover = subprocess.run(
        ["pgrep", "-f", f"PREFECT_HOME={env['PREFECT_HOME']}"], capture_output=True
    )
    assert leftover.returncode != 0
