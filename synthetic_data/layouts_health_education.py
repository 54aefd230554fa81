"""Write a world's health and education extracts in the layouts a data provider delivers them in.

``cohort synth --layout ecds`` (or ``school_census``, ``key_stages``, alone or with other
layouts) writes the same world (same seed, same truth, same defects) with these sources in
their delivery layout instead of the native contract files:

* ``emergency_department`` (layout ``ecds``) as an Emergency Care Data Set extract of
  attendances, SUS+ field names (``ECDS_attendances.csv``: EC_Ident, NHS_Number, Date_Of_Birth,
  Sex 1/2/9/X, Postcode, Arrival_Date, EC_Diagnosis_01 as a SNOMED CT concept id,
  EC_Injury_Intent_SNOMED_CT);
* ``school_census`` (layout ``school_census``) as a DfE school census pupil-level extract, one
  row per pupil per spring census (``School_census_pupils.csv``: UPN, Forename, Surname, DOB,
  Gender, PostCode, Ethnicity, AcademicYear, LAEstab, LA, FSMeligible, SENprovision, absence
  sessions, exclusions);
* ``attainment`` (layout ``key_stages``) as National Pupil Database key stage 2 and key stage 4
  pupil files (``NPD_KS2_pupils.csv``: KS2_UPN, KS2_ACADYR, KS2_RWM_EXP;
  ``NPD_KS4_pupils.csv``: KS4_UPN, KS4_ACADYR, KS4_ATT8, KS4_LEVEL2_EM).

Like ``synthetic_data.layouts``, this module is written independently of the ``deliveries``
package that reads the layouts: the code tables below are the writer's own, and the round trip
(tests/test_deliveries_health_education.py) checks that they agree with the layout YAMLs.

What a layout cannot carry, and so differs from the native world (docs/deliveries.md, "Health
and education layouts"):

* ECDS records a diagnosis as a SNOMED CT concept, with the intent of an injury in its own
  field: the ICD-10 external cause of self-harm (X60-X84) comes back as X84 (intentional
  self-harm by unspecified means), and two codes whose concept the layout's map shares come
  back as the map's code (K35.3 as K35.8, S60.0 as T14.0). Each stays in its outcome group;
* a key stage outside KS2 and KS4 (a planted code defect) has no NPD file: the row is not
  written (natively it is quarantined as ``code_outside_list``).

Extensions a linkage extract carries beyond the provider's layout: the extract's row id
(``RECORD_ID``) in the school census and key stage files, the LA's ONS code, the pupil's small
area and its deprivation decile, and the identifiers linkage needs.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

Row = dict[str, str | None]

# --- emergency care data set -------------------------------------------------------------------

ECDS_FILES = ("ECDS_attendances*.csv",)
ECDS_COLUMNS = (
    "EC_Ident", "NHS_Number", "Date_Of_Birth", "Sex", "Postcode", "Arrival_Date",
    "EC_Diagnosis_01", "EC_Injury_Intent_SNOMED_CT",
)  # fmt: skip
# PERSON STATED GENDER CODE (NHS Data Model and Dictionary): 1 male, 2 female, 9 indeterminate,
# X not known
ECDS_SEX = {"M": "1", "F": "2", "U": "X"}
SELF_INFLICTED = "276853009"  # SNOMED CT: Self inflicted injury (the ECDS injury intent)
# The SNOMED CT concept an emergency department records for each ICD-10 code of the world. Where
# two ICD-10 codes share a concept the layout's map gives one of them back (see the module doc).
ECDS_DIAGNOSIS = {
    "S52.5": "263199001",  # Fracture of distal end of radius
    "S93.4": "44465007",  # Sprain of ankle
    "S06.0": "110030002",  # Concussion injury of brain
    "S01.8": "312608009",  # Laceration - injury
    "S00.9": "82271004",  # Injury of head
    "T14.0": "125667009",  # Contusion
    "S60.0": "125667009",  # Contusion (the map gives T14.0)
    "T14.9": "417163006",  # Traumatic or non-traumatic injury
    "J45.9": "195967001",  # Asthma
    "J18.9": "233604007",  # Pneumonia
    "J21.9": "4120002",  # Bronchiolitis
    "A09": "25374005",  # Gastroenteritis
    "B34.9": "34014006",  # Viral disease
    "R10.4": "21522001",  # Abdominal pain
    "R56.8": "91175000",  # Seizure
    "K35.8": "85189001",  # Acute appendicitis
    "K35.3": "85189001",  # Acute appendicitis (the map gives K35.8)
    "K37": "74400008",  # Appendicitis
    # self-harm: the injury is recorded with intent "self inflicted"; the map gives X84
    "X60": SELF_INFLICTED,
    "X61": SELF_INFLICTED,
    "X62": SELF_INFLICTED,
    "X64": SELF_INFLICTED,
    "X78": SELF_INFLICTED,
    "X84": SELF_INFLICTED,
}
SELF_HARM_CODES = frozenset(k for k, v in ECDS_DIAGNOSIS.items() if v == SELF_INFLICTED)


def _text(value: str | None) -> str:
    return "" if value is None else value


def write_ecds(rows: list[Row], bad: np.ndarray, out: Path) -> None:
    """Emergency department attendances as an ECDS extract. A diagnosis the map does not hold
    (a planted code defect such as ``9XX``) is written as it is."""
    with (out / "ECDS_attendances.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(ECDS_COLUMNS)
        for r, is_bad in zip(rows, bad, strict=True):
            diagnosis = r["diagnosis"]
            line = [
                _text(r["record_id"]),
                _text(r["nhs_number"]),
                _text(r["date_of_birth"]),
                ECDS_SEX.get(_text(r["sex"]), _text(r["sex"])),
                _text(r["postcode"]),
                _text(r["arrival_date"]),
                ECDS_DIAGNOSIS.get(_text(diagnosis), _text(diagnosis)),
                SELF_INFLICTED if diagnosis in SELF_HARM_CODES else "",
            ]
            w.writerow([*line, "EXTRA"] if is_bad else line)


# --- school census -----------------------------------------------------------------------------

SCHOOL_CENSUS_FILES = ("School_census_*.csv",)
# (layout column, contract column), in the file's order
SCHOOL_CENSUS_COLUMNS = (
    ("UPN", "upn"),
    ("Forename", "first_name"),
    ("Surname", "surname"),
    ("DOB", "date_of_birth"),
    ("Gender", "sex"),
    ("PostCode", "postcode"),
    ("LSOA", "area_code"),
    ("IMD_Decile", "deprivation_decile"),
    ("Ethnicity", "ethnicity"),
    ("AcademicYear", "academic_year"),
    ("LAEstab", "school_id"),
    ("LA", "la_code"),
    ("FSMeligible", "free_school_meals"),
    ("SENprovision", "special_needs"),
    ("SessionsPossible", "sessions_possible"),
    ("SessionsAuthorisedAbsence", "sessions_authorised_absence"),
    ("SessionsUnauthorisedAbsence", "sessions_unauthorised_absence"),
    ("FixedPeriodExclusions", "fixed_exclusions"),
    ("PermanentExclusion", "permanent_exclusion"),
    ("RECORD_ID", "record_id"),
)


def write_school_census(rows: list[Row], bad: np.ndarray, out: Path) -> None:
    """The school census as a pupil-level extract: one row per pupil per spring census. The
    contract's codes are the census's own (SEN provision N, K, E; FSM eligibility 0 / 1;
    Gender M / F), so only the names change."""
    with (out / "School_census_pupils.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow([name for name, _ in SCHOOL_CENSUS_COLUMNS])
        for r, is_bad in zip(rows, bad, strict=True):
            line = [_text(r[col]) for _, col in SCHOOL_CENSUS_COLUMNS]
            w.writerow([*line, "EXTRA"] if is_bad else line)


# --- key stage results -------------------------------------------------------------------------

KEY_STAGE_FILES = ("NPD_KS2_pupils*.csv", "NPD_KS4_pupils*.csv")
KS2_COLUMNS = (
    ("KS2_UPN", "upn"),
    ("KS2_ACADYR", "academic_year"),
    ("KS2_RWM_EXP", "ks2_expected_standard"),
    ("RECORD_ID", "record_id"),
)
KS4_COLUMNS = (
    ("KS4_UPN", "upn"),
    ("KS4_ACADYR", "academic_year"),
    ("KS4_ATT8", "ks4_capped_points"),
    ("KS4_LEVEL2_EM", "ks4_level2_inclusive"),
    ("RECORD_ID", "record_id"),
)


def write_key_stages(rows: list[Row], bad: np.ndarray, out: Path) -> None:
    """Attainment as NPD key stage 2 and key stage 4 pupil files (one row per pupil result,
    each file in the native rows' order). A row whose key stage is neither (a planted code
    defect) has no file and is not written."""
    files = {
        "KS2": ("NPD_KS2_pupils.csv", KS2_COLUMNS),
        "KS4": ("NPD_KS4_pupils.csv", KS4_COLUMNS),
    }
    handles = {
        ks: (out / name).open("w", newline="", encoding="utf-8") for ks, (name, _) in files.items()
    }
    try:
        writers = {ks: csv.writer(fh, lineterminator="\n") for ks, fh in handles.items()}
        for ks, (_, columns) in files.items():
            writers[ks].writerow([name for name, _ in columns])
        for r, is_bad in zip(rows, bad, strict=True):
            stage = _text(r["key_stage"])
            if stage not in files:
                continue
            line = [_text(r[col]) for _, col in files[stage][1]]
            writers[stage].writerow([*line, "EXTRA"] if is_bad else line)
    finally:
        for fh in handles.values():
            fh.close()
