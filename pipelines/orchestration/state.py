"""Run-folder state: an exclusive lock, stage markers, and content hashes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pipelines.errors import RunStateError

STAGES = ("validate", "link", "build", "model", "report")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RunLock:
    """An exclusive advisory lock on ``RUN/.lock``; a second run on the same folder fails fast.

    The lock is held by the open file descriptor, so it disappears with the process (no stale
    locks after a kill).
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self._fh: Any = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            raise RunStateError(
                f"run folder {self.path.parent} is in use by {holder}; wait for it to finish or use "
                "another --out folder"
            ) from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"pid {os.getpid()}")
        self._fh.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()


def marker_path(run_dir: Path, stage: str) -> Path:
    return run_dir / ".stages" / f"{stage}.json"


def read_marker(run_dir: Path, stage: str) -> dict[str, Any] | None:
    p = marker_path(run_dir, stage)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def write_marker(run_dir: Path, stage: str, data: dict[str, Any]) -> None:
    """Written last, atomically: a stage counts as done only once its marker exists."""
    p = marker_path(run_dir, stage)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(p)


def clear_markers_from(run_dir: Path, stage: str) -> None:
    for s in STAGES[STAGES.index(stage) :]:
        marker_path(run_dir, s).unlink(missing_ok=True)
