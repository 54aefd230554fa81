"""Prefect environment defaults for the embedded mode (set before Prefect is imported)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "CRITICAL",  # user errors are reported by the CLI itself
}


def prefect_defaults(environ: dict[str, str] | None = None) -> None:
    env = os.environ if environ is None else environ
    for k, v in DEFAULTS.items():
        env.setdefault(k, v)
    env.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
