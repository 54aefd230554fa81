"""From the latent world to the seven messy source extracts and the truth folder.

Each source gets only the identifiers it would really carry (its contract's columns), its own
record ids (sequential after a deterministic sort, never revealing the person), identifier noise
at scenario rates and data defects at scenario rates. Every defect and every record-level noise
(typo, nickname, swapped day and month, missing NHS number, stale postcode, dropped diacritics) is
logged in truth; surname changes, new authority child ids and the care-and-support census's
missing pupil and health numbers follow from the person's history and are not.

Text columns are polars String series from the start: most are a small table (dates, codes,
names) gathered by an integer index, so ten million rows never become ten million Python
strings. The school census's counts, years and flags stay integers (``_count``) until written.
Noise and defects touch a few per cent of rows and are scattered back in place.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import polars as pl

from schemas.contracts import SOURCES, load_codelist
from synthetic_data.linkage_error import LinkageError, placement_postcodes
from synthetic_data.names import (
    DIACRITIC_FOLD,
    FIRST_NAMES_F,
    FIRST_NAMES_M,
    LA_ID_PREFIX,
    LA_POSTCODE_AREA,
    NICKNAMES,
    first_name_probs,
    surname_vocabulary,
)
from synthetic_data.scenario import Scenario
from synthetic_data.world import (
    EVENT_KINDS,
    MAX_YEARS_SINCE_ENTRY,
    YEAR,
    World,
    academic_year_of_birth,
    adversities_begun,
    chunks,
    make_date,
    observed_ks4,
    sept1,
)

log = logging.getLogger(__name__)

LA_CODES = list(load_codelist("local_authorities"))
ETH_CODES = list(load_codelist("ethnicity"))
_LETTERS = list("ABDEFGHJLNPQRSTUWXYZ")


def text(table: Sequence[str | None] | np.ndarray | pl.Series, index: np.ndarray) -> pl.Series:
    """``table[index]`` as a String series (a None in the table gives a null)."""
    t = table if isinstance(table, pl.Series) else pl.Series(list(table), dtype=pl.String)
    return t.gather(np.asarray(index, dtype=np.int64))


def pick(s: pl.Series, rows: np.ndarray) -> pl.Series:
    """The rows of ``s`` chosen by a boolean mask or by integer positions."""
    rows = np.asarray(rows)
    if rows.dtype == bool:
        return s.filter(pl.Series(rows))
    return s.gather(rows.astype(np.int64))


def concat_text(*parts: pl.Series | str) -> pl.Series:
    """Element-wise string concatenation of series (and literal strings)."""
    return pl.select(pl.concat_str([pl.lit(p) for p in parts])).to_series()


def _format_ints(x: np.ndarray, width: int, prefix: str) -> pl.Series:
    s = pl.Series(x).cast(pl.String)
    if width:
        s = s.str.zfill(width)
    if prefix:
        s = prefix + s
    return s


def fmt_int(x: np.ndarray, width: int = 0, prefix: str = "") -> pl.Series:
    """Non-negative integers as text, zero-padded to ``width`` (what "%0<width>d" gives).

    Where the values span a small range (years, counts, codes) the distinct values are
    formatted once and gathered."""
    x = np.asarray(x, dtype=np.int64)
    if x.size > 10_000:
        lo, hi = int(x.min()), int(x.max())
        if hi - lo < x.size // 10:
            return text(_format_ints(np.arange(lo, hi + 1, dtype=np.int64), width, prefix), x - lo)
    return _format_ints(x, width, prefix)


def iso(days: np.ndarray) -> pl.Series:
    """ISO date strings; -1 (or any negative day) becomes null. Each distinct day in the
    range is formatted once and gathered."""
    d = np.asarray(days, dtype=np.int64)
    valid = d >= 0
    if not valid.any():
        return pl.Series([None] * d.size, dtype=pl.String)
    lo, hi = int(d[valid].min()), int(d[valid].max())
    table = pl.Series(np.arange(lo, hi + 2, dtype=np.int64)).cast(pl.Int32).cast(pl.Date)
    table = table.cast(pl.String)
    table[hi - lo + 1] = None  # the last slot stands for "no date"
    return table.gather(np.where(valid, d - lo, hi - lo + 1))


def _bool(x: np.ndarray) -> pl.Series:
    return text(["0", "1"], np.asarray(x, dtype=bool).astype(np.int64))


def _num(x: np.ndarray) -> pl.Series:
    return fmt_int(x)


def _count(x: np.ndarray) -> pl.Series:
    """Non-negative integers (a 0/1 flag, a count, a year) kept as numbers in the smallest
    integer type that holds them: the CSV writer prints exactly what ``_num`` would, and a
    parquet extract casts them to text (``generate._write_extract``). Used by the school
    census, whose ten million rows at 1M would otherwise hold 16 bytes of text per value."""
    x = np.asarray(x)
    hi = int(x.max(initial=0))
    dtype = np.int8 if hi < 2**7 else np.int16 if hi < 2**15 else np.int64
    return pl.Series(x.astype(dtype, copy=False))


def _sex(male: np.ndarray) -> pl.Series:
    return text(["F", "M"], np.asarray(male, dtype=bool).astype(np.int64))


class Identities:
    """Person-level identifiers: names, numbers, postcodes of each residence."""

    placement_rng: np.random.Generator  # set by build_sources (placement postcodes only)

    def __init__(self, w: World, sc: Scenario, rng: np.random.Generator) -> None:
        n = w.n
        self.w = w
        surnames, sp = surname_vocabulary(rng)
        first_idx = rng.choice(surnames.size, n, p=sp)
        second_idx = rng.choice(surnames.size, n, p=sp)
        # both surnames of every person in one series: person p's first at p, second at n + p
        self.surnames = text(surnames, np.r_[first_idx, second_idx])
        # differential linkage error (synthetic_data/linkage_error.py): rates by group
        self.error = LinkageError(
            sc.noise.differential,
            first_entry=w.first_entry,
            decile=w.decile,
            ethnicity_codes=ETH_CODES,
            ethnicity=w.ethnicity,
            res_person=w.res_person,
            n=n,
        )
        self.surname_change = np.where(
            rng.random(n)
            < self.error.rate(sc.noise.surname_change_people, "surname_change", np.arange(n), None),
            w.birth + (rng.random(n) * 17 * 365).astype(np.int64),
            np.iinfo(np.int64).max,
        )
        f = list(FIRST_NAMES_F)
        m = list(FIRST_NAMES_M)
        fi = rng.choice(len(f), n, p=first_name_probs(len(f)))
        mi = rng.choice(len(m), n, p=first_name_probs(len(m)))
        self.first = text(f + m, np.where(w.sex_male, len(f) + mi, fi))
        perm = rng.permutation(n)
        self.nhs = fmt_int(4_000_000_000 + perm * 7 + rng.integers(0, 7, n), 10)
        perm2 = rng.permutation(n)
        la_num = np.array([int(c[-3:]) for c in LA_CODES])[w.la_birth]
        self.upn = concat_text(
            text(_LETTERS, rng.integers(0, len(_LETTERS), n)),
            fmt_int(la_num * 10**9 + perm2, 12),
        )
        # one LA child id per person per authority, a new one after a system change
        self.la_id_serial = rng.permutation(n) + 10_000_000
        self.la_id_change = np.where(
            rng.random(n) < sc.noise.new_la_child_id_people,
            w.birth + (rng.random(n) * 17 * 365).astype(np.int64),
            np.iinfo(np.int64).max,
        )
        # postcodes per residence
        r = w.res_la.size
        area = text([LA_POSTCODE_AREA[c] for c in LA_CODES], w.res_la)
        district = rng.integers(1, 40, r)
        unit1 = text(_LETTERS, rng.integers(0, len(_LETTERS), r))
        unit2 = text(_LETTERS, rng.integers(0, len(_LETTERS), r))
        self.res_postcode = concat_text(
            area, fmt_int(district), " ", fmt_int(rng.integers(0, 10, r)), unit1, unit2
        )

    def surname_at(self, person: np.ndarray, when: np.ndarray) -> pl.Series:
        changed = when >= self.surname_change[person]
        return self.surnames.gather(np.where(changed, self.w.n + person, person))

    def la_child_id(self, person: np.ndarray, la: np.ndarray, when: np.ndarray) -> pl.Series:
        prefix = text([LA_ID_PREFIX[c] for c in LA_CODES], la)
        serial = self.la_id_serial[person] + np.where(
            when >= self.la_id_change[person], 50_000_000, 0
        )
        serial = serial + la * 1_000_003 % 9_000_000
        return concat_text(prefix, "-", fmt_int(serial % 100_000_000, 8))

    def postcode_at(self, person: np.ndarray, when: np.ndarray) -> tuple[np.ndarray, pl.Series]:
        idx = self.w.residence_at(person, when)
        return idx, self.res_postcode.gather(idx)


class NoiseLog:
    def __init__(self) -> None:
        self.rows: list[pl.DataFrame] = []

    def add(self, source: str, record_ids: pl.Series, kind: str) -> None:
        if record_ids.len():
            self.rows.append(
                pl.DataFrame({"record_id": record_ids}).select(
                    source=pl.lit(source), record_id="record_id", kind=pl.lit(kind)
                )
            )

    def frame(self, name: str) -> pl.DataFrame:
        if not self.rows:
            return pl.DataFrame(
                schema={"source": pl.String, "record_id": pl.String, name: pl.String}
            )
        return (
            pl.concat(self.rows)
            .rename({"kind": name})
            .unique(maintain_order=True)
            .sort("source", "record_id", name)
        )


def _typo(s: str, r: float) -> str:
    if len(s) < 3:
        return s + "e"
    i = int(r * (len(s) - 1))
    op = int(r * 1000) % 3
    if op == 0:  # transpose
        return s[:i] + s[i + 1] + s[i] + s[i + 2 :]
    if op == 1:  # delete
        return s[:i] + s[i + 1 :]
    return s[:i] + "aeiouy"[int(r * 997) % 6] + s[i + 1 :]  # substitute


def _swap_day_month(iso_dates: list[str | None]) -> list[str | None]:
    out = list(iso_dates)
    for j, d in enumerate(iso_dates):
        if d is not None and int(d[8:10]) <= 12 and d[5:7] != d[8:10]:
            out[j] = f"{d[:4]}-{d[8:10]}-{d[5:7]}"
    return out


def _fold_diacritics(vals: pl.Series) -> pl.Series:
    """Each name with its diacritics folded (Siân -> Sian); translated once per distinct name."""
    changed = {
        v: f
        for v in vals.unique().drop_nulls().to_list()
        if (f := v.translate(DIACRITIC_FOLD)) != v
    }
    if not changed:
        return vals.clone()
    return vals.replace(changed)


def apply_name_noise(
    df: dict[str, pl.Series],
    source: str,
    sc: Scenario,
    rng: np.random.Generator,
    nlog: NoiseLog,
    who: tuple[Identities, np.ndarray, np.ndarray] | None = None,
) -> None:
    """Typos, nicknames, dropped diacritics and day/month swaps, in place. ``who``: the
    identities, each row's person and day, for rates that differ by group."""
    nz = sc.noise
    rid = df["record_id"]
    m = rid.len()

    def rate(base: float, kind: Literal["typo", "nickname"]) -> float | np.ndarray:
        return base if who is None else who[0].error.rate(base, kind, who[1], who[2])

    if "first_name" in df:
        nick = rng.random(m) < rate(nz.nickname, "nickname")
        names = df["first_name"]
        has_nick = np.flatnonzero(names.is_in(list(NICKNAMES)).fill_null(False).to_numpy() & nick)
        names.scatter(has_nick, [NICKNAMES[x] for x in names.gather(has_nick).to_list()])
        nlog.add(source, pick(rid, has_nick), "nickname")
        for col in ("first_name", "surname"):
            vals = df[col]
            typo = np.flatnonzero(rng.random(m) < rate(nz.typo, "typo") / 2)
            r = rng.random(typo.size)
            vals.scatter(
                typo, [_typo(v, x) for v, x in zip(vals.gather(typo).to_list(), r, strict=True)]
            )
            nlog.add(source, pick(rid, typo), "typo")
            folded = _fold_diacritics(vals)
            dia = np.flatnonzero(
                vals.ne_missing(folded).to_numpy() & (rng.random(m) < nz.diacritics_dropped)
            )
            vals.scatter(dia, folded.gather(dia))
            nlog.add(source, pick(rid, dia), "diacritics_dropped")
    if "date_of_birth" in df:
        dob = df["date_of_birth"]
        sw = np.flatnonzero(rng.random(m) < nz.day_month_swap)
        old = dob.gather(sw).to_list()
        new = _swap_day_month(old)
        changed = np.array([a != b for a, b in zip(old, new, strict=True)], dtype=bool)
        dob.scatter(sw, new)
        nlog.add(source, pick(rid, sw[changed]), "day_month_swap")


