"""Differential linkage error: identifier noise whose rate depends on who the child is.

Real missed links are not random: NHS numbers are missing more often, postcodes are out of
date more often, and names are recorded less consistently for some children than others
(Harron et al. 2017, "Challenges in administrative data linkage for research"; Hagger-Johnson
et al. 2017 on missed links by ethnicity and deprivation in HES). The scenario's
``noise.differential`` section (:class:`DifferentialNoise`) gives multipliers on the base
``noise`` rates for four groups of children, plus one extra kind of noise, and
:func:`record_rate` turns them into one rate per record:

* ``looked_after``: records dated on or after the child's first entry to care (and, for the
  person-level surname change, children who ever enter care);
* ``most_deprived``: children in deprivation deciles 9-10;
* ``minority_ethnic``: children whose recorded ethnicity is not White British (names from
  naming traditions that English systems transliterate and spell inconsistently);
* ``movers``: children with at least ``movers_min_moves`` house moves in the window.

Multipliers of several groups multiply; a rate is capped at 1. With every multiplier 1.0 and
``placement_postcode`` 0 (the defaults) :func:`record_rate` returns the base rate itself, so
the extracts of every existing scenario are byte-identical to those before this module.

``placement_postcode`` (looked-after children only) is the share of their health records
(admissions and emergency department) dated after entry to care that carry the postcode of a
placement address that is in no population-register record: with a missing NHS number such a
record has nothing left to block on, and its outcome goes unlinked.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

NoiseKind = Literal["typo", "nickname", "surname_change", "missing_nhs", "stale_postcode"]


class GroupMultipliers(BaseModel):
    """Multipliers on the base noise rates for one group of children (1.0: as everyone)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    typo: float = Field(1.0, ge=0, le=50)
    nickname: float = Field(1.0, ge=0, le=50)
    surname_change: float = Field(1.0, ge=0, le=50, description="person-level surname change")
    missing_nhs: float = Field(1.0, ge=0, le=50, description="register, admissions and ED")
    stale_postcode: float = Field(1.0, ge=0, le=50)

    def is_neutral(self) -> bool:
        return all(v == 1.0 for v in self.model_dump().values())


class DifferentialNoise(BaseModel):
    """Noise multipliers by group (``noise.differential`` in a scenario); default: none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    looked_after: GroupMultipliers = GroupMultipliers()
    most_deprived: GroupMultipliers = GroupMultipliers()
    minority_ethnic: GroupMultipliers = GroupMultipliers()
    movers: GroupMultipliers = GroupMultipliers()
    movers_min_moves: int = Field(2, ge=1, le=20, description="house moves that make a mover")
    placement_postcode: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of a looked-after child's health records after entry to care that "
        "carry a placement postcode found in no register record",
    )

    def is_neutral(self) -> bool:
        groups = (self.looked_after, self.most_deprived, self.minority_ethnic, self.movers)
        return all(g.is_neutral() for g in groups) and self.placement_postcode == 0.0


#: the ethnicity code of the majority group (schemas/codelists/ethnicity.csv)
MAJORITY_ETHNICITY = "WBRI"


def record_rate(
    base: float,
    kind: NoiseKind,
    differential: DifferentialNoise,
    person: np.ndarray,
    when: np.ndarray | None,
    *,
    first_entry: np.ndarray,
    decile: np.ndarray,
    minority: np.ndarray,
    moves: np.ndarray,
) -> float | np.ndarray:
    """The rate of noise ``kind`` for each record (person ``person`` at day ``when``; ``when``
    None: a person-level event, where ever entering care counts). Returns ``base`` itself when
    no group changes this kind (so the random draws compare exactly as before)."""
    factors = {
        "looked_after": differential.looked_after,
        "most_deprived": differential.most_deprived,
        "minority_ethnic": differential.minority_ethnic,
        "movers": differential.movers,
    }
    if all(getattr(g, kind) == 1.0 for g in factors.values()):
        return base
    entry = first_entry[person]
    in_care = (entry >= 0) if when is None else ((entry >= 0) & (np.asarray(when) >= entry))
    member = {
        "looked_after": in_care,
        "most_deprived": decile[person] >= 9,
        "minority_ethnic": minority[person],
        "movers": moves[person] >= differential.movers_min_moves,
    }
    rate = np.full(person.size, float(base))
    for name, group in factors.items():
        mult = getattr(group, kind)
        if mult != 1.0:
            rate = np.where(member[name], rate * mult, rate)
    return np.minimum(rate, 1.0)


class LinkageError:
    """The per-record noise rates of one world (built once per extract run)."""

    def __init__(
        self,
        differential: DifferentialNoise,
        *,
        first_entry: np.ndarray,
        decile: np.ndarray,
        ethnicity_codes: list[str],
        ethnicity: np.ndarray,
        res_person: np.ndarray,
        n: int,
    ) -> None:
        self.differential = differential
        self.first_entry = first_entry
        self.decile = decile
        majority = ethnicity_codes.index(MAJORITY_ETHNICITY)
        self.minority = np.asarray(ethnicity) != majority
        # house moves: residences after the first
        self.moves = np.maximum(np.bincount(res_person, minlength=n) - 1, 0)

    def rate(
        self, base: float, kind: NoiseKind, person: np.ndarray, when: np.ndarray | None
    ) -> float | np.ndarray:
        return record_rate(
            base,
            kind,
            self.differential,
            np.asarray(person, dtype=np.int64),
            when,
            first_entry=self.first_entry,
            decile=self.decile,
            minority=self.minority,
            moves=self.moves,
        )

    def placement_postcode_rows(
        self, person: np.ndarray, when: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Positions of the health records given a placement postcode (none by default; no
        random numbers are drawn then)."""
        share = self.differential.placement_postcode
        if share == 0.0:
            return np.zeros(0, np.int64)
        entry = self.first_entry[person]
        after_entry = (entry >= 0) & (when >= entry)
        return np.flatnonzero(after_entry & (rng.random(person.size) < share))


def placement_postcodes(area: list[str], rng: np.random.Generator, k: int) -> list[str]:
    """``k`` postcodes of placement addresses: the child's postcode area, a district (40-59)
    and unit no register residence uses (register districts are 1-39)."""
    letters = "ABDEFGHJLNPQRSTUWXYZ"
    district = rng.integers(40, 60, k)
    sector = rng.integers(0, 10, k)
    u = rng.integers(0, len(letters), (k, 2))
    return [
        f"{a}{d} {s}{letters[x]}{letters[y]}"
        for a, d, s, (x, y) in zip(area, district, sector, u, strict=True)
    ]
