"""Column kinds: how each column of a person table is cleaned, blocked on and compared.

A user of :func:`linkage.link_tables` declares each column it should use with a *kind*
(``person_name``, ``date``, ``postcode``, ``address``, ``categorical``, ``numeric``,
``identifier``, ``trusted_id``), or with a Splink comparison of their own. The kind decides

- the cleaning SQL (names folded to letters, dates parsed, postcodes upper-cased, ...),
- the derived columns the comparison needs (a Soundex code per name, the date as ``YYYYMMDD``
  and with day and month swapped, the parts of a UK postcode),
- the default Splink comparison (levels and term-frequency adjustment), and
- whether the column may be blocked on (exact equality).

``trusted_id`` columns are not scored: records sharing one are joined before the model runs
(the pipeline's health number, pupil number and local-authority child id).

The pipeline's own linkage declares its fields the same way: :data:`PIPELINE_COLUMNS`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ground.errors import ConfigError


class ColumnKind(StrEnum):
    """What a column holds; decides its cleaning, blocking and comparison."""

    PERSON_NAME = "person_name"
    DATE = "date"
    POSTCODE = "postcode"
    ADDRESS = "address"
    CATEGORICAL = "categorical"
    NUMERIC = "numeric"
    IDENTIFIER = "identifier"
    TRUSTED_ID = "trusted_id"


# term-frequency adjustment on exact agreement, by default: a match on a rare name or postcode
# is stronger evidence than one on a common one
_TF_BY_DEFAULT = {ColumnKind.PERSON_NAME, ColumnKind.POSTCODE, ColumnKind.ADDRESS}
# exact equality on these is selective enough to block on
_BLOCKABLE = {
    ColumnKind.PERSON_NAME,
    ColumnKind.DATE,
    ColumnKind.POSTCODE,
    ColumnKind.ADDRESS,
    ColumnKind.IDENTIFIER,
}

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
RESERVED = {"record_id", "tbl", "rec", "component", "profile_id", "source_table"}

# the cleaning SQL of a person name (ligatures such as "ﬁ" are dropped, not expanded)
NORMALISE_NAME_SQL = "NULLIF(regexp_replace(lower(strip_accents({})), '[^a-z]', '', 'g'), '')"
# UK postcode parts (sector "CF10 1", district "CF10", area "CF"); null when not UK-shaped
_UK_SECTOR = r"^[A-Z]{1,2}[0-9][A-Z0-9]? [0-9]"
_UK_DISTRICT = r"^[A-Z]{1,2}[0-9][A-Z0-9]?"
_UK_AREA = r"^([A-Z]{1,2})[0-9]"
DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%d/%m/%Y", "%Y/%m/%d")


@dataclass(frozen=True)
class Column:
    """One column the linker uses: its field name (the same in every table), its kind, and
    optionally a Splink comparison replacing the kind's default.

    ``term_frequency`` and ``blocking`` override the kind's defaults; ``tolerance`` is the
    relative difference a ``numeric`` column still counts as close (default 5%).
    """

    name: str
    kind: ColumnKind
    comparison: Any = None
    term_frequency: bool | None = None
    blocking: bool | None = None
    tolerance: float = 0.05
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def scored(self) -> bool:
        return self.kind is not ColumnKind.TRUSTED_ID

    @property
    def blockable(self) -> bool:
        if self.blocking is not None:
            return self.blocking and self.scored
        return self.kind in _BLOCKABLE

    @property
    def uses_tf(self) -> bool:
        return self.kind in _TF_BY_DEFAULT if self.term_frequency is None else self.term_frequency

    @property
    def block_key(self) -> str:
        """The profile column that blocking on this field compares for equality."""
        return f"{self.name}_text" if self.kind is ColumnKind.DATE else self.name


def declare(columns: Mapping[str, Any]) -> list[Column]:
    """``{field: kind | Column | Splink comparison}`` as a list of :class:`Column`.

    A bare Splink comparison is scored as given (its own column names), cleaned as free text
    and not blocked on unless it is a :class:`Column` with ``blocking=True``.
    """
    out: list[Column] = []
    kinds = ", ".join(k.value for k in ColumnKind)
    for name, spec in columns.items():
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in RESERVED:
            raise ConfigError(
                f"linkage column {name!r}: a field name must be lower case letters, digits and "
                f"underscores, start with a letter, and not be one of {sorted(RESERVED)}"
            )
        if isinstance(spec, Column):
            col = spec if spec.name == name else Column(**{**spec.__dict__, "name": name})
        elif isinstance(spec, str | ColumnKind):
            try:
                col = Column(name, ColumnKind(spec))
            except ValueError:
                raise ConfigError(
                    f"linkage column {name!r}: unknown kind {spec!r}; kinds: {kinds}"
                ) from None
        elif hasattr(spec, "get_comparison"):  # a Splink ComparisonCreator
            col = Column(name, ColumnKind.ADDRESS, comparison=spec, blocking=False)
        else:
            raise ConfigError(
                f"linkage column {name!r}: give a kind ({kinds}) or a Splink comparison, "
                f"not {type(spec).__name__}"
            )
        out.append(col)
    if not any(c.scored for c in out):
        raise ConfigError(
            "linkage columns: none is scored by the model (only trusted ids); declare at "
            "least one name, date, postcode, address, categorical, numeric or identifier column"
        )
    return out


#: the pipeline's own field set, declared like any user's
PIPELINE_COLUMNS: list[Column] = declare(
    {
        "first_name": ColumnKind.PERSON_NAME,
        "surname": ColumnKind.PERSON_NAME,
        "date_of_birth": ColumnKind.DATE,
        "sex": ColumnKind.CATEGORICAL,
        # no term-frequency adjustment, as the pipeline's model had before column kinds: a
        # model saved by a run and reused on a small extract would otherwise take postcode
        # frequencies from that extract, where every postcode is "common"
        "postcode": Column("postcode", ColumnKind.POSTCODE, term_frequency=False),
        "nhs_number": ColumnKind.TRUSTED_ID,
        "upn": ColumnKind.TRUSTED_ID,
        "la_child_id": ColumnKind.TRUSTED_ID,
    }
)


def clean_sql(col: Column, raw: str) -> dict[str, str]:
    """SQL expressions (over the raw VARCHAR value ``raw``) for the column's cleaned value and
    the derived columns its comparison and blocking use, keyed by output column name."""
    n = col.name
    k = col.kind
    if k is ColumnKind.PERSON_NAME:
        return {n: NORMALISE_NAME_SQL.format(raw)}
    if k is ColumnKind.DATE:
        formats = ", ".join(f"'{f}'" for f in DATE_FORMATS)  # this module's constants
        parsed = (
            f"coalesce(TRY_CAST({raw} AS DATE), CAST(try_strptime({raw}, [{formats}]) AS DATE))"
        )
        digits = f"NULLIF(regexp_replace({raw}, '[^0-9]', '', 'g'), '')"
        return {
            n: parsed,
            # an unparseable date (month 13, day 32) is still compared as text
            f"{n}_text": f"coalesce(strftime({parsed}, '%Y%m%d'), {digits})",
            f"{n}_swapped_text": f"strftime({parsed}, '%Y%d%m')",
        }
    if k is ColumnKind.POSTCODE:
        pc = f"upper(trim({raw}))"
        return {
            n: pc,
            f"{n}_sector": f"NULLIF(regexp_extract({pc}, '{_UK_SECTOR}'), '')",
            f"{n}_district": f"NULLIF(regexp_extract({pc}, '{_UK_DISTRICT}'), '')",
            f"{n}_area": f"NULLIF(regexp_extract({pc}, '{_UK_AREA}', 1), '')",
        }
    if k is ColumnKind.ADDRESS:
        return {
            n: f"NULLIF(trim(regexp_replace(lower(strip_accents({raw})), '[^a-z0-9]+', ' ', 'g')), '')"
        }
    if k is ColumnKind.CATEGORICAL:
        return {n: f"upper({raw})"}
    if k is ColumnKind.NUMERIC:
        return {n: f"TRY_CAST({raw} AS DOUBLE)"}
    if k is ColumnKind.IDENTIFIER:
        return {n: f"NULLIF(upper(regexp_replace({raw}, '[\\s-]', '', 'g')), '')"}
    return {n: raw}  # trusted id: compared exactly, as given


def comparison(col: Column, *, uk_postcodes: bool = True) -> Any:
    """The Splink comparison for ``col``: the user's own, or the kind's default.

    ``uk_postcodes=False`` leaves out a postcode's sector, district and area levels (the data
    hold no UK-shaped postcode, so they could not be trained)."""
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl

    if col.comparison is not None:
        return col.comparison
    n, k, tf = col.name, col.kind, col.uses_tf
    if k is ColumnKind.PERSON_NAME:
        # exact (term-frequency adjusted), Jaro-Winkler >= 0.92, >= 0.88, same Soundex, >= 0.7
        return cl.NameComparison(n, dmeta_col_name=f"{n}_phonetic").configure(
            term_frequency_adjustments=tf
        )
    if k is ColumnKind.DATE:
        return cl.CustomComparison(
            output_column_name=n,
            comparison_description=f"{n}: date, tolerant of day/month swaps and typos",
            comparison_levels=[
                cll.NullLevel(f"{n}_text"),
                cll.ExactMatchLevel(f"{n}_text", term_frequency_adjustments=tf),
                # dialect-neutral SQL, so the same model runs on DuckDB and on Spark
                cll.CustomLevel(
                    f"{n}_swapped_text_l = {n}_text_r",
                    label_for_charts="day and month swapped",
                ),
                cll.LevenshteinLevel(f"{n}_text", 1),
                cll.AbsoluteDateDifferenceLevel(
                    n, input_is_string=False, threshold=1, metric="year"
                ),
                cll.ElseLevel(),
            ],
        )
    if k is ColumnKind.POSTCODE:
        return cl.CustomComparison(
            output_column_name=n,
            comparison_description=f"{n}: postcode (UK sector, district and area when UK-shaped)",
            comparison_levels=[
                cll.NullLevel(n),
                cll.ExactMatchLevel(n, term_frequency_adjustments=tf),
                cll.LevenshteinLevel(n, 1).configure(label_for_charts="one edit apart"),
                *(
                    [
                        cll.ExactMatchLevel(f"{n}_sector").configure(
                            label_for_charts="same sector"
                        ),
                        cll.ExactMatchLevel(f"{n}_district").configure(
                            label_for_charts="same district"
                        ),
                        cll.ExactMatchLevel(f"{n}_area").configure(label_for_charts="same area"),
                    ]
                    if uk_postcodes
                    else []
                ),
                cll.ElseLevel(),
            ],
        )
    if k is ColumnKind.ADDRESS:
        return cl.JaroWinklerAtThresholds(n, [0.9, 0.7]).configure(term_frequency_adjustments=tf)
    if k is ColumnKind.CATEGORICAL:
        return cl.ExactMatch(n).configure(term_frequency_adjustments=tf)
    if k is ColumnKind.NUMERIC:
        t = float(col.tolerance)
        return cl.CustomComparison(
            output_column_name=n,
            comparison_description=f"{n}: number, exact or within {t:.0%}",
            comparison_levels=[
                cll.NullLevel(n),
                cll.ExactMatchLevel(n, term_frequency_adjustments=tf),
                cll.CustomLevel(
                    f"abs({n}_l - {n}_r) <= {t!r} * greatest(abs({n}_l), abs({n}_r))",
                    label_for_charts=f"within {t:.0%}",
                ),
                cll.ElseLevel(),
            ],
        )
    if k is ColumnKind.IDENTIFIER:
        # Levenshtein, not Damerau-Levenshtein: 7 times faster in DuckDB, and a transposition
        # (two edits) still falls in the second level
        return cl.LevenshteinAtThresholds(n, [1, 2]).configure(term_frequency_adjustments=tf)
    raise ConfigError(f"linkage column {n!r}: a trusted id is joined exactly, not scored")
