"""Write a world's social-care extracts in the statutory-return layouts a local authority delivers.

``cohort synth --layout ssda903`` (or ``hes_apc``) writes the same world (same seed, same truth,
same defects) with sources in their return layouts instead of the native contract files:

* ``looked_after_episodes`` as the SSDA903 looked-after return: ``SSDA903_header.csv`` (one row
  per child: LA, CHILD, SEX 1/2, DOB dd/mm/yyyy, UPN) and ``SSDA903_episodes.csv`` (one row per
  episode: DECOM, RNE, LS, CIN, PLACE, PLACE_PROVIDER, DEC, REC, REASON_PLACE_CHANGE, HOME_POST,
  PL_POST, URN, dates dd/mm/yyyy);
* ``care_support_census`` as children in need census XML, one file per census year
  (``CIN_census_<year>.xml``: Header > CollectionDetails > ReferenceDate; each Child with its
  ChildIdentifiers, ChildCharacteristics > Disabilities, CINdetails > Assessments with their
  factors, Section47 (the enquiry before a protection plan: the world does not model its dates,
  so it starts and its initial conference is held on the plan's first day), ChildProtectionPlans);
* ``hospital_admissions`` (layout ``hes_apc``) as a HES admitted patient care extract of spells
  (``HES_APC_spells.csv``: EPIKEY, NEWNHSNO, DOB, SEX, HOMEADD, ADMIDATE, DISDATE, ADMIMETH,
  DIAG_4_01, DIAG_4_02, ICD-10 without the dot).

This module is written independently of the ``deliveries`` package that reads the layouts (the
stages do not import each other), which is what makes the round trip a real test.

What a layout cannot carry, and so differs from the native world:

* the 903 header holds one date of birth and sex per child: an episode whose recorded date of
  birth or sex differs from the child's first episode (identifier noise, a defect) carries the
  first one (tests/test_deliveries.py compares with that).

Extensions a linkage extract carries beyond the returns (see docs/deliveries.md): the LA code
per row (as liiatools adds it), the extract's row id (RECORD_ID / RecordID), and in the CIN
census the identifiers linkage needs (PersonFirstName, PersonSurname, NHSNumber, PostCode).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import polars as pl

from ground.errors import ConfigError
from synthetic_data import layouts_health_education as health_education
from synthetic_data import layouts_wales
from synthetic_data.layouts_wales import uk_date

# a layout writer: the source's frame, the row order it is written in, which rows are malformed,
# the output folder
Writer = Callable[[pl.DataFrame, np.ndarray, np.ndarray, Path], None]

SEX_903 = {"M": "1", "F": "2", "U": "0"}
# CIN census assessment factors: "concerns about the parent(s) or carer(s)"
FACTOR_CODES = {
    "parent_substance_misuse": "2B",
    "parent_domestic_abuse": "3B",
    "parent_mental_ill_health": "4B",
    "parent_learning_disability": "5B",
    "parent_physical_ill_health": "6B",
}
DISABILITY_CODE = "DDA"  # any disability; "NONE" for none


def _written_order(rows_out: np.ndarray, malformed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows in the order the native CSV writes them (good rows, then the malformed ones)
    and which of them are malformed."""
    bad = np.zeros(rows_out.size, bool)
    bad[malformed] = True
    order = np.r_[rows_out[~bad], rows_out[bad]]
    return order, np.r_[np.zeros(int((~bad).sum()), bool), np.ones(int(bad.sum()), bool)]


