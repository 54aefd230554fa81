"""One contract per source: the single declaration of every extract's columns.

The synthetic generator's column set, the Great Expectations suites, the staging table types and
the data dictionary in the docs are all built from these objects; nothing else re-declares them.

Raw extracts are delivered as text: every column is read as a string, then cast to ``dtype`` by
the validation stage. Conventions of the raw text:

* dates are ISO ``YYYY-MM-DD`` (other formats are defects the validator catches or normalises);
* booleans are ``0`` / ``1``;
* missing values are empty strings (CSV) or nulls (Parquet).

``role`` says where a column may live:

* ``"identifier"``: personal identifier, linkage zone only (names, date of birth, postcode,
  health number, pupil number, local-authority child id);
* ``"record_id"``: the source's own record id (not personal; carried into the analysis zone);
* ``"content"``: everything else; may cross into the analysis zone.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

CODELIST_DIR = Path(__file__).parent / "codelists"

DType = Literal["string", "date", "int", "float", "bool"]
Role = Literal["identifier", "record_id", "content"]
LinkageRole = Literal[
    "first_name",
    "surname",
    "date_of_birth",
    "sex",
    "postcode",
    "nhs_number",
    "upn",
    "la_child_id",
]


@dataclass(frozen=True)
class Column:
    """One column of a source extract."""

    name: str
    dtype: DType
    description: str
    nullable: bool = True
    role: Role = "content"
    codelist: str | None = None
    pattern: str | None = None
    min_value: float | None = None
    max_value: float | None = None
    linkage_role: LinkageRole | None = None


@dataclass(frozen=True)
class CrossFieldRule:
    """A rule across columns of one row, written as a DuckDB SQL boolean over the typed row.

    A row breaks the rule when ``sql`` evaluates to FALSE; NULL (a missing operand) passes.
    """

    name: str
    description: str
    sql: str


@dataclass(frozen=True)
class SourceContract:
    """What one source promises: its columns, key and cross-field rules."""

    name: str
    description: str
    grain: str
    file_stem: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    rules: tuple[CrossFieldRule, ...] = field(default_factory=tuple)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"source {self.name!r} has no column {name!r}")

    @property
    def identifier_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.role == "identifier"]

    @property
    def content_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.role == "content"]


@cache
def load_codelist(name: str) -> dict[str, dict[str, str]]:
    """Return a code list as ``{code: {"description": ..., "group": ...}}``."""
    path = CODELIST_DIR / f"{name}.csv"
    if not path.exists():
        known = sorted(p.stem for p in CODELIST_DIR.glob("*.csv"))
        raise KeyError(f"no code list {name!r}; known code lists: {', '.join(known)}")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if name == "icd10_groups":
        return {r["group"]: r for r in rows}
    return {r["code"]: {"description": r["description"], "group": r["group"]} for r in rows}


def codelist_version() -> str:
    return (CODELIST_DIR / "VERSION").read_text(encoding="utf-8").split()[-1]


# Shared column builders ---------------------------------------------------------------------

ICD10_PATTERN = r"^[A-Z][0-9]{2}(?:\.?[0-9A-Z]{1,2})?$"
NHS_PATTERN = r"^[0-9]{10}$"
UPN_PATTERN = r"^[A-Z][0-9]{12}$"
POSTCODE_PATTERN = r"^[A-Z]{1,2}[0-9][0-9A-Z]? ?[0-9][A-Z]{2}$"
LA_CHILD_ID_PATTERN = r"^[A-Z0-9]{3,4}-[0-9]{6,8}$"


def _record_id(description: str) -> Column:
    return Column("record_id", "string", description, nullable=False, role="record_id")


def _first_name() -> Column:
    return Column(
        "first_name",
        "string",
        "Forename as recorded (may hold typos, nicknames, Welsh diacritics)",
        role="identifier",
        linkage_role="first_name",
    )


def _surname() -> Column:
    return Column(
        "surname",
        "string",
        "Surname as recorded (may change over time)",
        role="identifier",
        linkage_role="surname",
    )


def _dob(nullable: bool = False) -> Column:
    return Column(
        "date_of_birth",
        "date",
        "Date of birth (day and month may be swapped in error)",
        nullable=nullable,
        role="identifier",
        linkage_role="date_of_birth",
    )


def _sex() -> Column:
    return Column(
        "sex",
        "string",
        "Sex as recorded",
        nullable=False,
        role="identifier",
        codelist="sex",
        linkage_role="sex",
    )


def _postcode() -> Column:
    return Column(
        "postcode",
        "string",
        "Postcode of home address at the time of the record (may be stale)",
        role="identifier",
        pattern=POSTCODE_PATTERN,
        linkage_role="postcode",
    )


def _nhs(nullable: bool = True) -> Column:
    return Column(
        "nhs_number",
        "string",
        "Health-service number, 10 digits",
        nullable=nullable,
        role="identifier",
        pattern=NHS_PATTERN,
        linkage_role="nhs_number",
    )


def _upn(nullable: bool = True) -> Column:
    return Column(
        "upn",
        "string",
        "Unique pupil number: a letter and 12 digits",
        nullable=nullable,
        role="identifier",
        pattern=UPN_PATTERN,
        linkage_role="upn",
    )


def _la_child_id() -> Column:
    return Column(
        "la_child_id",
        "string",
        "Local-authority child id (a child may get a new id after a system change)",
        nullable=False,
        role="identifier",
        pattern=LA_CHILD_ID_PATTERN,
        linkage_role="la_child_id",
    )


def _la_code(description: str = "Local authority") -> Column:
    return Column("la_code", "string", description, nullable=False, codelist="local_authorities")


def _area(nullable: bool = False) -> list[Column]:
    return [
        Column("area_code", "string", "Small area (LSOA-like) of home address", nullable=nullable),
        Column(
            "deprivation_decile",
            "int",
            "Area deprivation decile of home address (1 = most deprived)",
            nullable=nullable,
            min_value=1,
            max_value=10,
        ),
    ]


def _before(a: str, b: str) -> str:
    return f"{a} <= {b}"


# The seven sources -------------------------------------------------------------------------

POPULATION_REGISTER = SourceContract(
    name="population_register",
    description="Population register: residence periods of people resident in the region",
    grain="person x residence period",
    file_stem="population_register",
    primary_key=("record_id",),
    columns=(
        _record_id("Register record id, one per residence period"),
        _nhs(nullable=True),
        _first_name(),
        _surname(),
        _dob(),
        _sex(),
        _postcode(),
        *_area(),
        _la_code("Local authority of the address"),
        Column("ethnicity", "string", "Ethnic group", codelist="ethnicity"),
        Column("period_start", "date", "Start of residence at this address", nullable=False),
        Column("period_end", "date", "End of residence at this address (null: ongoing)"),
        Column(
            "end_reason",
            "string",
            "Why the residence period ended",
            codelist="residence_end_reasons",
        ),
        Column("date_of_death", "date", "Date of death, if died"),
    ),
    rules=(
        CrossFieldRule(
            "period_end_after_start",
            "residence ends on or after it starts",
            _before("period_start", "period_end"),
        ),
        CrossFieldRule(
            "period_after_birth",
            "residence starts on or after birth",
            _before("date_of_birth", "period_start"),
        ),
        CrossFieldRule(
            "death_after_birth",
            "death on or after birth",
            _before("date_of_birth", "date_of_death"),
        ),
    ),
)

SCHOOL_CENSUS = SourceContract(
    name="school_census",
    description="School census: one row per pupil per school year (January census)",
    grain="pupil x school year",
    file_stem="school_census",
    primary_key=("record_id",),
    columns=(
        _record_id("School census record id"),
        _upn(nullable=False),
        _first_name(),
        _surname(),
        _dob(),
        _sex(),
        _postcode(),
        *_area(nullable=True),
        Column("ethnicity", "string", "Ethnic group", codelist="ethnicity"),
        Column(
            "academic_year",
            "int",
            "Academic year start (2015 = 2015/16)",
            nullable=False,
            min_value=1990,
            max_value=2035,
        ),
        Column("school_id", "string", "School identifier", nullable=False),
        _la_code("Local authority maintaining the school"),
        Column("free_school_meals", "bool", "Eligible for free school meals"),
        Column(
            "special_needs",
            "string",
            "Special educational needs provision",
            codelist="special_educational_needs",
        ),
        Column(
            "sessions_possible", "int", "Half-day sessions possible", min_value=0, max_value=400
        ),
        Column(
            "sessions_authorised_absence",
            "int",
            "Sessions of authorised absence",
            min_value=0,
            max_value=400,
        ),
        Column(
            "sessions_unauthorised_absence",
            "int",
            "Sessions of unauthorised absence",
            min_value=0,
            max_value=400,
        ),
        Column(
            "fixed_exclusions",
            "int",
            "Fixed-period exclusions that year",
            min_value=0,
            max_value=50,
        ),
        Column("permanent_exclusion", "bool", "Permanently excluded that year"),
    ),
    rules=(
        CrossFieldRule(
            "absence_within_possible",
            "authorised + unauthorised absence does not exceed sessions possible",
            "sessions_authorised_absence + sessions_unauthorised_absence <= sessions_possible",
        ),
        CrossFieldRule(
            "school_age",
            "pupil aged 3 to 19 at the start of the academic year",
            "date_of_birth BETWEEN make_date(academic_year - 19, 9, 1) "
            "AND make_date(academic_year - 3, 8, 31)",
        ),
    ),
)

ATTAINMENT = SourceContract(
    name="attainment",
    description="Attainment: key stage 2 and key stage 4 results",
    grain="pupil x key stage",
    file_stem="attainment",
    primary_key=("record_id",),
    columns=(
        _record_id("Attainment record id"),
        _upn(nullable=False),
        Column(
            "key_stage",
            "string",
            "Key stage: KS2 (age 11) or KS4 (age 16)",
            nullable=False,
            pattern=r"^KS[24]$",
        ),
        Column(
            "academic_year",
            "int",
            "Academic year of the assessment",
            nullable=False,
            min_value=1990,
            max_value=2035,
        ),
        Column("ks2_expected_standard", "bool", "KS2: reached the expected standard (KS2 rows)"),
        Column(
            "ks4_capped_points",
            "float",
            "KS4: capped points score, 0-90 (KS4 rows)",
            min_value=0,
            max_value=90,
        ),
        Column(
            "ks4_level2_inclusive",
            "bool",
            "KS4: level 2 inclusive (5 good GCSEs incl. English/Welsh and maths)",
        ),
    ),
)

HOSPITAL_ADMISSIONS = SourceContract(
    name="hospital_admissions",
    description="Hospital admissions: one row per spell",
    grain="spell",
    file_stem="hospital_admissions",
    primary_key=("record_id",),
    columns=(
        _record_id("Spell id"),
        _nhs(nullable=True),
        _dob(),
        _sex(),
        _postcode(),
        Column("admission_date", "date", "Admission date", nullable=False),
        Column("discharge_date", "date", "Discharge date"),
        Column(
            "admission_method",
            "string",
            "Admission method (emergency / elective)",
            nullable=False,
            codelist="admission_methods",
        ),
        Column(
            "primary_diagnosis",
            "string",
            "Primary diagnosis, ICD-10",
            nullable=False,
            pattern=ICD10_PATTERN,
        ),
        Column(
            "secondary_diagnosis",
            "string",
            "First secondary diagnosis, ICD-10",
            pattern=ICD10_PATTERN,
        ),
    ),
    rules=(
        CrossFieldRule(
            "discharge_after_admission",
            "discharge on or after admission",
            _before("admission_date", "discharge_date"),
        ),
        CrossFieldRule(
            "admission_after_birth",
            "admission on or after birth",
            _before("date_of_birth", "admission_date"),
        ),
    ),
)

EMERGENCY_DEPARTMENT = SourceContract(
    name="emergency_department",
    description="Emergency department: one row per attendance",
    grain="attendance",
    file_stem="emergency_department",
    primary_key=("record_id",),
    columns=(
        _record_id("Attendance id"),
        _nhs(nullable=True),
        _dob(),
        _sex(),
        _postcode(),
        Column("arrival_date", "date", "Arrival date", nullable=False),
        Column("diagnosis", "string", "Diagnosis, ICD-10", pattern=ICD10_PATTERN),
    ),
    rules=(
        CrossFieldRule(
            "arrival_after_birth",
            "arrival on or after birth",
            _before("date_of_birth", "arrival_date"),
        ),
    ),
)

CARE_SUPPORT_CENSUS = SourceContract(
    name="care_support_census",
    description=(
        "Children receiving care and support census: one row per child per census year per "
        "assessment (the latest assessment by census day, plus any assessment superseded within "
        "the year); factors and protection plan as recorded at `assessment_date`"
    ),
    grain="child x census year x assessment",
    file_stem="care_support_census",
    primary_key=("record_id",),
    columns=(
        _record_id("Census record id"),
        _la_child_id(),
        _upn(nullable=True),
        _nhs(nullable=True),
        _first_name(),
        _surname(),
        _dob(),
        _sex(),
        _postcode(),
        _la_code("Local authority providing care and support"),
        Column(
            "census_year",
            "int",
            "Census year (31 March of this year)",
            nullable=False,
            min_value=1990,
            max_value=2035,
        ),
        Column(
            "referral_date",
            "date",
            "Date of the referral that opened this episode of need",
            nullable=False,
        ),
        Column("closure_date", "date", "Date the case closed (null: open at census)"),
        Column(
            "assessment_date",
            "date",
            "Date of the assessment whose factors and protection plan this row records (the "
            "referral's assessment, or a later review that recorded new factors); a late "
            "record is filed in a later census year than its assessment",
            nullable=False,
        ),
        Column(
            "category_of_need",
            "string",
            "Primary category of need",
            nullable=False,
            codelist="categories_of_need",
        ),
        Column(
            "child_protection_registered",
            "bool",
            "On the child-protection register this year",
            nullable=False,
        ),
        Column(
            "child_protection_category",
            "string",
            "Child-protection category (when registered)",
            codelist="child_protection_categories",
        ),
        Column(
            "child_protection_plan_start",
            "date",
            "Start of the child-protection plan in force at the assessment (null: none)",
        ),
        Column("parent_domestic_abuse", "bool", "Parenting factor: domestic abuse", nullable=False),
        Column(
            "parent_mental_ill_health",
            "bool",
            "Parenting factor: parental mental ill health",
            nullable=False,
        ),
        Column(
            "parent_substance_misuse",
            "bool",
            "Parenting factor: parental alcohol or substance misuse",
            nullable=False,
        ),
        Column(
            "parent_learning_disability",
            "bool",
            "Parenting factor: parental learning disability",
            nullable=False,
        ),
        Column(
            "parent_physical_ill_health", "bool", "Parenting factor: parental physical ill health"
        ),
        Column("disability", "bool", "Child has a disability"),
    ),
    rules=(
        CrossFieldRule(
            "referral_before_closure",
            "referral on or before closure",
            _before("referral_date", "closure_date"),
        ),
        CrossFieldRule(
            "referral_after_birth",
            "referral on or after birth",
            _before("date_of_birth", "referral_date"),
        ),
        CrossFieldRule(
            "assessment_after_referral",
            "assessment on or after the episode's referral",
            _before("referral_date", "assessment_date"),
        ),
        CrossFieldRule(
            "plan_within_episode",
            "protection plan starting between the referral and the assessment",
            f"{_before('referral_date', 'child_protection_plan_start')} AND "
            f"{_before('child_protection_plan_start', 'assessment_date')}",
        ),
    ),
)

LOOKED_AFTER_EPISODES = SourceContract(
    name="looked_after_episodes",
    description="Looked-after episodes: a new episode starts at each change of placement or legal status",
    grain="episode",
    file_stem="looked_after_episodes",
    primary_key=("record_id",),
    columns=(
        _record_id("Episode id"),
        _la_child_id(),
        _dob(),
        _sex(),
        _postcode(),
        _la_code("Responsible local authority"),
        Column("episode_start", "date", "Episode start date", nullable=False),
        Column("episode_end", "date", "Episode end date (null: open)"),
        Column("legal_status", "string", "Legal status", nullable=False, codelist="legal_statuses"),
        Column(
            "placement_type", "string", "Placement type", nullable=False, codelist="placement_types"
        ),
        Column(
            "reason_episode_started",
            "string",
            "Reason the episode started (S = started to be looked after)",
            nullable=False,
            codelist="reasons_episode_started",
        ),
        Column(
            "reason_episode_ended",
            "string",
            "Reason the episode ended (X1 = continues in a new episode)",
            codelist="reasons_episode_ended",
        ),
    ),
    rules=(
        CrossFieldRule(
            "episode_end_after_start",
            "episode ends on or after it starts",
            _before("episode_start", "episode_end"),
        ),
        CrossFieldRule(
            "episode_after_birth",
            "episode starts on or after birth",
            _before("date_of_birth", "episode_start"),
        ),
    ),
)

SOURCES: dict[str, SourceContract] = {
    c.name: c
    for c in (
        POPULATION_REGISTER,
        SCHOOL_CENSUS,
        ATTAINMENT,
        HOSPITAL_ADMISSIONS,
        EMERGENCY_DEPARTMENT,
        CARE_SUPPORT_CENSUS,
        LOOKED_AFTER_EPISODES,
    )
}


# Pre-linked deliveries ----------------------------------------------------------------------
#
# In a trusted research environment (SAIL's ALF) the extracts arrive already linked: each row
# carries the provider's pseudonymous person id and its match quality, and no identifier at all.
# A delivery declares it in delivery.json: ``"linkage": "provider"``. Its contracts are the
# native ones without the personal identifiers, plus the four columns below; cross-field rules
# on a removed identifier (a date of birth before an event) are the provider's to apply.

PRELINKED_MODE = "provider"
# the native identifiers a pre-linked extract must not carry (sex is not identifying on its own
# and the cohort needs it; it stays)
PRELINKED_REMOVED = ("first_name", "surname", "date_of_birth", "postcode", "nhs_number", "upn",
                     "la_child_id")  # fmt: skip
PRELINKED_PERSON_ID = "person_pseudonym"
PRELINKED_COLUMNS = (
    Column(
        PRELINKED_PERSON_ID,
        "string",
        "The provider's pseudonymous person id (e.g. SAIL's ALF): the same person has the same "
        "id in every extract; re-keyed with the run's secret before the analysis zone",
        nullable=False,
        role="identifier",
        pattern=r"^[A-Za-z0-9_-]{1,128}$",
    ),
    Column(
        "link_status",
        "string",
        "The provider's match status code for this row's person id (e.g. SAIL's ALF_STS_CD)",
        nullable=False,
        pattern=r"^[A-Za-z0-9_-]{1,16}$",
    ),
    Column(
        "match_percentage",
        "float",
        "The provider's match percentage for this row's person id (0-100; SAIL's ALF_MTCH_PCT "
        "x 100): match probability = match_percentage / 100",
        nullable=False,
        min_value=0,
        max_value=100,
    ),
)
WEEK_OF_BIRTH = Column(
    "week_of_birth",
    "date",
    "Monday of the week of birth (in place of the date of birth)",
    pattern=r"^\d{4}-\d{2}-\d{2}$",
)


def prelinked_contract(contract: SourceContract) -> SourceContract:
    """The pre-linked variant of a source contract: no identifiers, the provider's person id
    and match quality, the week of birth where the native contract has a date of birth."""
    kept = tuple(c for c in contract.columns if c.name not in PRELINKED_REMOVED)
    week = (WEEK_OF_BIRTH,) if "date_of_birth" in contract.column_names else ()
    rules = tuple(r for r in contract.rules if not any(name in r.sql for name in PRELINKED_REMOVED))
    return SourceContract(
        name=contract.name,
        description=contract.description + " (pre-linked by the provider)",
        grain=contract.grain,
        file_stem=contract.file_stem,
        columns=(kept[0], *PRELINKED_COLUMNS, *week, *kept[1:]),
        primary_key=contract.primary_key,
        rules=rules,
    )


PRELINKED_SOURCES: dict[str, SourceContract] = {
    n: prelinked_contract(c) for n, c in SOURCES.items()
}
