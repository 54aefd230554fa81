"""End to end: `cohort run`, resume after a kill, the run lock, `cohort reproduce`, the report
rendered in headless Chromium, and the real Prefect server path."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from tests.e2e import ROOT, _cohort, _env, headless_chromium


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
    # both memory measures, per stage: PSS splits shared pages, so it never exceeds RSS
    assert set(m["peak_pss_gib"]) == set(m["timings_seconds"])
    assert all(0 < m["peak_pss_gib"][s] <= m["peak_memory_gib"][s] for s in m["peak_pss_gib"])
    assert m["delivery_metadata"]["seed"] == 13
    run = tmp_path / "rerun"  # a copy: the session's run is shared by the xdist workers
    shutil.copytree(full_run, run)
    r = _cohort("run", "--data", str(world), "--out", str(run), env=_env(tmp_path), timeout=600)
    assert r.returncode == 0 and "none (all complete)" in r.stderr


@pytest.mark.slow  # about 68 s (a whole run and a rerun); `make test-slow`: make test was 9.5 min
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
    dom = headless_chromium(
        "--dump-dom", (full_run / "report.html").as_uri(), profile=tmp_path / "chr", check=False
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
    script = ROOT / "scripts" / "prefect_server_demo.sh"
    proc = subprocess.Popen(
        ["bash", str(script), str(world), str(tmp_path / "srv_run")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:  # SIGTERM: the script's trap stops its server and worker
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"the server demo did not finish in 600 s:\n{out[-3000:]}\n{err[-3000:]}")
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "COMPLETED" in r.stdout
    assert (tmp_path / "srv_run" / "linkage_zone.duckdb").exists()
    # read back through the Prefect API by the script: the run is named after the delivery and
    # the day, and the project's own log lines are in its logs, counts scrubbed
    lines = r.stderr.splitlines()
    assert f"flow run name: validate {world.name} {date.today().isoformat()}" in lines, r.stderr
    project = [ln for ln in lines if ln.startswith("flow run log validation")]
    assert any("validating school_census" in ln for ln in project), r.stderr[-3000:]
    assert any("GX suite" in ln and "# expectations checked" in ln for ln in project), project
    assert not any(re.search(r"(?<![\w.])\d+(?![\w.%])", ln.split(": ", 1)[1]) for ln in project)
    leftover = subprocess.run(
        ["pgrep", "-f", f"PREFECT_HOME={env['PREFECT_HOME']}"], capture_output=True
    )
    assert leftover.returncode != 0


# --- every stage command reads its section of the run settings the same way ----------------

STAGE_SETTINGS = (
    "validation:\n  min_rows: 7\n  run_great_expectations: false\n"
    "linkage:\n  match_threshold: 0.9\n  spark_master: local[3]\n"
    "build:\n  duckdb_memory_limit: 3GB\n"
    "model:\n  bootstrap_replicates: 0\n"
)


def _invoke_stage(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Run a stage command in process with its stage function replaced by one that records
    the keyword arguments it was given."""
    from typer.testing import CliRunner

    import cohort
    import cohort.export
    import linkage
    import models.run
    import orchestration.state
    import validation
    from orchestration.cli import app

    seen: dict[str, object] = {}

    class _Summary:
        def to_markdown(self) -> str:
            return ""

    def record(**kwargs: object) -> _Summary:
        seen.update(kwargs)
        return _Summary()

    monkeypatch.setattr(validation, "validate_delivery", record)
    monkeypatch.setattr(linkage, "link_run", record)
    monkeypatch.setattr(cohort, "build_cohort", record)
    monkeypatch.setattr(cohort.export, "export_parquet", lambda layout: [])  # after the build
    monkeypatch.setattr(models.run, "run_models", record)
    monkeypatch.setattr(orchestration.state, "write_marker", lambda *a, **k: None)
    monkeypatch.setenv("COHORT_PSEUDONYM_SECRET", "orchestration-test-secret-0123456789")
    result = CliRunner().invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return seen


def test_stage_commands_use_their_section_of_the_run_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text(STAGE_SETTINGS, encoding="utf-8")
    run = str(tmp_path / "run")

    seen = _invoke_stage(
        ["validate", "--data", str(tmp_path), "--out", run, "--settings", str(settings)],
        monkeypatch,
    )
    assert seen["settings"].min_rows == 7  # type: ignore[attr-defined]
    assert seen["settings"].run_great_expectations is False  # type: ignore[attr-defined]

    seen = _invoke_stage(["link", "--run", run, "--settings", str(settings)], monkeypatch)
    assert seen["settings"].match_threshold == 0.9  # type: ignore[attr-defined]
    assert seen["settings"].spark_master == "local[3]"  # type: ignore[attr-defined]

    seen = _invoke_stage(["build", "--run", run, "--settings", str(settings)], monkeypatch)
    assert seen["memory_limit"] == "3GB"

    seen = _invoke_stage(["model", "--run", run, "--settings", str(settings)], monkeypatch)
    assert seen["settings"].bootstrap_replicates == 0  # type: ignore[attr-defined]

    # without --settings: the defaults, as `cohort run` uses them
    seen = _invoke_stage(["link", "--run", run], monkeypatch)
    # no threshold: chosen from the trained model (linkage.settings.target_precision)
    assert seen["settings"].match_threshold is None  # type: ignore[attr-defined]
    assert seen["settings"].target_precision == 0.95  # type: ignore[attr-defined]
    seen = _invoke_stage(["build", "--run", run], monkeypatch)
    assert seen["memory_limit"] == "6GB"