def _stale_postcode(
    ids: Identities,
    person: np.ndarray,
    when: np.ndarray,
    source: str,
    rid: pl.Series,
    sc: Scenario,
    rng: np.random.Generator,
    nlog: NoiseLog,
) -> pl.Series:
    idx, pc = ids.postcode_at(person, when)
    stale_rate = ids.error.rate(sc.noise.stale_postcode, "stale_postcode", person, when)
    stale = np.flatnonzero((rng.random(person.size) < stale_rate) & (ids.w.res_seq[idx] > 0))
    pc.scatter(stale, ids.res_postcode.gather(idx[stale] - 1))
    nlog.add(source, pick(rid, stale), "stale_postcode")
    return pc


def _placement_postcodes(
    ids: Identities,
    person: np.ndarray,
    when: np.ndarray,
    cols: dict[str, pl.Series],
    source: str,
    nlog: NoiseLog,
) -> None:
    """A looked-after child's health record with a placement postcode (no register row has
    it), at the differential scenario's share; none by default (no random draws then)."""
    rows = ids.error.placement_postcode_rows(person, when, ids.placement_rng)
    if rows.size:
        area = [
            LA_POSTCODE_AREA[LA_CODES[i]]
            for i in ids.w.res_la[ids.w.residence_at(person[rows], when[rows])]
        ]
        cols["postcode"].scatter(rows, placement_postcodes(area, ids.placement_rng, rows.size))
        nlog.add(source, pick(cols["record_id"], rows), "placement_postcode")


