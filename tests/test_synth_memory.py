"""The generator's memory-saving mechanics (issue #18): in force, and the output unchanged.

``synthetic_data.world.chunks`` computes long per-row values (health-event rates, the school
census's columns) a chunk of rows at a time and takes each column's random draws chunk after
chunk. The bytes must not depend on the chunk size: a world made with chunks of a few hundred
rows (hundreds of chunks per column at 1,500 children) must equal one made in one chunk.
"""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

import synthetic_data.world as world
from orchestration.commands import synth
from synthetic_data import generate_world
from tests.e2e import ROOT, _env


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# effect_modification switches on every branch of the chunked code (care x adversity and
# years since entry in the hazards and absence)
@pytest.mark.parametrize("scenario", ["default", "effect_modification"])
def test_chunk_size_does_not_change_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str
) -> None:
    one, many = tmp_path / "one_chunk", tmp_path / "many_chunks"
    monkeypatch.setattr(world, "CHUNK_ROWS", 10**9)
    generate_world(n_children=1500, seed=4, scenario=scenario, out_dir=one)
    monkeypatch.setattr(world, "CHUNK_ROWS", 333)
    generate_world(n_children=1500, seed=4, scenario=scenario, out_dir=many)
    assert len(_hashes(one)) == 7 + 1 + 10  # 10 truth files: ks4_entry_trials.json the tenth
    assert _hashes(many) == _hashes(one)


def test_chunks_cover_every_row_once() -> None:
    for m in (0, 1, world.CHUNK_ROWS - 1, world.CHUNK_ROWS, 2 * world.CHUNK_ROWS + 5):
        parts = list(world.chunks(m))
        assert [p.start for p in parts] == list(range(0, m, world.CHUNK_ROWS))
        assert sum(p.stop - p.start for p in parts) == m
        assert all(a.stop == b.start for a, b in itertools.pairwise(parts))


def _synth_process(out: Path, tmp: Path, patch: str = "", **env_extra: str) -> str:
    """``cohort synth`` in a fresh process, as from the command line (``patch``: Python run
    first, in that process); returns its stderr."""
    env = _env(tmp)
    env.pop(synth.POLARS_ALLOCATOR_VARIABLE, None)
    env.update(env_extra)
    code = (
        "import sys\nimport orchestration.commands.synth as synth\n" + patch + "\n"
        "from orchestration.cli import main\n"
        f"sys.argv = ['cohort', 'synth', '--children', '300', '--seed', '3', '--out', {str(out)!r}]\n"
        "main()\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stderr


def test_synth_runs_with_polars_keeping_freed_memory(tmp_path: Path) -> None:
    """jemalloc (inside polars) reports the options it was configured with when asked for its
    statistics at exit: the command's setting must be among them, so it is set before polars
    loads. A user's own setting wins, and the bytes are the same either way."""
    stderr = _synth_process(
        tmp_path / "kept",
        tmp_path,
        patch="synth.POLARS_ALLOCATOR_OPTIONS += ',stats_print:true'",
    )
    assert "opt.dirty_decay_ms: -1" in stderr and "opt.muzzy_decay_ms: -1" in stderr
    polars_default = "dirty_decay_ms:500,muzzy_decay_ms:1000,stats_print:true"
    stderr = _synth_process(
        tmp_path / "purged", tmp_path, **{synth.POLARS_ALLOCATOR_VARIABLE: polars_default}
    )
    assert "opt.dirty_decay_ms: 500" in stderr and "opt.muzzy_decay_ms: 1000" in stderr
    assert _hashes(tmp_path / "kept") == _hashes(tmp_path / "purged")
