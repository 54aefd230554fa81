"""``RUN/manifest.json``: everything needed to reproduce a run, and hashes of its outputs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import duckdb

from ground import PROJECT_PACKAGES
from ground.db import quote_ident
from ground.run_layout import RunLayout
from orchestration.state import sha256_file, sha256_text
from schemas.contracts import SOURCES

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the checkout: orchestration/ is in it
PACKAGES = (
    "duckdb",
    "polars",
    "pandas",
    "numpy",
    "scipy",
    "splink",
    "great-expectations",
    "prefect",
    "lifelines",
    "statsmodels",
    "scikit-learn",
    "matplotlib",
    "pydantic",
)
# outputs compared by `cohort reproduce`; GX Data Docs carry run timestamps and are excluded
OUTPUT_GLOBS = (
    "validation/dq_report.json",
    "linkage/model.json",
    "linkage/linkage_report.json",
    "cohort/study_config.yaml",
    "results/*.csv",
    "results/figures/*.png",
    "release/*",
    "report.html",
    "codebook.md",
    "codebook.csv",
)
HASHED_TABLES = {
    "linkage": ("linkage.record_person",),
    "analysis": (
        "analysis.persons",
        "cohort.children",
        "cohort.person_time",
        "cohort.school_years",
        "cohort.attrition",
    ),
}


def code_version() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    status = git("status", "--porcelain", "--untracked-files=no")
    out: dict[str, Any] = {
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(status),
    }
    if status:  # uncommitted changes: their hash, so a resumed run notices edited code
        diff = git("diff", "HEAD", "--", *PROJECT_PACKAGES)
        out["diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()
    return out


def package_versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


# SHA-256 of input files already read by this process, keyed by what identifies one version
# of a file (path, device, inode, size, modification time): the run stamp, the stage
# fingerprints and the manifest each need the input hashes, and reading a national delivery
# (about 2 GB) from a cold disk takes over a minute
_FILE_HASHES: dict[tuple[str, int, int, int, int], str] = {}


def _input_file_hash(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = sha256_file(path)
    return _FILE_HASHES[key]


def input_hashes(data_dir: Path) -> dict[str, str]:
    out = {}
    for c in SOURCES.values():
        for ext in ("csv", "parquet"):
            p = data_dir / f"{c.file_stem}.{ext}"
            if p.exists():
                out[p.name] = _input_file_hash(p)
    return out


def table_hash(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """Order-independent content hash of a table (row count, XOR and sum of row hashes)."""
    n, x, s = con.execute(
        f"SELECT count(*), bit_xor(hash(t)), sum(hash(t)::HUGEINT) FROM {quote_ident(table)} t"
    ).fetchone()  # type: ignore[misc]
    return f"{n}:{x}:{s}"


def output_hashes(layout: RunLayout) -> dict[str, str]:
    out: dict[str, str] = {}
    for pattern in OUTPUT_GLOBS:
        for p in sorted(layout.root.glob(pattern)):
            if p.is_file():
                out[str(p.relative_to(layout.root))] = sha256_file(p)
    for db, tables in (
        ("linkage", HASHED_TABLES["linkage"]),
        ("analysis", HASHED_TABLES["analysis"]),
    ):
        path = layout.linkage_db if db == "linkage" else layout.analysis_db
        if not path.exists():
            continue
        con = duckdb.connect(str(path), read_only=True)
        try:
            for t in tables:
                with contextlib.suppress(duckdb.Error):
                    out[f"{path.name}:{t}"] = table_hash(con, t)
        finally:
            con.close()
    return out


def write_manifest(layout: RunLayout, manifest: dict[str, Any]) -> None:
    tmp = layout.manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(layout.manifest)


def lock_hash() -> str:
    p = PROJECT_ROOT / "uv.lock"
    return sha256_file(p) if p.exists() else "no uv.lock"


def run_stamp(data_dir: Path, config_path: str | None, settings: Any) -> dict[str, Any]:
    """What a run folder is made from (``RUN/.run.json``): the code version (git commit, hash
    of uncommitted edits, ``uv.lock``), the SHA-256 of each input extract, and a hash of the run
    settings (a :class:`~orchestration.settings.RunSettings`) and study config."""
    from cohort.config import config_to_yaml, load_study_config

    return {
        # the commit and a hash of uncommitted code edits; not git's "dirty" flag, which an
        # edit to any tracked file (a README) flips
        "code": {
            **{k: v for k, v in code_version().items() if k != "dirty"},
            "lock_file_sha256": lock_hash(),
        },
        "inputs": input_hashes(data_dir),
        "settings": sha256_text(
            settings.stage_yaml("validation")
            + settings.stage_yaml("linkage", exclude={"prefect_secret_block"})
            + settings.stage_yaml("build")
            + settings.stage_yaml("model")
            + config_to_yaml(load_study_config(config_path))
        ),
    }