def _record_ids(prefix: str, m: int) -> pl.Series:
    return fmt_int(np.arange(1, m + 1), 9, prefix)


SourceRows = tuple[str, dict[str, pl.Series], np.ndarray]
Built = tuple[dict[str, pl.Series], np.ndarray]  # a source's columns and each row's person


def build_sources(w: World, sc: Scenario, seed: int, nlog: NoiseLog) -> Iterator[SourceRows]:
    """Yield, source by source in contract order: its name, its columns (String series) and
    the person of each row. One source at a time, so the caller can write it and free it
    before the next is built (peak memory is one source, not seven)."""
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence([seed, 7]).spawn(10)]
    ids = Identities(w, sc, rngs[0])
    # placement postcodes draw from their own stream: the other noise draws stay as without them
    ids.placement_rng = np.random.default_rng(np.random.SeedSequence([seed, 21]))
    window_end = int(np.datetime64(sc.population.window_end, "D").astype(np.int64))

    def emit(name: str, built: Built) -> SourceRows:
        assert list(built[0]) == SOURCES[name].column_names, name
        return name, built[0], built[1]

    yield emit("population_register", _population_register(w, ids, sc, rngs[1], nlog))
    yield emit("school_census", _school_census(w, ids, sc, rngs[2], nlog, window_end))
    yield emit("attainment", _attainment(w, ids, rngs[3], window_end))
    admissions, emergency = _hospital(w, ids, sc, rngs[4], nlog)
    yield emit("hospital_admissions", admissions)
    yield emit("emergency_department", emergency)
    del admissions, emergency
    yield emit("care_support_census", _care_support(w, ids, sc, rngs[5], nlog, window_end))
    yield emit("looked_after_episodes", _looked_after_episodes(w, ids, sc, rngs[6], nlog))


