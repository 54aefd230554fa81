"""The delivery folder and its files, checked before and independently of the CSV reader.

* :func:`scan_delivery`: which file holds each source. Only regular files directly inside the
  folder are read: a symlink, a directory, a pipe or a device under an extract's name is refused
  without being opened; a case variant of an extract's name (``Attainment.CSV``) is an error;
  anything else (``attainment_OLD.csv``, ``notes.txt``) is a warning naming it.
* :func:`read_header`: a CSV's header, with a byte-order mark stripped, duplicate columns refused.
* :func:`count_csv_records`: the CSV's physical records, counted from its bytes (a newline ends
  a record only outside double quotes; numpy finds which newlines are inside), so that what the
  reader returned can be checked against what the file holds. A quote left open is an error
  naming its line. :func:`count_blank_lines`: the blank lines the reader skips.
* :func:`transcode_to_utf8`: a copy in UTF-8 of an extract declared in a legacy encoding.

Text from a delivered file (header cells, file names) reaches messages only through
:func:`shown`: control characters replaced, cut to 40 characters, at most five names.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ground.errors import InputDataError
from schemas.contracts import PRELINKED_MODE, PRELINKED_REMOVED, SOURCES, SourceContract

EXTENSIONS = ("csv", "parquet")
# entries of a delivery folder that are expected besides the extracts: the delivery's metadata
# and the synthetic generator's answer key (a folder, never read by validation)
KNOWN_ENTRIES = ("delivery.json", "truth", "adapted")  # adapted/: written by `cohort adapt`
BOM = b"\xef\xbb\xbf"
SCAN_CHUNK_BYTES = 1 << 25  # 32 MiB read at a time
SHOWN_CHARS = 40
SHOWN_NAMES = 5
_QUOTE, _NEWLINE, _CR = ord('"'), ord("\n"), ord("\r")


def shown(text: str) -> str:
    """Delivered text (a header cell, a file name) as safe to put in a message."""
    clean = "".join(ch if ch.isprintable() else "?" for ch in text)
    return clean if len(clean) <= SHOWN_CHARS else clean[: SHOWN_CHARS - 3] + "..."


def shown_names(names: list[str]) -> str:
    """At most a few delivered names, each through :func:`shown`, in backticks."""
    out = [f"`{shown(n)}`" for n in names[:SHOWN_NAMES]]
    if len(names) > SHOWN_NAMES:
        out.append(f"and {len(names) - SHOWN_NAMES} more")
    return ", ".join(out)


# --- the delivery folder ------------------------------------------------------------------------


@dataclass
class Delivery:
    """The extract of each source (``files``) and warnings about the rest of the folder."""

    folder: Path
    files: dict[str, Path]
    warnings: list[str] = field(default_factory=list)


def _refuse_unless_regular(entry: os.DirEntry[str], folder: Path, what: str) -> None:
    """Refuse a symlink or anything but a regular file, from its directory entry only."""
    if entry.is_symlink():
        raise InputDataError(
            f"{shown(entry.name)} in {folder} ({what}) is a symbolic link; delivery files must "
            "be regular files inside the delivery folder: copy the file in instead of linking it"
        )
    if not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
        raise InputDataError(
            f"{shown(entry.name)} in {folder} ({what}) is not a regular file (a folder, pipe or "
            "device); put the extract itself there"
        )
    if Path(os.path.realpath(entry.path)).parent != Path(os.path.realpath(folder)):
        raise InputDataError(
            f"{shown(entry.name)} in {folder} ({what}) resolves outside the delivery folder; "
            "copy the file in"
        )


def scan_delivery(folder: Path) -> Delivery:
    """Find each source's extract; refuse unsafe or misnamed ones, warn about the others.

    Reads directory entries only: no file is opened here."""
    expected = {f"{c.file_stem}.{ext}": c for c in SOURCES.values() for ext in EXTENSIONS}
    by_lower = {name.lower(): name for name in expected}
    found: dict[str, list[Path]] = {s: [] for s in SOURCES}
    unexpected: list[str] = []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    names = {e.name for e in entries}
    for entry in entries:
        name = entry.name
        if name in expected:
            contract = expected[name]
            _refuse_unless_regular(entry, folder, f"extract of source `{contract.name}`")
            found[contract.name].append(folder / name)
        elif name.lower() in by_lower:
            canonical = by_lower[name.lower()]
            raise InputDataError(
                f"{shown(name)} in {folder} looks like the extract of source "
                f"`{expected[canonical].name}` but extract names are exact (lower case): "
                f"rename it to {canonical}"
                + (f" (or remove it: {canonical} is there too)" if canonical in names else "")
            )
        elif name == "delivery.json":
            _refuse_unless_regular(entry, folder, "delivery metadata")
        elif name in KNOWN_ENTRIES:
            continue
        else:
            unexpected.append(name)
    files: dict[str, Path] = {}
    for contract in SOURCES.values():
        paths = found[contract.name]
        if not paths:
            raise InputDataError(
                f"no extract for source `{contract.name}` in {folder}: expected "
                f"{contract.file_stem}.csv or {contract.file_stem}.parquet"
            )
        if len(paths) > 1:
            raise InputDataError(
                f"two extracts for source `{contract.name}` in {folder} ({paths[0].name} and "
                f"{paths[1].name}); keep one"
            )
        files[contract.name] = paths[0]
    warnings = []
    if unexpected:
        warnings.append(
            f"{len(unexpected)} file(s) in the delivery folder not read, not an extract name "
            f"(<source>.csv or <source>.parquet, lower case): {shown_names(unexpected)}; "
            "move them out of the delivery folder"
        )
    return Delivery(folder, files, warnings)


# --- a CSV's header -----------------------------------------------------------------------------


def check_encoding(codec: str) -> str:
    """The canonical name of a declared encoding; it must exist and keep ASCII as one byte each
    (so that commas, quotes and newlines are the bytes the counters look for)."""
    try:
        name = codecs.lookup(codec).name
    except LookupError:
        raise ValueError(f"unknown encoding {codec!r} (a Python codec name, e.g. cp1252)") from None
    if ',"\n'.encode(name) != b',"\n':
        raise ValueError(
            f"encoding {codec!r} does not store ASCII as single bytes (UTF-16/32?); re-export "
            "the extract as UTF-8"
        )
    return name


class IdentifierInPrelinkedDelivery(InputDataError):
    """A pre-linked delivery (``"linkage": "provider"``) carries a personal identifier column."""


# header names read as a personal identifier in a pre-linked delivery: the contracts' names and
# common spellings of the statutory returns (lower case, without spaces, dots or underscores)
IDENTIFIER_SPELLINGS = frozenset(
    {n.replace("_", "") for n in PRELINKED_REMOVED}
    | {"forename", "firstname", "givenname", "lastname", "familyname", "name", "fullname",
       "dob", "birthdate", "personbirthdate", "nhsno", "newnhsno", "nhs", "homeadd",
       "homepost", "postcodedistrict", "uniquepupilnumber", "child", "childid"}
)  # fmt: skip


def linkage_mode(folder: Path) -> str:
    """How a delivery is linked: ``"identifiers"`` (by this pipeline, the default) or
    ``"provider"`` (pre-linked: delivery.json says ``"linkage": "provider"``)."""
    meta = folder / "delivery.json"
    if not meta.is_file():
        return "identifiers"
    try:
        declared = json.loads(meta.read_text(encoding="utf-8")).get("linkage", "identifiers")
    except (ValueError, AttributeError):
        raise InputDataError(
            f"{meta} is not a JSON object; fix or remove it (it declares the layout and the "
            "linkage mode)"
        ) from None
    if declared not in ("identifiers", PRELINKED_MODE):
        raise InputDataError(
            f'{meta}: "linkage" must be "identifiers" or "{PRELINKED_MODE}" (pre-linked '
            f"extracts), not {shown(str(declared))}"
        )
    return str(declared)


def refuse_identifier_columns(header: list[str], where: str) -> None:
    """A pre-linked delivery carries no identifier: the first such column is named (never a
    value) and nothing is written."""
    for name in header:
        if "".join(ch for ch in name.lower() if ch.isalnum()) in IDENTIFIER_SPELLINGS:
            raise IdentifierInPrelinkedDelivery(
                f"{where}: column {shown(name)} is a personal identifier, and this delivery is "
                f'pre-linked (delivery.json "linkage": "{PRELINKED_MODE}"), which carries none; '
                "nothing was written: ask the provider for the extract without it"
            )


def read_header(path: Path, contract: SourceContract, encoding: str = "utf-8") -> list[str]:
    """The header of a CSV: first line, byte-order mark stripped, cells unquoted and trimmed."""
    where = f"{path.name} (source `{contract.name}`)"
    with path.open("rb") as fh:
        first = fh.readline(1 << 20)
    if not first:
        raise InputDataError(f"{where} is an empty file")
    if first.startswith(BOM):
        first = first[len(BOM) :]
    line = first.rstrip(b"\r\n")
    if b"\r" in line:
        raise InputDataError(
            f"{where} ends its lines with a carriage return alone (old Mac line ends); "
            "re-export it with LF or CRLF line ends"
        )
    try:
        text = line.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InputDataError(
            f"{where} is not {encoding}: invalid byte at offset {exc.start} (line 1); re-export "
            "the file as UTF-8 or declare its encoding (`encodings` in the validation settings)"
        ) from None
    if "," not in text:
        for delim in (";", "\t", "|"):
            if delim in text:
                raise InputDataError(
                    f"{where} uses {delim!r} as delimiter; extracts must be comma-separated"
                )
    header = [h.strip() for h in next(csv.reader([text]))]
    refuse_duplicate_columns(header, where, contract)
    return header


def refuse_duplicate_columns(header: list[str], where: str, contract: SourceContract) -> None:
    """A column named twice is an error naming it, when the first line is a header: one that
    holds none of the contract's columns may be a data row (a file exported without its
    header), whose repeated cells (two equal dates) must not be echoed; the contract check then
    says the header is missing."""
    if not set(header) & set(contract.column_names):
        return
    repeated = sorted(h for h, n in Counter(header).items() if n > 1)
    if repeated:
        raise InputDataError(
            f"{where}: column(s) {shown_names(repeated)} appear more than once in the header; "
            "each column must appear once: fix the header or re-export the file"
        )


# --- physical records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CsvRecords:
    """Records of a CSV counted from its bytes, the header excluded."""

    records: int  # data lines: newlines outside quotes (+1 for a last line without one)
    nul_bytes: bool  # a NUL byte anywhere in the file


def count_csv_records(path: Path, contract: SourceContract, *, utf8: bool = True) -> CsvRecords:
    """Count a CSV's records independently of the reader; check it is UTF-8 on the way
    (``utf8=False``: a declared ASCII-compatible legacy encoding, checked when transcoding).

    A newline ends a record only when the number of double quotes before it is even (RFC 4180);
    so a newline after an odd number is inside a quoted value: either a quote left open (the
    reader would swallow the lines after it into one value) or a value spanning lines, which
    extracts must not have. Either is an error naming the line where the quote opened.

    One pass over 32 MiB chunks: newlines counted with ``bytes.count``; only a chunk holding a
    quote (or inside an open one) has its newline and quote positions taken with numpy, to
    find a newline preceded by an odd number of quotes. Blank lines are counted as records
    here (see :func:`count_blank_lines`)."""
    where = f"{path.name} (source `{contract.name}`)"
    newlines = 0  # newline bytes so far
    quotes = 0  # quote bytes so far (only the parity matters)
    nul_bytes = False
    last_newline = -1  # absolute offset of the last newline seen
    offset = 0
    utf8_tail = b""
    with path.open("rb") as fh:
        while chunk := fh.read(SCAN_CHUNK_BYTES):
            if utf8:
                utf8_tail = _check_utf8(utf8_tail, chunk, offset, newlines, where)
            if quotes & 1 or b'"' in chunk:
                data = np.frombuffer(chunk, dtype=np.uint8)
                nl = np.flatnonzero(data == _NEWLINE)
                qpos = np.flatnonzero(data == _QUOTE)
                odd = (quotes + np.searchsorted(qpos, nl)) & 1
                if odd.any():
                    raise InputDataError(
                        f"{where}: reading went wrong at line {newlines + int(np.argmax(odd)) + 1}"
                        ": an unbalanced double quote (a quote opened on that line is not closed "
                        "on it, so the lines after it would be read as one value); fix or "
                        "re-export the file"
                    )
                quotes += int(qpos.size)
            n_newlines = chunk.count(b"\n")
            if n_newlines:
                newlines += n_newlines
                last_newline = offset + chunk.rindex(b"\n")
            nul_bytes = nul_bytes or b"\x00" in chunk
            offset += len(chunk)
    if utf8_tail:
        raise InputDataError(
            f"{where} is not UTF-8: the file ends inside a multi-byte character (line "
            f"{newlines + 1}); re-export the file as UTF-8"
        )
    if quotes & 1:
        raise InputDataError(
            f"{where}: reading went wrong at line {newlines + 1}: an unbalanced double quote "
            "(a quote opened on the last line is never closed); fix or re-export the file"
        )
    lines = newlines + (offset - last_newline - 1 > 0)  # a last line without a newline
    return CsvRecords(max(lines - 1, 0), nul_bytes)  # the first line is the header


def count_blank_lines(path: Path) -> int:
    """Empty lines (``\\n`` or ``\\r\\n`` alone) of a CSV: the reader skips them. Counted only
    when the reader returned fewer records than :func:`count_csv_records` found."""
    blank = 0
    last_newline = -1
    previous = _NEWLINE  # the byte before the chunk
    offset = 0
    with path.open("rb") as fh:
        while chunk := fh.read(SCAN_CHUNK_BYTES):
            data = np.frombuffer(chunk, dtype=np.uint8)
            nl = np.flatnonzero(data == _NEWLINE)
            if nl.size:
                starts = np.empty_like(nl)
                starts[0] = last_newline - offset + 1
                starts[1:] = nl[:-1] + 1
                length = nl - starts
                before = np.where(nl > 0, data[np.maximum(nl - 1, 0)], previous)
                blank += int(np.count_nonzero((length == 0) | ((length == 1) & (before == _CR))))
                last_newline = offset + int(nl[-1])
            previous = int(data[-1])
            offset += len(chunk)
    if offset - last_newline - 1 == 1 and previous == _CR:  # a last line holding "\r" only
        blank += 1
    return blank


def _check_utf8(tail: bytes, chunk: bytes, offset: int, newlines: int, where: str) -> bytes:
    """Check one chunk is UTF-8; return the bytes of a character cut by its end (else b"").

    ``tail``: the previous chunk's cut character; ``offset``: the chunk's offset in the file;
    ``newlines``: newlines before the chunk."""
    block, block_start = tail + chunk, offset - len(tail)
    if offset == 0 and block.startswith(BOM):
        block, block_start = block[len(BOM) :], len(BOM)
    try:
        block.decode("utf-8")
        return b""
    except UnicodeDecodeError as exc:
        if exc.start >= len(block) - 3 and exc.reason == "unexpected end of data":
            return block[exc.start :]
        line_no = newlines + block[: exc.start].count(b"\n") + 1
        raise InputDataError(
            f"{where} is not UTF-8: invalid byte at offset {block_start + exc.start} "
            f"(line {line_no}); re-export the file as UTF-8 or declare its encoding "
            "(`encodings` in the validation settings)"
        ) from None


# --- legacy encodings ---------------------------------------------------------------------------


def transcode_to_utf8(path: Path, contract: SourceContract, encoding: str, dest: Path) -> Path:
    """Write ``path`` decoded from ``encoding`` to ``dest`` as UTF-8 (mode 0600); a byte the
    encoding does not define is an error naming its line. The caller deletes ``dest``."""
    where = f"{path.name} (source `{contract.name}`)"
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    newlines = 0
    first = True
    with path.open("rb") as src, os.fdopen(fd, "wb") as out:
        while True:
            chunk = src.read(SCAN_CHUNK_BYTES)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                line = newlines + chunk[: max(exc.start, 0)].count(b"\n") + 1
                raise InputDataError(
                    f"{where} is not {encoding} as declared: a byte it does not define near "
                    f"line {line}; check the declared encoding or re-export the file as UTF-8"
                ) from None
            if first and text.startswith("\ufeff"):
                text = text[1:]
            first = first and not text
            out.write(text.encode("utf-8"))
            newlines += chunk.count(b"\n")
            if not chunk:
                break
    return dest
