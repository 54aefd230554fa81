"""The docs cannot go stale: generated dictionary, every CLI command documented, no dead links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKDOWN_FILES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code (links there are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's heading anchor: markup dropped, lower case, punctuation removed, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set(HTML_ANCHOR.findall(text))
    for heading in HEADING.findall(text):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path) -> list[str]:
    text = _prose(path.read_text(encoding="utf-8"))
    return INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)


def test_data_dictionary_is_generated_from_the_contracts() -> None:
    from schemas.dictionary import data_dictionary_markdown

    committed = (DOCS / "data_dictionary.md").read_text(encoding="utf-8")
    assert committed == data_dictionary_markdown(), (
        "docs/data_dictionary.md is stale: regenerate it with "
        "`uv run --locked python -m schemas.dictionary > docs/data_dictionary.md`"
    )


def test_data_dictionary_lists_every_contract_column_and_code_list() -> None:
    from schemas.contracts import CODELIST_DIR, SOURCES, codelist_version

    text = (DOCS / "data_dictionary.md").read_text(encoding="utf-8")
    assert codelist_version() in text
    for contract in SOURCES.values():
        section = text.split(f"\n## {contract.name}\n", 1)
        assert len(section) == 2, f"no section for source {contract.name}"
        body = section[1].split("\n## ", 1)[0]
        for col in contract.columns:
            row = f"| `{col.name}` | {col.dtype} |"
            assert row in body, f"{contract.name}.{col.name} missing from the data dictionary"
            if col.role == "identifier":
                line = next(ln for ln in body.splitlines() if ln.startswith(row))
                assert "linkage zone only" in line
        assert ", ".join(f"`{k}`" for k in contract.primary_key) in body
        for rule in contract.rules:
            assert f"`{rule.name}`" in body
    for p in CODELIST_DIR.glob("*.csv"):
        assert f"### Code list: {p.stem}\n" in text


def test_every_cli_command_is_documented_in_operations() -> None:
    from orchestration.cli import app

    names = [c.name for c in app.registered_commands]
    assert len(names) >= 8
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    missing = [n for n in names if not re.search(rf"\bcohort {re.escape(str(n))}\b", text)]
    assert not missing, f"docs/operations.md does not mention: {missing}"


@pytest.mark.parametrize("path", MARKDOWN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(path: Path) -> None:
    broken = []
    for target in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("//"):
            continue  # absolute URL (https:, mailto:, ...)
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"


def test_link_checker_finds_links() -> None:
    """Guard against a regex that silently matches nothing."""
    sample = ROOT / "docs" / "data_dictionary.md"
    links = _links(sample)
    assert "validation.md" in links
    assert "#code-list-sex" in links
    assert "code-list-sex" in _anchors(sample)


CODE_PATH = re.compile(r"`((?:[a-z_]+/)+[A-Za-z0-9_.-]+\.(?:py|sh))(?::\w+)?`")


@pytest.mark.parametrize("path", MARKDOWN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_code_paths_in_docs_exist(path: Path) -> None:
    """A source path written in the docs (`orchestration/study_flow.py`, `linkage/link.py:x`)
    names a file that exists: moving a module means updating the docs that point to it. Run
    folder paths (`RUN/...`, `cohort/study_config.yaml`) are not source files and are skipped."""
    text = path.read_text(encoding="utf-8")
    stale = sorted(
        {
            p
            for p in CODE_PATH.findall(text)
            if p.split("/", 1)[0] in _source_roots() and not (ROOT / p).exists()
        }
    )
    assert not stale, f"{path.relative_to(ROOT)} names files that do not exist: {stale}"


def _source_roots() -> set[str]:
    from ground import PROJECT_PACKAGES

    return {*PROJECT_PACKAGES, "tests", "benchmarks", "scripts", "notebooks", "pipelines"}


def test_readme_architecture_names_every_package() -> None:
    """The README's architecture section (folder table and package picture) names every
    package of the project and no folder that does not exist."""
    from ground import PROJECT_PACKAGES

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture and data flow", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)/` \|", section, re.MULTILINE)
    picture = re.search(r"```mermaid\n(.*?)```", section, re.DOTALL)
    assert picture, "no package picture (a mermaid block) in the architecture section"
    missing = [p for p in PROJECT_PACKAGES if p not in rows]
    assert not missing, f"README folder table does not list: {missing}"
    absent = [p for p in PROJECT_PACKAGES if f"{p}/" not in picture.group(1)]
    assert not absent, f"README package picture does not show: {absent}"
    gone = [r for r in rows if not (ROOT / r).is_dir()]
    assert not gone, f"README folder table lists folders that do not exist: {gone}"


def test_readme_cli_table_lists_every_command_and_option() -> None:
    """Every `cohort` command is a row of the README's CLI table, and each of its options is
    in the table."""
    from typer.main import get_command

    from orchestration.cli import app

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The CLI", 1)[1].split("\n## ", 1)[0]
    rows = {m[1]: m[0] for m in re.finditer(r"^\| `cohort ([\w-]+).*$", section, re.M)}
    assert "--version" in rows, "README CLI table has no `cohort --version` row"
    group = get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert name in rows, f"README CLI table has no row for `cohort {name}`"
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--") and opt != "--help":
                    assert opt in section, f"README CLI table does not show `cohort {name} {opt}`"


def test_readme_first_screen_and_history_in_docs() -> None:
    """The first screen says what it is, gives the two commands, what you get and where to go
    next; the dated measurement tables live in docs/benchmarks.md, not the README."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first = "\n".join(readme.splitlines()[:30])
    for needle in ("make run", "cohort run", "What you get", "Where next", "report.html"):
        assert needle in first, needle
    for heading in ("## Results against the synthetic truth", "## Performance", "## Known limits"):
        assert heading in readme, heading
    assert "<!-- bench:start -->" not in readme  # make bench writes docs/benchmarks.md
    assert "<!-- bench:start -->" in (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    for section in ("## Results against the synthetic truth", "## Performance"):
        body = readme.split(section, 1)[1].split("\n## ", 1)[0]
        assert "\n|" not in body, f"{section}: tables belong in docs/benchmarks.md"
        assert "docs/benchmarks.md" in body
