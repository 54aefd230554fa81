"""The import contract (pyproject.toml ``[tool.importlinter]``, also run by ``make lint``) and
the rule that no private name crosses a module boundary.

Imports point down: orchestration (the only code that imports Prefect) > evaluation (reads the
synthetic truth) > the stages (validation, linkage, cohort, models, synthetic_data; none
imports another) > schemas > ground."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from ground import PROJECT_PACKAGES as PACKAGES

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contract_is_kept() -> None:
    r = _lint_imports(ROOT)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_the_import_contract_catches_an_upward_import(tmp_path: Path) -> None:
    """The contract is not vacuous: a copy of the project where the ground layer imports the
    orchestration layer, and a stage imports another stage, breaks it."""
    # Only the Python sources: import-linter reads nothing else, and other files in the live
    # tree (bytecode being written by a parallel worker) may come and go during the copy.
    for package in PACKAGES:
        for source in (ROOT / package).rglob("*.py"):
            copy = tmp_path / source.relative_to(ROOT)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, copy)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "ground" / "db.py").open("a", encoding="utf-8") as f:
        f.write("\nfrom orchestration import state  # noqa\n")
    with (tmp_path / "cohort" / "config.py").open("a", encoding="utf-8") as f:
        f.write("\nimport linkage.settings  # noqa\n")

    r = _lint_imports(tmp_path)

    assert r.returncode != 0
    assert "Layers: orchestration > evaluation > stages > schemas > ground BROKEN" in r.stdout
    assert "ground.db -> orchestration.state" in r.stdout
    assert "The stages do not import each other BROKEN" in r.stdout
    assert "cohort.config -> linkage.settings" in r.stdout


def _private_names_imported_across_modules() -> set[tuple[str, str, str]]:
    """(file, module, name) for each ``from pkg.mod import _name`` and each ``mod._name`` on an
    imported project module, in the project's packages. Dunder names are not private."""
    found: set[tuple[str, str, str]] = set()

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=where)
            modules: dict[str, str] = {}  # local name -> project module it is bound to
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    if node.module.split(".")[0] not in PACKAGES:
                        continue
                    for alias in node.names:
                        if private(alias.name):
                            found.add((where, node.module, alias.name))
                        modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.split(".")[0] in PACKAGES and alias.asname:
                            modules[alias.asname] = alias.name
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and private(node.attr)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in modules
                ):
                    found.add((where, modules[node.value.id], node.attr))
    return found


def test_no_private_name_is_imported_across_modules() -> None:
    crossing = _private_names_imported_across_modules()
    assert not crossing, (
        "private names used outside their module (make them public, or move the code): "
        + "; ".join(f"{f}: {m}.{n}" for f, m, n in sorted(crossing))
    )
