"""Write a world's social-care extracts as a Welsh local authority returns them to the Welsh
Government: the looked after children census and the children receiving care and support
(CRCS) census.

``cohort synth --layout wales_lac`` (and/or ``wales_crcs``) writes the same world (same seed,
same truth, same defects) with these sources in the Welsh returns instead of the native contract
files:

* ``looked_after_episodes`` as the looked after children census episode form, exported as
  ``WLAC_episodes.csv``: one row per episode, the child's details on every row (local authority,
  child identifier, date of birth, gender 1/2/0), the episode's start date, legal status,
  placement type, reason for the new episode, end date, reason the episode ceased and the
  child's home postcode, dates dd/mm/yyyy as the census's Excel forms give them;
* ``care_support_census`` as the CRCS census, one file per census year
  (``CRCS_<year>.csv``, census date 31 March): the child's identifiers and characteristics,
  the date the latest period of care and support began and the date the case closed, the
  assessment date, the category of need (N1-N9), the child protection register (registered
  Y/N, date of registration, category of abuse as a word) and the parenting capacity factors
  as one Y/N column each (domestic abuse, parental mental ill health, parental substance or
  alcohol misuse, parental learning disability, parental physical ill health) and disability Y/N.

The column headings are this project's spelling of the census data items (the Welsh
Government's forms and their exact headings were not reachable when this was written; see
docs/deliveries.md); ``deliveries/layouts/wales_lac.yaml`` and ``wales_crcs.yaml`` read them.

This module is written independently of the ``deliveries`` package that reads the layouts, and
imports nothing of the project: ``synthetic_data.layouts`` hands it the rows in the order the
native extract is written, with their malformed flags.

Extensions a linkage extract carries beyond the returns (as for the English layouts): the row id
(``RecordID``), and in the CRCS the identifiers linkage needs (``NHSNumber``, ``FirstName``,
``Surname``, ``Postcode``). A malformed row is written with one field too many, as in the
native extract.
"""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import numpy as np

LAC_FILES = ("WLAC_*.csv",)
CRCS_FILES = ("CRCS_*.csv",)

GENDER = {"M": "1", "F": "2", "U": "0"}
YES_NO = {"1": "Y", "0": "N"}
# the category of abuse under which a child is on the child protection register, as a word
CATEGORY_OF_ABUSE = {"NEG": "Neglect", "PHY": "Physical", "SAB": "Sexual", "EMO": "Emotional"}

LAC_COLUMNS = (
    "LocalAuthority", "ChildIdentifier", "DateOfBirth", "Gender", "EpisodeStartDate",
    "LegalStatus", "PlacementType", "ReasonForNewEpisode", "EpisodeEndDate",
    "ReasonEpisodeCeased", "HomePostcode", "RecordID",
)  # fmt: skip
CRCS_COLUMNS = (
    "LocalAuthority", "ChildIdentifier", "UPN", "NHSNumber", "FirstName", "Surname",
    "DateOfBirth", "Gender", "Postcode", "CensusYear", "CareAndSupportStartDate",
    "CaseClosedDate", "AssessmentDate", "CategoryOfNeed", "ChildProtectionRegister",
    "DateOfRegistration", "CategoryOfAbuse", "DomesticAbuse", "ParentalMentalIllHealth",
    "ParentalSubstanceMisuse", "ParentalLearningDisability", "ParentalPhysicalIllHealth",
    "Disability", "RecordID",
)  # fmt: skip


def uk_date(value: str | None) -> str:
    """ISO ``YYYY-MM-DD`` as dd/mm/yyyy; anything else (a planted defect) as it is."""
    if value is None:
        return ""
    try:
        return date.fromisoformat(value).strftime("%d/%m/%Y") if len(value) == 10 else value
    except ValueError:
        return value


def _coded(value: str | None, codes: dict[str, str]) -> str:
    """A contract value in the return's code (a value outside the list as it is)."""
    return "" if value is None else codes.get(value, value)


def write_wales_lac(rows: list[dict], bad: np.ndarray, out: Path) -> None:
    """The looked-after episodes as the Welsh looked after children census episode form."""
    with (out / "WLAC_episodes.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(LAC_COLUMNS)
        for r, is_bad in zip(rows, bad, strict=True):
            line = [
                r["la_code"] or "",
                r["la_child_id"] or "",
                uk_date(r["date_of_birth"]),
                _coded(r["sex"], GENDER),
                uk_date(r["episode_start"]),
                r["legal_status"] or "",
                r["placement_type"] or "",
                r["reason_episode_started"] or "",
                uk_date(r["episode_end"]),
                r["reason_episode_ended"] or "",
                r["postcode"] or "",
                r["record_id"] or "",
            ]
            w.writerow([*line, "EXTRA"] if is_bad else line)


def write_crcs(rows: list[dict], bad: np.ndarray, out: Path) -> None:
    """The care-and-support census as the CRCS census, one CSV per census year (rows of an
    unknown year in ``CRCS_unknown.csv``)."""
    by_year: dict[str, list[list[str]]] = {}
    for r, is_bad in zip(rows, bad, strict=True):
        year = r["census_year"] or ""
        line = [
            r["la_code"] or "",
            r["la_child_id"] or "",
            r["upn"] or "",
            r["nhs_number"] or "",
            r["first_name"] or "",
            r["surname"] or "",
            uk_date(r["date_of_birth"]),
            _coded(r["sex"], GENDER),
            r["postcode"] or "",
            year,
            uk_date(r["referral_date"]),
            uk_date(r["closure_date"]),
            uk_date(r["assessment_date"]),
            r["category_of_need"] or "",
            _coded(r["child_protection_registered"], YES_NO),
            uk_date(r["child_protection_plan_start"]),
            _coded(r["child_protection_category"], CATEGORY_OF_ABUSE),
            *(
                _coded(r[c], YES_NO)
                for c in (
                    "parent_domestic_abuse",
                    "parent_mental_ill_health",
                    "parent_substance_misuse",
                    "parent_learning_disability",
                    "parent_physical_ill_health",
                    "disability",
                )
            ),
            r["record_id"] or "",
        ]
        by_year.setdefault(year if year.isdigit() else "unknown", []).append(
            [*line, "EXTRA"] if is_bad else line
        )
    for year, lines in by_year.items():
        with (out / f"CRCS_{year}.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(CRCS_COLUMNS)
            w.writerows(lines)
