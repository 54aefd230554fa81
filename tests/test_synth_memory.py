"""The generator's memory-saving mechanics (issue #18) leave its output unchanged.

``synthetic_data.world.chunks`` computes long per-row values (health-event rates, the school
census's columns) a chunk of rows at a time and takes each column's random draws chunk after
chunk. The bytes must not depend on the chunk size: a world made with chunks of a few hundred
rows (hundreds of chunks per column at 1,500 children) must equal one made in one chunk.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest

import synthetic_data.world as world
from synthetic_data import generate_world


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
    assert len(_hashes(one)) == 7 + 1 + 9
    assert _hashes(many) == _hashes(one)


def test_chunks_cover_every_row_once() -> None:
    for m in (0, 1, world.CHUNK_ROWS - 1, world.CHUNK_ROWS, 2 * world.CHUNK_ROWS + 5):
        parts = list(world.chunks(m))
        assert [p.start for p in parts] == list(range(0, m, world.CHUNK_ROWS))
        assert sum(p.stop - p.start for p in parts) == m
        assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
