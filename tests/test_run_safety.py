"""Resume that checks, and nothing unsafe left behind (issue 16, items 4-6): the key check
value, outputs checked before a stage is skipped, the run-folder stamp, dependants removed
before a rerun, dated scheduled folders, umask 077, interruption (SIGINT / SIGTERM / SIGKILL)
and the command line's operational faults."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ground.errors import RunStateError
from orchestration import state
from tests.e2e import ROOT, SECRET, _cohort, _env


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    (dest / ".lock").unlink(missing_ok=True)
    return dest


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:  # type: ignore[type-arg]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


# --- key check value ------------------------------------------------------------------------


def test_key_check_value_tells_secrets_apart_without_holding_them() -> None:
    a, b = state.key_check_value(b"a" * 32), state.key_check_value(b"b" * 32)
    assert a != b and len(a) == 64 and a == state.key_check_value(b"a" * 32)
    assert "a" * 32 not in a


def test_a_different_secret_refuses_to_resume(full_run: Path, world: Path, tmp_path: Path) -> None:
    marker = json.loads((full_run / ".stages" / "link.json").read_text())
    assert marker["key_check_value"] == state.key_check_value(SECRET.encode())
    assert SECRET not in json.dumps(marker)
    run = _copy(full_run, tmp_path / "run")
    before = (run / ".stages" / "link.json").read_bytes()
    env = _env(tmp_path)
    env["COHORT_PSEUDONYM_SECRET"] = "another-secret-0123456789abcdef"
    for extra in ([], ["--resume"]):
        r = _cohort("run", "--data", str(world), "--out", str(run), *extra, env=env, timeout=300)
        _one_line_error(r, "different pseudonymisation secret", "--replace")
    # --demo without the real key: the demo key differs from the one that made the keys
    env.pop("COHORT_PSEUDONYM_SECRET")
    r = _cohort("run", "--data", str(world), "--out", str(run), "--demo", env=env, timeout=300)
    _one_line_error(r, "different pseudonymisation secret")
    assert (run / ".stages" / "link.json").read_bytes() == before
    assert json.loads((run / "manifest.json").read_text())["demo_secret"] is False


# --- outputs checked before a skip, dependants removed before a rerun --------------------------


@pytest.mark.slow  # about 49 s (a whole run and a rerun); `make test-slow`: make test was 9.5 min
def test_deleted_outputs_are_rebuilt(full_run: Path, world: Path, tmp_path: Path) -> None:
    run = _copy(full_run, tmp_path / "run")
    (run / "analysis_zone.duckdb").unlink()
    (run / "release" / "estimates.csv").unlink()
    r = _cohort("run", "--data", str(world), "--out", str(run), env=_env(tmp_path), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stages run: link, build, model, report" in r.stderr
    assert (run / "analysis_zone.duckdb").exists() and (run / "release" / "estimates.csv").exists()
    old = json.loads((full_run / "manifest.json").read_text())["output_hashes"]
    new = json.loads((run / "manifest.json").read_text())["output_hashes"]
    assert new == old


def test_a_changed_output_fails_the_check_and_tables_are_checked(
    full_run: Path, tmp_path: Path
) -> None:
    run = _copy(full_run, tmp_path / "run")
    for stage in state.STAGES:
        recorded = json.loads((run / ".stages" / f"{stage}.json").read_text())["outputs"]
        assert state.outputs_intact(run, stage, recorded), stage
    model = json.loads((run / ".stages" / "model.json").read_text())["outputs"]
    assert "release/estimates.csv" in model
    with (run / "release" / "estimates.csv").open("a") as fh:
        fh.write("tampered\n")
    assert not state.outputs_intact(run, "model", model)
    build = json.loads((run / ".stages" / "build.json").read_text())["outputs"]
    assert any(k.startswith("analysis_zone.duckdb:cohort.") for k in build)
    import duckdb

    con = duckdb.connect(str(run / "analysis_zone.duckdb"))
    con.execute(
        "DELETE FROM cohort.children WHERE rowid = (SELECT min(rowid) FROM cohort.children)"
    )
    con.close()
    assert not state.outputs_intact(run, "build", build)


def test_a_rerun_removes_what_depends_on_it_first(full_run: Path, tmp_path: Path) -> None:
    import duckdb

    run = _copy(full_run, tmp_path / "run")
    state.clear_from(run, "link")
    assert sorted(p.stem for p in (run / ".stages").iterdir()) == ["validate"]
    for gone in ("results", "release", "report.html", "cohort", "linkage"):
        assert not (run / gone).exists(), gone
    con = duckdb.connect(str(run / "analysis_zone.duckdb"), read_only=True)
    schemas = {s for (s,) in con.execute("SELECT schema_name FROM duckdb_schemas()").fetchall()}
    con.close()
    # build's tables go; link's own are replaced by the rerun itself (it swaps in a new file)
    assert "analysis" in schemas and "cohort" not in schemas
    state.clear_from(run, "validate")
    assert not (run / "analysis_zone.duckdb").exists() and not (run / "linkage").exists()
    con = duckdb.connect(str(run / "linkage_zone.duckdb"), read_only=True)
    schemas = {s for (s,) in con.execute("SELECT schema_name FROM duckdb_schemas()").fetchall()}
    con.close()
    assert "staging" in schemas and "linkage" not in schemas
    assert not (run / ".stages" / "validate.json").exists()


# --- the run folder's stamp -----------------------------------------------------------------


STAMP = {"code": {"git_commit": "abc"}, "inputs": {"a.csv": "1"}, "settings": "s"}


def test_run_folder_stamp_rules(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert state.prepare_run_folder(run, STAMP) == "new"
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    (run / "linkage_zone.duckdb").write_bytes(b"x")
    assert state.prepare_run_folder(run, STAMP) == "resume"  # same code, data, settings
    other = {**STAMP, "inputs": {"a.csv": "2"}}
    with pytest.raises(RunStateError, match="different input data; rerun with --resume"):
        state.prepare_run_folder(run, other)
    with pytest.raises(RunStateError, match="contradict"):
        state.prepare_run_folder(run, other, resume=True, replace=True)
    assert state.prepare_run_folder(run, other, resume=True) == "resume"
    assert state.read_stamp(run) == other
    assert state.prepare_run_folder(run, STAMP, replace=True) == "replace"
    assert not (run / "linkage_zone.duckdb").exists() and state.read_stamp(run) == STAMP
    # a folder that is not a run folder is never emptied, whatever the flags
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_text("years of work")
    for flags in ({}, {"resume": True}, {"replace": True}):
        with pytest.raises(RunStateError, match="not empty and is not a run folder"):
            state.prepare_run_folder(mine, STAMP, **flags)
    assert (mine / "thesis.docx").read_text() == "years of work"
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.docx"]


def test_reusing_a_folder_made_from_other_data_needs_resume_or_replace(
    full_run: Path, world: Path, tmp_path: Path
) -> None:
    run = _copy(full_run, tmp_path / "run")
    other = tmp_path / "other_world"
    shutil.copytree(world, other)
    with (other / "school_census.csv").open("a", encoding="utf-8") as fh:
        fh.write("\n")
    env = _env(tmp_path)
    before = {p: p.read_bytes() for p in (run / ".stages").iterdir()}
    r = _cohort("run", "--data", str(other), "--out", str(run), env=env, timeout=300)
    _one_line_error(r, "different input data", "--resume", "--replace")
    assert {p: p.read_bytes() for p in (run / ".stages").iterdir()} == before
    # a non-empty folder that is not a run folder: refused, even with --replace, untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = _cohort("run", "--data", str(world), "--out", str(mine), "--replace", env=env, timeout=300)
    _one_line_error(r, "not a run folder")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_dated_run_folders() -> None:
    day = datetime.date(2026, 3, 2)
    assert state.expand_run_dir("runs/scheduled/{date}", day) == "runs/scheduled/2026-03-02"
    assert state.expand_run_dir("runs/x", day) == "runs/x"
    import yaml

    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    monthly = next(d for d in deployments if d["name"] == "monthly-full-run")
    assert "{date}" in monthly["parameters"]["run_dir"]


# --- nothing unsafe left behind -------------------------------------------------------------


def test_run_folders_are_private(full_run: Path) -> None:
    """umask 077: the run folder and everything in it is readable by its owner only."""
    assert stat.S_IMODE(full_run.stat().st_mode) == 0o700
    for p in [full_run, *full_run.rglob("*")]:
        assert stat.S_IMODE(p.lstat().st_mode) & 0o077 == 0, p


def _processes_with(prefect_home: Path) -> list[str]:
    """Live processes whose environment has this PREFECT_HOME (the run's server and stages)."""
    needle = f"PREFECT_HOME={prefect_home}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle not in (d / "environ").read_bytes().split(b"\0"):
                continue
            if (d / "stat").read_text().split(") ")[1].split()[0] == "Z":
                continue
            found.append(f"{d.name} {(d / 'cmdline').read_bytes()[:120]!r}")
        except OSError:
            continue
    return found


def _start_run(world: Path, run: Path, env: dict[str, str], log: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", "run", "--data", str(world), "--out", str(run)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline and not (run / "validation" / "validation_settings.yaml").exists():
        assert proc.poll() is None, log.read_text()[-2000:]
        time.sleep(0.1)
    time.sleep(1.0)  # the validation stage's process is at work
    return proc


@pytest.mark.parametrize(
    ("signum", "to_group", "code"),
    [
        pytest.param(signal.SIGINT, True, 130, id="ctrl-c"),
        pytest.param(signal.SIGTERM, False, 143, id="sigterm", marks=pytest.mark.slow),
    ],
)
def test_interrupt_ends_promptly_and_cleanly(
    world: Path, tmp_path: Path, signum: int, to_group: bool, code: int
) -> None:
    env = _env(tmp_path)
    log = tmp_path / "stderr.txt"
    proc = _start_run(world, tmp_path / "run", env, log)
    assert _processes_with(tmp_path / "prefect_home"), "no stage or server process seen"
    t0 = time.monotonic()
    if to_group:  # a terminal's Ctrl-C reaches the whole foreground process group
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    proc.wait(timeout=60)
    took = time.monotonic() - t0
    err = log.read_text()
    assert proc.returncode == code, err[-2000:]
    assert took < 10, took
    assert "Traceback" not in err and "Aborted" not in err, err[-3000:]
    assert err.rstrip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    # the run has exited; its server's own children may take a moment to finish exiting on a
    # loaded machine (the other test worker): none may be left after a few seconds
    deadline = time.monotonic() + 5
    while _processes_with(tmp_path / "prefect_home") and time.monotonic() < deadline:
        time.sleep(0.25)
    assert _processes_with(tmp_path / "prefect_home") == []
    assert not (tmp_path / "run" / ".stages" / "validate.json").exists()


@pytest.mark.slow  # about 18 s (a Prefect server start); `make test-slow`
def test_sigkill_leaves_no_prefect_server_or_stage_process(world: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    proc = _start_run(world, tmp_path / "run", env, tmp_path / "stderr.txt")
    assert len(_processes_with(tmp_path / "prefect_home")) >= 2  # the CLI, server, stage...
    proc.kill()  # only the command: its children must not outlive it
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _processes_with(tmp_path / "prefect_home"):
        time.sleep(0.2)
    assert _processes_with(tmp_path / "prefect_home") == []


# --- operational faults at the command line -------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--children", "0"], "--children 0: give a number from 100"),
        (["--children", "100000000000000"], "--children 100000000000000"),
        (["--seed", "-1"], "--seed -1: give a whole number from 0"),
    ],
)
def test_synth_ranges_checked_before_work(tmp_path: Path, args: list[str], needle: str) -> None:
    r = _cohort("synth", *args, "--out", str(tmp_path / "w"), env=_env(tmp_path), timeout=120)
    _one_line_error(r, needle)
    assert not (tmp_path / "w").exists()


def test_synth_children_not_a_number(tmp_path: Path) -> None:
    r = _cohort("synth", "--children", "1e14", "--out", str(tmp_path / "w"), env=_env(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--children" in r.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.slow  # about 18 s (a Prefect server start); `make test-slow`
def test_mistyped_secret_block_fails_before_validation(world: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    env.pop("COHORT_PSEUDONYM_SECRET")
    run = tmp_path / "run"
    r = _cohort(
        "run", "--data", str(world), "--out", str(run), "--secret-block", "no-such-blok",
        env=env, timeout=300,
    )  # fmt: skip
    _one_line_error(r, "no Prefect Secret block named 'no-such-blok'")
    assert not (run / "linkage_zone.duckdb").exists() and not (run / "validation").exists()


@pytest.fixture
def process_state() -> object:
    """``cli.main()`` sets the umask and signal handlers of this process: put them back."""
    umask = os.umask(0o022)
    os.umask(umask)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield None
    os.umask(umask)
    for s, h in handlers.items():
        signal.signal(s, h)


def test_filesystem_faults_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    process_state: object,
) -> None:
    """Permission denied, read-only and full disks, also as DuckDB reports them, whether
    raised in this process or in a stage process: one line, the path, exit code 2."""
    import errno

    from orchestration import cli
    from orchestration.isolation import _portable

    target = str(tmp_path / "run" / "linkage_zone.duckdb.wal")
    faults = [
        (PermissionError(errno.EACCES, "Permission denied", target), "choose a folder"),
        (OSError(errno.EROFS, "Read-only file system", target), "read-only"),
        (OSError(errno.ENOSPC, "No space left on device", target), "free space"),
        (
            RuntimeError(f'IO Error: Could not write file "{target}": No space left on device'),
            "free space",
        ),
    ]
    for fault, advice in faults:
        for raised in (fault, _portable(fault)):  # in-process, and back from a stage process

            def boom(raised: BaseException = raised) -> None:
                raise raised

            monkeypatch.setattr(cli, "app", boom)
            with pytest.raises(SystemExit) as exit_info:
                cli.main()
            assert exit_info.value.code == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("error: "), err
            assert target in err and advice in err, err
    # anything else is a bug and keeps its traceback
    monkeypatch.setattr(cli, "app", lambda: {}["x"])
    with pytest.raises(KeyError):
        cli.main()


def _unshare_mount(tmp_path: Path, options: str, command: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    """``command`` with a fresh tmpfs at tmp_path/mnt, in a private mount namespace (root on
    Linux); skipped where that is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o {options} tmpfs {mnt}"],
        capture_output=True,
    )
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and unshare)")
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o {options} tmpfs {mnt} && {command}"],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_read_only_output_folder(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "mnt" / "run"
    r = _unshare_mount(
        tmp_path,
        "ro,size=1m",
        f"{sys.executable} -m orchestration.cli run --data {world} --out {out}",
    )
    _one_line_error(r, "Read-only file system", str(out), "choose a folder you can write to")


def test_full_disk_leaves_no_half_written_world(tmp_path: Path) -> None:
    out = tmp_path / "mnt" / "w"
    r = _unshare_mount(
        tmp_path,
        "size=1m",
        f"{sys.executable} -m orchestration.cli synth --children 2000 --out {out}; "
        f"rc=$?; ls -A {tmp_path / 'mnt'}; exit $rc",
    )
    _one_line_error(r, "No space left on device", str(out), "free space")
    assert r.stdout.strip() == ""  # the mount is empty: nothing half-written


def test_input_hashes_are_read_once_and_follow_a_changed_file(tmp_path: Path) -> None:
    from orchestration import manifest

    extract = tmp_path / "attainment.csv"
    extract.write_text("record_id\n1\n", encoding="utf-8")
    first = manifest.input_hashes(tmp_path)
    assert manifest.input_hashes(tmp_path) == first  # from the cache
    extract.write_text("record_id\n2\n", encoding="utf-8")  # same size, new content
    os.utime(extract, ns=(1, 1))  # and a different modification time
    assert manifest.input_hashes(tmp_path) != first
