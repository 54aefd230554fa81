"""Prefect environment for the embedded mode: defaults set before Prefect is imported, and the
ephemeral API server as a child process that cannot outlive the command.

Prefect's own ephemeral mode starts a uvicorn server on first use and stops it at interpreter
exit: a ``kill -9`` of the command left that server running, and Ctrl-C in a terminal reached
the server too (same process group), so the flow engine spent minutes retrying to report the
crash to a server that was gone. :func:`prefect_api` starts the same server itself, in its own
session (a terminal's Ctrl-C does not reach it; the command stops it after Prefect has recorded
the interruption), with Linux ``PR_SET_PDEATHSIG`` so it is killed when the command dies.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ground.errors import CohortError

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "CRITICAL",  # user errors are reported by the CLI itself
}


def prefect_defaults() -> None:
    """Put :data:`DEFAULTS` (and a project-local ``PREFECT_HOME``) into this process's
    environment where not already set, before Prefect is imported."""
    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))


class PrefectServerError(CohortError):
    """The ephemeral Prefect API server did not start."""


# Run by the server's interpreter: die with the parent (checked after prctl, so a parent that
# died in between is noticed), then run uvicorn exactly as Prefect's SubprocessASGIServer does.
_SERVER_BOOTSTRAP = """
import ctypes, os, runpy, signal, sys
parent, port = int(sys.argv[1]), sys.argv[2]
try:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != parent:
    sys.exit(0)
import prefect
sys.argv = ["uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", port,
            "--log-level", "error", "--lifespan", "on"]
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """A Prefect API for the duration of the block: ``PREFECT_API_URL`` if set (a real server),
    else Prefect's ephemeral server started as this process's child and stopped on exit (also on
    Ctrl-C or SIGTERM; killed by the kernel if this process is killed). Yields the API URL."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield configured
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = Path(os.environ.get("PREFECT_HOME", Path.cwd() / ".prefect"))
    home.mkdir(parents=True, exist_ok=True)
    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"))
    server_env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    log_path = home / "ephemeral_server.log"
    with log_path.open("ab") as server_log:
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER_BOOTSTRAP, str(os.getpid()), str(port)],
            env=server_env,
            stdin=subprocess.DEVNULL,
            stdout=server_log,
            stderr=server_log,
            start_new_session=True,  # a terminal's Ctrl-C is the command's to handle
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise PrefectServerError(
                    f"the ephemeral Prefect server did not start within {timeout:.0f} s "
                    f"(exit code {proc.poll()}); see {log_path}, or set PREFECT_API_URL to a "
                    "running Prefect server"
                )
            time.sleep(0.1)
        os.environ["PREFECT_API_URL"] = url
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                try:
                    yield url
                finally:
                    drain_prefect_services()
        finally:
            os.environ.pop("PREFECT_API_URL", None)
    finally:
        stop_process(proc)


def drain_prefect_services(timeout: float = 5.0) -> None:
    """Send the events and logs Prefect still queues while the server is up. Left to
    Prefect's exit hook, they would be sent after the server stopped, and its client retries
    with back-off for about 20 s before the command could exit."""
    with contextlib.suppress(Exception):  # best effort: never hide the run's own outcome
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for service in (EventsWorker, APILogWorker):
            service.drain_all(timeout=timeout, at_exit=False)