def test_link_flags_override_the_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text(STAGE_SETTINGS, encoding="utf-8")
    seen = _invoke_stage(
        ["link", "--run", str(tmp_path), "--settings", str(settings), "--threshold", "0.97",
         "--model", "m.json"],
        monkeypatch,
    )  # fmt: skip
    used = seen["settings"]
    assert used.match_threshold == 0.97 and used.model_path == "m.json"  # type: ignore[attr-defined]
    assert used.spark_master == "local[3]"  # type: ignore[attr-defined]  # from the file


def test_stage_settings_errors_name_the_file_and_key(tmp_path: Path) -> None:
    from ground.errors import ConfigError
    from orchestration.commands.link import linkage_settings
    from orchestration.settings import load_run_settings

    settings = tmp_path / "settings.yaml"
    settings.write_text("linkage:\n  match_treshold: 0.9\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"settings\.yaml: linkage\.match_treshold: Extra"):
        linkage_settings(settings)
    # a file written for the old `cohort validate --settings` (the validation keys alone)
    settings.write_text("min_rows: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"settings\.yaml: `min_rows` .* under `validation:`"):
        load_run_settings(settings)
    settings.write_text("duckdb_memory_limit: 2GB\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"sections `validation:`, `linkage:`, `build:`"):
        load_run_settings(settings)
    # a flag is validated as the file is, and named
    with pytest.raises(ConfigError, match=r"--threshold 1\.5: .*less than 1"):
        linkage_settings(None, threshold=1.5)
    with pytest.raises(ConfigError, match=r"--backend sprak: .*'duckdb' or 'spark'"):
        linkage_settings(None, backend="sprak")
    with pytest.raises(ConfigError, match="does not exist"):
        linkage_settings(tmp_path / "missing.yaml")


def test_stage_command_settings_error_is_one_line(tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("build:\n  duckdb_memory_limit: lots\n", encoding="utf-8")
    r = _cohort(
        "build", "--run", str(tmp_path), "--settings", str(settings), env=_env(tmp_path),
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "settings.yaml: build.duckdb_memory_limit" in r.stderr
    assert "Traceback" not in r.stderr


def test_link_takes_the_key_from_the_settings_secret_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cohort link --settings` finds the key where `cohort run` would: the Prefect Secret block
    the linkage section names, not the environment (the Prefect API is stubbed here; the real
    look-up is tested with `cohort run --secret-block` in test_run_safety)."""
    import contextlib

    import orchestration.env
    import orchestration.secrets

    looked_up: list[str] = []

    def from_block(name: str) -> bytes:
        looked_up.append(name)
        return b"key-from-the-block-0123456789"

    monkeypatch.setattr(orchestration.secrets, "secret_from_block", from_block)
    monkeypatch.setattr(orchestration.env, "prefect_api", contextlib.nullcontext)
    monkeypatch.setattr(orchestration.env, "prefect_defaults", lambda: None)
    settings = tmp_path / "settings.yaml"
    settings.write_text("linkage:\n  prefect_secret_block: cohort-key\n", encoding="utf-8")
    seen = _invoke_stage(["link", "--run", str(tmp_path), "--settings", str(settings)], monkeypatch)
    assert looked_up == ["cohort-key"]
    assert seen["secret"] == b"key-from-the-block-0123456789"


# --- the project's log lines in Prefect (orchestration/prefect_logs.py) ----------------------


def test_log_lines_sent_to_prefect_carry_no_counts() -> None:
    from orchestration.prefect_logs import disclosure_safe

    assert disclosure_safe("linkage: 2500 records, 1234 components, 57 profiles") == (
        "linkage: # records, # components, # profiles"
    )
    assert disclosure_safe("GX suite school_census: 12 expectations checked") == (
        "GX suite school_census: # expectations checked"
    )
    # stage counters, durations, decimals, percentages and names with digits stay
    kept = "stage link [2/5]: done in 42 s; threshold 0.95, 99.5% linked, e2e_world0, 1.5 s"
    assert disclosure_safe(kept) == kept
    assert disclosure_safe("blocking on dob gives 7 pairs (over the budget of 200: not used)") == (
        "blocking on dob gives # pairs (over the budget of #: not used)"
    )


def test_log_lines_from_another_thread_go_to_the_innermost_open_run() -> None:
    """A stage's child process logs through a thread of the parent (no Prefect run context
    there): its lines are tied to the run open at the time, scrubbed, and the handler leaves
    the project loggers when the last run closes."""
    import logging
    import threading
    import uuid

    from orchestration.prefect_logs import _RUN_LOGS

    flow_run, task_run = uuid.uuid4(), uuid.uuid4()
    outer, inner = (flow_run, None), (flow_run, task_run)
    _RUN_LOGS.push(outer)
    _RUN_LOGS.push(inner)
    handler = _RUN_LOGS.handler
    assert handler is not None and handler in logging.getLogger("linkage").handlers
    prepared: list[dict[str, object]] = []

    def log_from_a_thread() -> None:
        record = logging.LogRecord("linkage", logging.INFO, "x", 1, "%d records", (2500,), None)
        prepared.append(handler.prepare(record))  # type: ignore[attr-defined]

    try:
        t = threading.Thread(target=log_from_a_thread)
        t.start()
        t.join()
    finally:
        _RUN_LOGS.pop(inner)
        _RUN_LOGS.pop(outer)
    (sent,) = prepared
    assert sent["message"] == "# records"
    assert str(sent["flow_run_id"]) == str(flow_run) and str(sent["task_run_id"]) == str(task_run)
    assert _RUN_LOGS.handler is None
    assert handler not in logging.getLogger("linkage").handlers