def _population_register(
    w: World, ids: Identities, sc: Scenario, rng: np.random.Generator, nlog: NoiseLog
) -> Built:
    """One row per residence."""
    p = w.res_person
    order = np.lexsort((p, w.res_start))
    p, rs, re_, la, area = (a[order] for a in (p, w.res_start, w.res_end, w.res_la, w.res_area))
    rid = _record_ids("PR", p.size)
    last = re_ >= w.fu_end[p]
    end_codes = ["AGE18", "LEFT", "DIED", None, "MOVED"]
    reason = text(end_codes, np.where(~last, 4, w.fu_end_reason[p]))
    nhs = ids.nhs.gather(p)
    miss_rate = ids.error.rate(sc.noise.missing_nhs_register, "missing_nhs", p, rs)
    miss = np.flatnonzero(rng.random(p.size) < miss_rate)
    nhs.scatter(miss, None)
    nlog.add("population_register", pick(rid, miss), "missing_nhs")
    cols = {
        "record_id": rid,
        "nhs_number": nhs,
        "first_name": ids.first.gather(p),
        "surname": ids.surname_at(p, rs),
        "date_of_birth": iso(w.birth[p]),
        "sex": _sex(w.sex_male[p]),
        "postcode": ids.res_postcode.gather(order),  # register rows are residences, re-ordered
        "area_code": fmt_int(area, 7, "A"),
        "deprivation_decile": _num(w.decile[p]),
        "la_code": text(LA_CODES, la),
        "ethnicity": text(ETH_CODES, w.ethnicity[p]),
        "period_start": iso(rs),
        "period_end": iso(np.where(last & (w.fu_end_reason[p] == 3), -1, re_)),
        "end_reason": reason,
        "date_of_death": iso(np.where(last, w.death[p], -1)),
    }
    apply_name_noise(cols, "population_register", sc, rng, nlog, (ids, p, rs))
    return cols, p