def write_ssda903(df: pl.DataFrame, rows_out: np.ndarray, malformed: np.ndarray, out: Path) -> None:
    """The looked-after episodes as SSDA903 Header + Episodes CSVs."""
    order, bad = _written_order(rows_out, malformed)
    rows = df.gather(order).to_dicts()
    header_rows: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        key = (r["la_code"] or "", r["la_child_id"] or "")
        if key not in header_rows:
            header_rows[key] = {
                "LA": key[0],
                "CHILD": key[1],
                "SEX": SEX_903.get(r["sex"], r["sex"] or ""),
                "DOB": uk_date(r["date_of_birth"]),
                "UPN": "",
            }
    with (out / "SSDA903_header.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, ["LA", "CHILD", "SEX", "DOB", "UPN"], lineterminator="\n")
        w.writeheader()
        w.writerows(header_rows.values())
    columns = [
        "LA", "CHILD", "DECOM", "RNE", "LS", "CIN", "PLACE", "PLACE_PROVIDER", "DEC", "REC",
        "REASON_PLACE_CHANGE", "HOME_POST", "PL_POST", "URN", "RECORD_ID",
    ]  # fmt: skip
    with (out / "SSDA903_episodes.csv").open("w", newline="", encoding="utf-8") as fh:
        w2 = csv.writer(fh, lineterminator="\n")
        w2.writerow(columns)
        for r, is_bad in zip(rows, bad, strict=True):
            line = [
                r["la_code"] or "",
                r["la_child_id"] or "",
                uk_date(r["episode_start"]),
                r["reason_episode_started"] or "",
                r["legal_status"] or "",
                "",
                r["placement_type"] or "",
                "",
                uk_date(r["episode_end"]),
                r["reason_episode_ended"] or "",
                "",
                r["postcode"] or "",
                "",
                "",
                r["record_id"] or "",
            ]
            w2.writerow([*line, "EXTRA"] if is_bad else line)


def _is_iso_date(value: str | None) -> bool:
    try:
        return value is not None and len(value) == 10 and bool(date.fromisoformat(value))
    except ValueError:
        return False


def _el(name: str, value: str | None, indent: str) -> str:
    return "" if value is None else f"{indent}<{name}>{escape(value)}</{name}>\n"


def write_cin_census(
    df: pl.DataFrame, rows_out: np.ndarray, malformed: np.ndarray, out: Path
) -> None:
    """The care-and-support census as CIN census XML, one file per census year; each row is one
    Child with one CINdetails and one Assessments (and its protection plan, if any). A
    malformed row repeats its CINreferralDate element."""
    order, bad = _written_order(rows_out, malformed)
    rows = df.gather(order).to_dicts()
    by_year: dict[str, list[str]] = {}
    for r, is_bad in zip(rows, bad, strict=True):
        year = r["census_year"] or "0"
        factors = "".join(
            f"            <AssessmentFactors>{code}</AssessmentFactors>\n"
            for col, code in FACTOR_CODES.items()
            if r[col] == "1"
        )
        referral = _el("CINreferralDate", r["referral_date"], "      ")
        plan = enquiry = ""
        if _is_iso_date(r["child_protection_plan_start"]):
            # the enquiry that led to the plan; the world does not model its own dates, so it
            # starts, and its initial conference is held, on the plan's first day
            enquiry = (
                "      <Section47>\n"
                + _el("S47ActualStartDate", r["child_protection_plan_start"], "        ")
                + _el("DateOfInitialCPC", r["child_protection_plan_start"], "        ")
                + "        <ICPCnotRequired>false</ICPCnotRequired>\n"
                "      </Section47>\n"
            )
        if r["child_protection_category"] is not None or r["child_protection_plan_start"]:
            plan = (
                "      <ChildProtectionPlans>\n"
                + _el("CPPstartDate", r["child_protection_plan_start"], "        ")
                + _el("InitialCategoryOfAbuse", r["child_protection_category"], "        ")
                + "      </ChildProtectionPlans>\n"
            )
        disability = {"1": DISABILITY_CODE, "0": "NONE"}.get(r["disability"] or "")
        by_year.setdefault(year, []).append(
            "  <Child>\n"
            "    <ChildIdentifiers>\n"
            + _el("LAchildID", r["la_child_id"], "      ")
            + _el("UPN", r["upn"], "      ")
            + _el("PersonBirthDate", r["date_of_birth"], "      ")
            + _el("GenderCurrent", SEX_903.get(r["sex"], r["sex"]), "      ")
            + _el("PersonFirstName", r["first_name"], "      ")
            + _el("PersonSurname", r["surname"], "      ")
            + _el("NHSNumber", r["nhs_number"], "      ")
            + _el("PostCode", r["postcode"], "      ")
            + _el("LEA", r["la_code"], "      ")
            + "    </ChildIdentifiers>\n"
            "    <ChildCharacteristics>\n"
            "      <Disabilities>\n"
            + _el("Disability", disability, "        ")
            + "      </Disabilities>\n"
            "    </ChildCharacteristics>\n"
            "    <CINdetails>\n"
            + referral
            + (referral if is_bad else "")
            + _el("PrimaryNeedCode", r["category_of_need"], "      ")
            + _el("CINclosureDate", r["closure_date"], "      ")
            + "      <Assessments>\n"
            + _el("AssessmentActualStartDate", r["assessment_date"], "        ")
            + _el("RecordID", r["record_id"], "        ")
            + "        <FactorsIdentifiedAtAssessment>\n"
            + factors
            + "        </FactorsIdentifiedAtAssessment>\n"
            "      </Assessments>\n" + enquiry + plan + "    </CINdetails>\n"
            "  </Child>\n"
        )
    for year, children in by_year.items():
        reference = f"{year}-03-31" if year.isdigit() else year
        (out / f"CIN_census_{year}.xml").write_text(
            '<?xml version="1.0" encoding="utf-8"?>\n<Message>\n<Header>\n  <CollectionDetails>\n'
            f"    <Collection>CIN</Collection>\n    <Year>{escape(year)}</Year>\n"
            f"    <ReferenceDate>{escape(reference)}</ReferenceDate>\n  </CollectionDetails>\n"
            "</Header>\n<Children>\n" + "".join(children) + "</Children>\n</Message>\n",
            encoding="utf-8",
        )


def write_hes_apc(df: pl.DataFrame, rows_out: np.ndarray, malformed: np.ndarray, out: Path) -> None:
    """The hospital admissions as a HES admitted patient care extract of spells: HES field
    names, sex 1/2, ICD-10 codes without their dot (S06.0 -> S060)."""
    order, bad = _written_order(rows_out, malformed)
    columns = [
        "EPIKEY", "NEWNHSNO", "DOB", "SEX", "HOMEADD", "ADMIDATE", "DISDATE", "ADMIMETH",
        "DIAG_4_01", "DIAG_4_02",
    ]  # fmt: skip
    with (out / "HES_APC_spells.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(columns)
        for r, is_bad in zip(df.gather(order).iter_rows(named=True), bad, strict=True):
            line = [
                r["record_id"] or "",
                r["nhs_number"] or "",
                r["date_of_birth"] or "",
                SEX_903.get(r["sex"], r["sex"] or ""),
                r["postcode"] or "",
                r["admission_date"] or "",
                r["discharge_date"] or "",
                r["admission_method"] or "",
                (r["primary_diagnosis"] or "").replace(".", "", 1),
                (r["secondary_diagnosis"] or "").replace(".", "", 1),
            ]
            w.writerow([*line, "EXTRA"] if is_bad else line)


def rows_in_written_order(write_rows: Callable[[list[dict], np.ndarray, Path], None]) -> Writer:
    """A writer of row dicts (already in the native file's order, with their malformed flags)
    as a layout writer."""

    def writer(df: pl.DataFrame, rows_out: np.ndarray, malformed: np.ndarray, out: Path) -> None:
        order, bad = _written_order(rows_out, malformed)
        write_rows(df.gather(order).to_dicts(), bad, out)

    return writer


# Every layout the world can be written in: layout name -> source -> its writer. Two layouts
# that write the same source (the English 903 and the Welsh looked-after return both write the
# looked-after episodes) cannot be in one delivery.
WRITERS: dict[str, dict[str, Writer]] = {
    "ssda903": {
        "looked_after_episodes": write_ssda903,
        "care_support_census": write_cin_census,
    },
    "hes_apc": {"hospital_admissions": write_hes_apc},
    "wales_lac": {"looked_after_episodes": rows_in_written_order(layouts_wales.write_wales_lac)},
    "wales_crcs": {"care_support_census": rows_in_written_order(layouts_wales.write_crcs)},
    "ecds": {"emergency_department": rows_in_written_order(health_education.write_ecds)},
    "school_census": {"school_census": rows_in_written_order(health_education.write_school_census)},
    "key_stages": {"attainment": rows_in_written_order(health_education.write_key_stages)},
}
# the files each layout writes (removed from the output folder before a world is written)
WRITTEN_FILES: dict[str, tuple[str, ...]] = {
    "ssda903": ("SSDA903_*.csv", "CIN_census_*.xml"),
    "hes_apc": ("HES_APC_*.csv",),
    "wales_lac": layouts_wales.LAC_FILES,
    "wales_crcs": layouts_wales.CRCS_FILES,
    "ecds": health_education.ECDS_FILES,
    "school_census": health_education.SCHOOL_CENSUS_FILES,
    "key_stages": health_education.KEY_STAGE_FILES,
}
LAYOUT_SOURCES = {name: tuple(writers) for name, writers in WRITERS.items()}
LAYOUT_FILES = tuple(p for patterns in WRITTEN_FILES.values() for p in patterns)
PRELINKED = "prelinked"  # not a return layout: the native world rewritten (write_prelinked)


def layout_names(layouts: str | Sequence[str] | None) -> tuple[str, ...]:
    """The layouts of one delivery from ``--layout`` (a name, a comma list, or a list of names,
    each possibly a comma list), checked: each known, none twice, no source written by two."""
    given = [] if layouts is None else [layouts] if isinstance(layouts, str) else list(layouts)
    if not given:
        return ()
    names = [n.strip() for item in given for n in item.split(",") if n.strip()]
    if not names:
        raise ConfigError("--layout: give a layout name")
    known = [*WRITERS, PRELINKED]
    for n in names:
        if n not in known:
            raise ConfigError(f"--layout {n!r}: not a layout; known: {', '.join(known)}")
    if PRELINKED in names and len(names) > 1:
        raise ConfigError(
            "--layout prelinked carries no identifiers and cannot be combined with a return "
            "layout (which carries them); give it alone"
        )
    if len(set(names)) < len(names):
        raise ConfigError(f"--layout {','.join(names)}: a layout is named twice")
    writer_of: dict[str, str] = {}
    for n in names:
        for source in WRITERS.get(n, {}):
            if source in writer_of:
                raise ConfigError(
                    f"--layout {writer_of[source]} and {n} both write {source}; one delivery "
                    "holds one of them (give one)"
                )
            writer_of[source] = n
    return tuple(names)


def layout_writer(layouts: Sequence[str], source: str) -> Writer | None:
    """The writer of ``source`` in one of the delivery's layouts (None: written natively)."""
    for name in layouts:
        if source in WRITERS.get(name, {}):
            return WRITERS[name][source]
    return None


# Pre-linked extracts (``cohort synth --layout prelinked``) -----------------------------------

PRELINKED_REMOVED = (
    "first_name",
    "surname",
    "date_of_birth",
    "postcode",
    "nhs_number",
    "upn",
    "la_child_id",
)  # fmt: skip (the contracts' PRELINKED_REMOVED, not imported)
PROVIDER_LOWER_SHARE = 0.05  # share of persons the provider matched with less than 100%


def provider_pseudonym(person_id: int, seed: int) -> str:
    """The provider's pseudonymous id of a true person: keyed (HMAC-SHA256 under a key from the
    seed), never the raw id."""
    import hashlib
    import hmac

    key = f"synthetic-provider-{seed}".encode()
    return hmac.new(key, str(person_id).encode(), hashlib.sha256).hexdigest()[:20]


def _week_of_birth(value: str) -> str:
    """The Monday of an ISO date's week; anything else (a defect) as it is."""
    try:
        d = date.fromisoformat(value)
    except ValueError:
        return value
    return date.fromordinal(d.toordinal() - d.weekday()).isoformat()


def write_prelinked(out: Path, seed: int, lower_share: float = PROVIDER_LOWER_SHARE) -> None:
    """Rewrite a native CSV world in place as a pre-linked delivery, as a research environment
    hands it out: every row with its person's provider pseudonym (from the truth), a link status
    and a match percentage (100, or 80-99 on every record of ``lower_share`` of persons, as
    a person with poor identifiers matches poorly everywhere); the identifiers
    removed, the date of birth replaced by its week. Rows and defects (malformed lines,
    duplicates) stay as they were. ``truth/provider_links.parquet`` records what was written;
    delivery.json says ``"linkage": "provider"`` and ``"layouts": ["prelinked"]``."""
    truth = pl.read_parquet(out / "truth" / "record_person.parquet")
    owner = {(s, r): int(p) for s, r, p in truth.iter_rows()}
    rng = np.random.default_rng(np.random.SeedSequence([seed, 23]))
    n_persons = int(truth["person_id"].max()) + 1  # type: ignore[arg-type]
    person_pct = np.where(
        rng.random(n_persons) < lower_share, rng.integers(80, 100, n_persons), 100
    )
    written: list[tuple[str, str, str, str, float]] = []
    for source in dict.fromkeys(truth["source"].to_list()):
        path = out / f"{source}.csv"
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        header = rows[0]
        keep = [i for i, h in enumerate(header) if h not in PRELINKED_REMOVED]
        dob = header.index("date_of_birth") if "date_of_birth" in header else None
        rid = header.index("record_id")
        new_header = [header[rid], "person_pseudonym", "link_status", "match_percentage"]
        new_header += ["week_of_birth"] if dob is not None else []
        tmp = path.with_suffix(".prelinked.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(new_header + [header[i] for i in keep if i != rid])
            for row in rows[1:]:
                person = owner.get((source, row[rid])) if len(row) > rid else None
                p = int(person_pct[person]) if person is not None else 0
                alf = provider_pseudonym(person, seed) if person is not None else ""
                status = "0" if not alf else "1" if p == 100 else "4"  # none / full / below 100%
                line = [row[rid] if len(row) > rid else "", alf, status, str(int(p))]
                line += (
                    [_week_of_birth(row[dob]) if len(row) > dob else ""] if dob is not None else []
                )
                line += [row[i] for i in keep if i != rid and i < len(row)]
                line += row[len(header) :]  # a malformed line keeps its extra cells
                w.writerow(line)
                written.append((source, line[0], alf, status, float(p)))
        tmp.replace(path)
    pl.DataFrame(
        written,
        schema={"source": pl.String, "record_id": pl.String, "person_pseudonym": pl.String,
                "link_status": pl.String, "match_percentage": pl.Float64},
        orient="row",
    ).write_parquet(out / "truth" / "provider_links.parquet", statistics=False)  # fmt: skip
    meta_path = out / "delivery.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta.update(layouts=[PRELINKED], linkage="provider")
    meta_path.write_text(json.dumps(meta, sort_keys=True) + "\n", encoding="utf-8")