def _school_census(
    w: World,
    ids: Identities,
    sc: Scenario,
    rng: np.random.Generator,
    nlog: NoiseLog,
    window_end: int,
) -> Built:
    """One row per pupil per school year (census day in January)."""
    ay0 = academic_year_of_birth(w.birth)
    reception = ay0 + 5
    first_year = int(reception.min())
    # each person's twelve school years (from reception) as offsets from the first year
    year = (reception - first_year).astype(np.int16)[:, None] + np.arange(12, dtype=np.int16)
    census_days = make_date(first_year + np.arange(int(year.max()) + 1) + 1, 1, 15)
    census_day = census_days[year]  # each distinct year's census day computed once
    ok = (
        (census_day >= w.fu_start[:, None])
        & (census_day < w.fu_end[:, None])
        & (census_day <= window_end)
    )
    del census_day
    ok &= ~(rng.random(ok.shape) < 0.01)  # a few missed census returns (home education etc.)
    # rows by academic year, then person: the kept (person, year) cells, which run by person,
    # stably sorted by year (16 bits: a radix sort)
    cell = np.flatnonzero(ok)
    del ok
    cell = cell[np.argsort(year.ravel()[cell], kind="stable")]
    del year
    person = cell // 12
    ayv = reception[person] + cell % 12
    del cell
    cday = census_days[ayv - first_year]
    m = person.size
    col: dict[str, pl.Series] = {"record_id": _record_ids("SC", m)}
    area = np.empty(m, w.res_area.dtype)  # of the residence on census day
    la = np.empty(m, w.res_la.dtype)
    school = np.empty(m, np.int64)
    secondary = np.empty(m, bool)
    for c in chunks(m):
        res = w.residence_at(person[c], cday[c])
        area[c], la[c] = w.res_area[res], w.res_la[res]
        secondary[c] = ayv[c] - reception[person[c]] >= 7
        school[c] = (
            (area[c] // 1000) * 100
            + (area[c] % 1000) // 4 * 3 % 97
            + np.where(secondary[c], 20, 10)
        )
    col["area_code"] = fmt_int(area, 7, "A")
    col["la_code"] = text(LA_CODES, la)
    col["school_id"] = fmt_int(school, 7, "S")
    col["academic_year"] = _count(ayv)
    del area, la, school
    care_share = np.empty(m)
    since = np.empty(m, np.int8)  # whole years since first entry, -1 before it
    n_adv = np.empty(m, np.int8)  # adversities begun by census day
    n_adv0 = np.empty(m, np.int8)  # had the child never entered care (differs only after entry)
    dep = np.empty(m, np.int8)
    for c in chunks(m):
        care_share[c], since[c] = school_year_care(w, person[c], ayv[c])
        n_adv[c] = adversities_begun(w.onset, person[c], cday[c])
        n_adv0[c] = adversities_begun(w.onset_no_care, person[c], cday[c])
        dep[c] = 10 - w.decile[person[c]]
    fsm = np.empty(m, bool)
    for c in chunks(m):
        lp = -3.0 + 0.3 * dep[c] + 0.5 * n_adv[c]
        fsm[c] = rng.random(c.stop - c.start) < 1 / (1 + np.exp(-lp))
    col["free_school_meals"] = _count(fsm)
    del fsm
    sen = np.empty(m, bool)
    for c in chunks(m):
        lp = -2.2 + 0.4 * n_adv[c] + 2.0 * w.disability[person[c]]
        sen[c] = rng.random(c.stop - c.start) < 1 / (1 + np.exp(-lp))
    col["special_needs"] = text(["N", "K", "E"], np.where(sen, 1 + (rng.random(m) < 0.2), 0))
    del sen
    possible = rng.integers(300, 331, m)
    noise = rng.gamma(2.0, 0.01, m)
    e = sc.effects
    n_pre = w.pre_care_adversity.sum(axis=1)  # per person
    absent = np.empty(m, np.int64)
    w.school_years = {
        "person_id": person.astype(np.int32),
        "academic_year": ayv.astype(np.int16),
        "looked_after_share": care_share.astype(np.float32),
        "years_since_entry": since,
        "absence_rate_factual": np.empty(m, np.float32),
        "absence_rate_no_care": np.empty(m, np.float32),
    }
    for c in chunks(m):
        effect = care_share[c] * (
            e.absence_rate_looked_after
            + e.absence_care_x_adversity * n_pre[person[c]]
            + e.absence_care_per_year_since_entry * np.clip(since[c], 0, MAX_YEARS_SINCE_ENTRY)
        )
        rate = np.clip(0.04 + 0.012 * n_adv[c] + 0.003 * dep[c] + effect + noise[c], 0, 0.9)
        rate0 = np.clip(0.04 + 0.012 * n_adv0[c] + 0.003 * dep[c] + noise[c], 0, 0.9)
        w.school_years["absence_rate_factual"][c] = rate
        w.school_years["absence_rate_no_care"][c] = rate0
        absent[c] = rng.binomial(possible[c], rate)
    del dep, care_share, since, noise, n_adv0, ayv
    col["sessions_possible"] = _count(possible)
    del possible
    unauth = np.empty(m, np.int64)
    for c in chunks(m):
        unauth[c] = rng.binomial(absent[c], np.clip(0.25 + 0.05 * n_adv[c], 0, 0.9))
    col["sessions_authorised_absence"] = _count(absent - unauth)
    col["sessions_unauthorised_absence"] = _count(unauth)
    del absent, unauth
    exclusions = np.empty(m, np.int64)
    for c in chunks(m):
        exclusions[c] = rng.poisson(0.01 + 0.03 * n_adv[c] * secondary[c])
    col["fixed_exclusions"] = _count(exclusions)
    del exclusions, secondary
    col["postcode"] = _stale_postcode(
        ids, person, cday, "school_census", col["record_id"], sc, rng, nlog
    )
    permanent = np.empty(m, bool)
    for c in chunks(m):
        permanent[c] = rng.random(c.stop - c.start) < 0.0005 + 0.002 * n_adv[c]
    col["permanent_exclusion"] = _count(permanent)
    del n_adv, permanent
    col["upn"] = ids.upn.gather(person)
    col["first_name"] = ids.first.gather(person)
    col["surname"] = ids.surname_at(person, cday)
    col["date_of_birth"] = iso(w.birth[person])
    col["sex"] = _sex(w.sex_male[person])
    col["deprivation_decile"] = _count(w.decile[person])
    col["ethnicity"] = text(ETH_CODES, w.ethnicity[person])
    cols = {name: col.pop(name) for name in SOURCES["school_census"].column_names}
    apply_name_noise(cols, "school_census", sc, rng, nlog, (ids, person, cday))
    return cols, person


def _attainment(w: World, ids: Identities, rng: np.random.Generator, window_end: int) -> Built:
    """Key stage 2 and key stage 4 results."""
    ay0 = academic_year_of_birth(w.birth)
    reception = ay0 + 5
    ks2_day = make_date(reception + 7, 6, 1)
    ks4_day = make_date(ay0 + 16, 6, 1)
    has2 = (ks2_day >= w.fu_start) & (ks2_day < w.fu_end) & (ks2_day <= window_end)
    has4 = (ks4_day >= w.fu_start) & (ks4_day < w.fu_end) & (ks4_day <= window_end)
    has2 &= rng.random(w.n) > 0.01
    has4 &= rng.random(w.n) > 0.02
    p2, p4 = np.flatnonzero(has2), np.flatnonzero(has4)
    ks2_ok = rng.random(p2.size) < w.ks2_p1[p2]
    score = observed_ks4(w.ks4_y0[p4] + w.ks4_effect[p4])
    level2 = rng.random(p4.size) < w.level2_p1[p4]
    person = np.r_[p2, p4]
    is_ks4 = np.r_[np.zeros(p2.size, np.int64), np.ones(p4.size, np.int64)]
    year = np.r_[reception[p2] + 6, ay0[p4] + 15]
    order = np.lexsort((person, is_ks4, year))
    m = person.size
    no = np.full(p2.size, 2), np.full(p4.size, 2)  # index 2 of ("0", "1", None): no value
    ks2_col = text(["0", "1", None], np.r_[ks2_ok, no[1]][order])
    l2_col = text(["0", "1", None], np.r_[no[0], level2][order])
    tenths = np.rint(score * 10).astype(np.int64)  # "%.1f" of a score in 0-90
    ks4_text = concat_text(fmt_int(tenths // 10), ".", fmt_int(tenths % 10))
    ks4_col = pl.concat([pl.Series([None] * p2.size, dtype=pl.String), ks4_text]).gather(order)
    cols = {
        "record_id": _record_ids("AT", m),
        "upn": ids.upn.gather(person[order]),
        "key_stage": text(["KS2", "KS4"], is_ks4[order]),
        "academic_year": _num(year[order]),
        "ks2_expected_standard": ks2_col,
        "ks4_capped_points": ks4_col,
        "ks4_level2_inclusive": l2_col,
    }
    return cols, person[order]


# The diagnoses each health event kind is recorded with (one drawn at random per event). The
# study's outcome groups (schemas/codelists/icd10_groups.csv) pick them out again: self_harm,
# mental_behavioural, appendicitis and dental_caries each hold exactly one kind's codes
# (tests/test_synthetic_world.py checks this against the study config).
DIAGNOSES: dict[str, list[str]] = {
    "self_harm": ["X60", "X61", "X62", "X64", "X78", "X84"],
    "emergency": [
        "S52.5",
        "S06.0",
        "T14.9",
        "J45.9",
        "J18.9",
        "A09",
        "B34.9",
        "R10.4",
        "R56.8",
        "J21.9",
    ],
    "mental_health": ["F32.1", "F43.1", "F50.0", "F91.9", "F90.0", "F41.1", "F84.0"],
    "appendicitis": ["K35.8", "K35.3", "K37"],
    "ed_injury": ["S00.9", "S01.8", "S52.5", "S93.4", "T14.0", "S60.0"],
    "elective": ["J35.0", "K40.9", "Z01.8", "H65.3", "N47", "Q53.1"],
    "dental_caries": ["K02.1", "K02.9"],  # negative control (elective extractions)
}


def _hospital(
    w: World, ids: Identities, sc: Scenario, rng: np.random.Generator, nlog: NoiseLog
) -> tuple[Built, Built]:
    """Hospital admissions and emergency-department attendances, from the same events."""
    kind = w.ev_kind  # index into EVENT_KINDS

    def of(*names: str) -> np.ndarray:
        return np.isin(kind, [EVENT_KINDS.index(name) for name in names])

    ev_p, ev_d = w.ev_person, w.ev_day
    adm_mask = of("emergency", "mental_health", "appendicitis", "elective", "dental_caries") | (
        of("self_harm") & (rng.random(kind.size) < 0.35)
    )
    ed_mask = (
        of("self_harm", "ed_injury")
        | (of("emergency") & (rng.random(kind.size) < 0.6))
        | (of("appendicitis") & (rng.random(kind.size) < 0.8))
    )
    diag_codes: list[str] = []  # every pool one after another; diag indexes into it
    diag = np.zeros(kind.size, np.int64)
    for kind_name, pool in DIAGNOSES.items():
        sel = of(kind_name)
        diag[sel] = len(diag_codes) + rng.integers(0, len(pool), sel.sum())
        diag_codes += pool
    # admissions
    ap, ad, ak, adg = ev_p[adm_mask], ev_d[adm_mask], kind[adm_mask], diag[adm_mask]
    order = np.lexsort((ap, ad))
    ap, ad, ak, adg = ap[order], ad[order], ak[order], adg[order]
    m = ap.size
    rid = _record_ids("HA", m)
    methods = ["11", "12", "13", "21", "22", "28"]
    elective = np.isin(ak, [EVENT_KINDS.index("elective"), EVENT_KINDS.index("dental_caries")])
    method = np.where(
        elective, rng.integers(0, 3, m), np.array([3, 3, 4, 5])[rng.integers(0, 4, m)]
    )
    method = np.where((ak == EVENT_KINDS.index("mental_health")) & (rng.random(m) < 0.3), 0, method)
    los = rng.geometric(0.45, m) - 1
    nhs = ids.nhs.gather(ap)
    miss_rate = ids.error.rate(sc.noise.missing_nhs_admissions, "missing_nhs", ap, ad)
    miss = np.flatnonzero(rng.random(m) < miss_rate)
    nhs.scatter(miss, None)
    nlog.add("hospital_admissions", pick(rid, miss), "missing_nhs")
    second = rng.random(m) < 0.2
    admissions = {
        "record_id": rid,
        "nhs_number": nhs,
        "date_of_birth": iso(w.birth[ap]),
        "sex": _sex(w.sex_male[ap]),
        "postcode": _stale_postcode(ids, ap, ad, "hospital_admissions", rid, sc, rng, nlog),
        "admission_date": iso(ad),
        "discharge_date": iso(ad + los),
        "admission_method": text(methods, method),
        "primary_diagnosis": text(diag_codes, adg),
        "secondary_diagnosis": text([None, "Z91.8"], second),
    }
    _placement_postcodes(ids, ap, ad, admissions, "hospital_admissions", nlog)
    apply_name_noise(admissions, "hospital_admissions", sc, rng, nlog)
    # ED
    ep, ed, edg = ev_p[ed_mask], ev_d[ed_mask], diag[ed_mask]
    order = np.lexsort((ep, ed))
    ep, ed, edg = ep[order], ed[order], edg[order]
    m = ep.size
    rid = _record_ids("ED", m)
    nhs = ids.nhs.gather(ep)
    miss_rate = ids.error.rate(sc.noise.missing_nhs_ed, "missing_nhs", ep, ed)
    miss = np.flatnonzero(rng.random(m) < miss_rate)
    nhs.scatter(miss, None)
    nlog.add("emergency_department", pick(rid, miss), "missing_nhs")
    ed_cols = {
        "record_id": rid,
        "nhs_number": nhs,
        "date_of_birth": iso(w.birth[ep]),
        "sex": _sex(w.sex_male[ep]),
        "postcode": _stale_postcode(ids, ep, ed, "emergency_department", rid, sc, rng, nlog),
        "arrival_date": iso(ed),
        "diagnosis": text(diag_codes, edg),
    }
    _placement_postcodes(ids, ep, ed, ed_cols, "emergency_department", nlog)
    apply_name_noise(ed_cols, "emergency_department", sc, rng, nlog)
    return (admissions, ap), (ed_cols, ep)


def _looked_after_episodes(
    w: World, ids: Identities, sc: Scenario, rng: np.random.Generator, nlog: NoiseLog
) -> Built:
    """One row per looked-after episode (placement or legal-status change)."""
    p = w.ep_person
    order = np.lexsort((p, w.ep_start))
    p = p[order]
    st, en = w.ep_start[order], w.ep_end[order]
    res = w.residence_at(p, st)
    la = w.res_la[res]
    rid = _record_ids("LA", p.size)
    cols = {
        "record_id": rid,
        "la_child_id": ids.la_child_id(p, la, st),
        "date_of_birth": iso(w.birth[p]),
        "sex": _sex(w.sex_male[p]),
        "postcode": _stale_postcode(ids, p, st, "looked_after_episodes", rid, sc, rng, nlog),
        "la_code": text(LA_CODES, la),
        "episode_start": iso(st),
        "episode_end": iso(en),
        "legal_status": text(w.ep_legal, order),
        "placement_type": text(w.ep_placement, order),
        "reason_episode_started": text(w.ep_reason_start, order),
        "reason_episode_ended": text(w.ep_reason_end, order),
    }
    apply_name_noise(cols, "looked_after_episodes", sc, rng, nlog, (ids, p, st))
    return cols, p


def school_year_care(
    w: World, person: np.ndarray, academic_year: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each pupil-year: the share of the academic year (1 September to 31 August) spent
    looked after, and whole years from first entry to 1 September (0 if entry falls in the
    year; -1 if not yet entered by the year's end). The yearly exposure ("looked after this
    year") is a share above 0: looked after on at least one day of the academic year."""
    start = sept1(academic_year.astype(np.int64))
    stop = sept1(academic_year.astype(np.int64) + 1)  # exclusive
    days = np.zeros(person.size, np.int64)
    first = np.searchsorted(w.care_person, person, side="left")
    cnt = np.bincount(w.care_person, minlength=w.n)[person]
    for j in range(int(cnt.max(initial=0))):
        sel = np.flatnonzero(cnt > j)
        pos = first[sel] + j
        overlap = np.minimum(w.care_end[pos], stop[sel]) - np.maximum(w.care_start[pos], start[sel])
        days[sel] += np.clip(overlap, 0, None)
    entry = w.first_entry[person]
    since = np.where((entry >= 0) & (entry < stop), np.maximum((start - entry) // YEAR, 0), -1)
    return days / (stop - start), since


def census_year_of(days: np.ndarray) -> np.ndarray:
    """The care-and-support census year (31 March) a day is reported in: the first census
    day on or after it (approximately: 90 days before the day, plus one year)."""
    d = np.asarray(days).astype("datetime64[D]") - np.timedelta64(90, "D")
    return d.astype("datetime64[Y]").astype(np.int64) + 1971


def assessments(w: World) -> dict[str, np.ndarray]:
    """Every assessment of every episode of need: the one at each referral (factors recorded
    then, child-protection category) and each yearly review that recorded new factors (all
    factors recorded in the episode by then; a plan started then, else the episode's plan so
    far). Sorted by person, episode, day. ``cp_start``: start day of the plan in force (-1)."""
    ep0, ep1 = np.flatnonzero(w.ref1 >= 0), np.flatnonzero(w.ref2 >= 0)
    p = np.r_[ep0, ep1, w.rev_person]
    ep = np.r_[np.zeros(ep0.size, np.int64), np.ones(ep1.size, np.int64), w.rev_episode]
    day = np.r_[w.ref1[ep0], w.ref2[ep1], w.rev_day]
    known = np.concatenate([w.recorded1[ep0], w.recorded2[ep1], w.rev_known])
    cp = np.r_[w.cp1[ep0], w.cp2[ep1], np.maximum(w.rev_cp_start, 0)]
    cp_start = np.r_[
        np.where(w.cp1[ep0] > 0, w.ref1[ep0], -1),
        np.where(w.cp2[ep1] > 0, w.ref2[ep1], -1),
        np.where(w.rev_cp_start >= 0, w.rev_day, -1),
    ]
    # a review that started no plan keeps the plan (or none) of the episode's last assessment
    sets_plan = np.r_[np.ones(ep0.size + ep1.size, bool), w.rev_cp_start >= 0]
    order = np.lexsort((day, ep, p))
    p, ep, day, known, cp, cp_start, sets_plan = (
        x[order] for x in (p, ep, day, known, cp, cp_start, sets_plan)
    )
    src = np.where(sets_plan, np.arange(p.size), 0)
    np.maximum.accumulate(src, out=src)  # each episode starts with its referral assessment
    cp, cp_start = cp[src], cp_start[src]
    return {"person": p, "episode": ep, "day": day, "known": known, "cp": cp, "cp_start": cp_start}


def _care_support(
    w: World,
    ids: Identities,
    sc: Scenario,
    rng: np.random.Generator,
    nlog: NoiseLog,
    window_end: int,
) -> Built:
    """One row per child per census year (31 March) per assessment: each census year in which
    an episode of need was open carries the episode's latest assessment by census day, and an
    assessment superseded within its census year has its own row too. Some assessment rows
    arrive late: filed in the next census year's return (``late_record_share``)."""
    cp_code = [None, "NEG", "PHY", "SAB", "EMO"]
    last_census = int(census_year_of(np.array([window_end]))[0])
    if make_date(np.array([last_census]), 3, 31)[0] > window_end:
        last_census -= 1
    asm = assessments(w)
    group = asm["person"] * 2 + asm["episode"]
    asm_key = group * 1_000_000 + asm["day"] + 100_000
    # (assessment, census year) rows: each open episode-year carries its latest assessment
    rows_a, rows_y = [], []
    for ep, (ref, close) in enumerate(((w.ref1, w.close1), (w.ref2, w.close2))):
        pp = np.flatnonzero(ref >= 0)
        r, c = ref[pp], np.minimum(close[pp], w.fu_end[pp])
        y_first = census_year_of(r)
        y_last = np.minimum(census_year_of(c), last_census)
        k = np.maximum(y_last - y_first + 1, 0)
        rp = np.repeat(pp, k)
        ry = np.repeat(y_first, k) + (np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k))
        q = (rp * 2 + ep) * 1_000_000 + make_date(ry, 3, 31) + 100_000
        rows_a.append(np.searchsorted(asm_key, q, side="right") - 1)
        rows_y.append(ry)
    carry_a, carry_y = np.concatenate(rows_a), np.concatenate(rows_y)
    # every assessment in its own census year; a late one in the next year's return instead
    own_y = census_year_of(asm["day"])
    late = (rng.random(own_y.size) < sc.social_services.late_record_share) & (
        own_y + 1 <= last_census
    )
    keep_own = own_y <= last_census
    n_years = 256
    own_key = np.arange(own_y.size) * n_years + (own_y - 1980)
    carry_key = carry_a * n_years + (carry_y - 1980)
    carry_key = carry_key[~np.isin(carry_key, own_key[late])]
    filed_key = np.arange(own_y.size) * n_years + (own_y + late - 1980)
    key = np.unique(np.r_[carry_key, filed_key[keep_own]])
    a_idx, y = key // n_years, key % n_years + 1980
    p = asm["person"][a_idx]
    epi = asm["episode"][a_idx]
    ref = np.where(epi == 0, w.ref1[p], w.ref2[p])
    close_ep = np.where(epi == 0, w.close1[p], w.close2[p])
    census_day = make_date(y, 3, 31)
    close = np.where((close_ep <= window_end) & (close_ep <= census_day), close_ep, -1)
    order = np.lexsort((asm["day"][a_idx], p, ref, y))
    p, y, ref, close, epi, census_day, a_idx = (
        x[order] for x in (p, y, ref, close, epi, census_day, a_idx)
    )
    rec = asm["known"][a_idx]
    cp = asm["cp"][a_idx]
    assessment_day, plan_start = asm["day"][a_idx], asm["cp_start"][a_idx]
    m = p.size
    rid = _record_ids("CS", m)
    res = w.residence_at(p, np.minimum(census_day, w.fu_end[p] - 1))
    la = w.res_la[res]
    needs = ["N1", "N2", "N3", "N4", "N5", "N6", "N7", "N8"]
    need = np.where(
        (cp > 0) | rec[:, 0],
        0,
        np.where(w.disability[p], 1, 2 + rng.integers(0, 6, m)),
    )
    need = np.where((need != 0) & rec[:, 1:4].any(axis=1) & (rng.random(m) < 0.6), 0, need)
    upn = ids.upn.gather(p)
    school_age = census_day >= make_date(academic_year_of_birth(w.birth[p]) + 5, 9, 1)
    upn.scatter(
        np.flatnonzero(~(school_age & (rng.random(m) < sc.noise.care_census_has_upn))), None
    )
    nhs = ids.nhs.gather(p)
    nhs.scatter(np.flatnonzero(~(rng.random(m) < sc.noise.care_census_has_nhs)), None)
    cols = {
        "record_id": rid,
        "la_child_id": ids.la_child_id(p, la, np.minimum(ref, census_day)),
        "upn": upn,
        "nhs_number": nhs,
        "first_name": ids.first.gather(p),
        "surname": ids.surname_at(p, census_day),
        "date_of_birth": iso(w.birth[p]),
        "sex": _sex(w.sex_male[p]),
        "postcode": _stale_postcode(
            ids,
            p,
            np.minimum(census_day, w.fu_end[p] - 1),
            "care_support_census",
            rid,
            sc,
            rng,
            nlog,
        ),
        "la_code": text(LA_CODES, la),
        "census_year": _num(y),
        "referral_date": iso(ref),
        "closure_date": iso(close),
        "assessment_date": iso(assessment_day),
        "category_of_need": text(needs, need),
        "child_protection_registered": _bool(cp > 0),
        "child_protection_category": text(cp_code, cp),
        "child_protection_plan_start": iso(plan_start),
        "parent_domestic_abuse": _bool(rec[:, 3]),
        "parent_mental_ill_health": _bool(rec[:, 1]),
        "parent_substance_misuse": _bool(rec[:, 2]),
        "parent_learning_disability": _bool(rec[:, 4]),
        "parent_physical_ill_health": _bool(rng.random(m) < 0.06),
        "disability": _bool(w.disability[p]),
    }
    apply_name_noise(cols, "care_support_census", sc, rng, nlog, (ids, p, census_day))
    return cols, p
