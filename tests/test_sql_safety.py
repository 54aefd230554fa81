"""No text from settings, config or paths reaches SQL unchecked (issue 16, item 2).

Every string field of the run settings and of the study config (found by walking the pydantic
models, so a field added later is tried too) is set to a payload that would, if pasted into
SQL, write ``pwned.csv``. Each payload is either refused when the settings load, or the stage
that uses the field runs and no ``pwned.csv`` appears. A run folder and a delivery folder whose
paths hold a quote (``o'brien``) go through validate, link, build and the truth checks.
"""

from __future__ import annotations

import contextlib
import shutil
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from cohort.build import build_cohort
from cohort.config import DEFAULT_CONFIG, StudyConfig, load_study_config
from evaluation.cohort_truth import cohort_truth_agreement
from evaluation.linkage_truth import evaluate_linkage
from ground.db import DuckDBSettings, connect, memory_size, sql_string
from ground.errors import ConfigError
from ground.run_layout import RunLayout
from linkage import link_run, link_tables
from orchestration.settings import RunSettings, load_run_settings
from tests.conftest import TEST_SECRET
from validation import validate_delivery

Path_ = tuple[str | int, ...]


def _payloads(target: Path) -> list[str]:
    t = str(target)
    return [
        f"4GB'; COPY (SELECT 1 AS x) TO '{t}'; SET memory_limit = '4GB",
        f"4GB\"; COPY (SELECT 1 AS x) TO '{t}'; SET memory_limit = \"4GB",
        f"x') TO '{t}' (FORMAT csv); COPY (SELECT 1 AS x) TO '{t}'; --",
    ]


def _string_fields(model: type[BaseModel], prefix: Path_ = ()) -> Iterator[tuple[Path_, str]]:
    """Every field of ``model`` (recursively) whose value is or holds a string: its path and
    how the payload goes in (``str``, ``list`` or ``dict`` key)."""
    for name, field in model.model_fields.items():
        yield from _typed(field.annotation, (*prefix, name))


def _typed(ann: Any, path: Path_) -> Iterator[tuple[Path_, str]]:
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if a is not type(None):
                yield from _typed(a, path)
        return
    if origin is typing.Annotated:
        yield from _typed(args[0], path)
        return
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        yield from _string_fields(ann, path)
        return
    if origin in (list, tuple) and args:
        inner = args[0]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            yield from _string_fields(inner, (*path, 0))
        elif any(k == "str" for _, k in _typed(inner, ())):
            yield path, "list"
        return
    if origin is dict and args:
        key, value = (any(k == "str" for _, k in _typed(a, ())) for a in args)
        if key or value:
            yield path, "dict:" + "k" * key + "v" * value
        return
    if ann is str or (origin is typing.Literal and all(isinstance(a, str) for a in args)):
        yield path, "str"


def _set(data: dict[str, Any], path: Path_, kind: str, payload: str) -> dict[str, Any]:
    node: Any = data
    for key in path[:-1]:
        node = node[key] if isinstance(key, int) else node.setdefault(key, {})
    if kind.startswith("dict:"):  # the payload as key and / or value, else a plain entry
        flags = kind.removeprefix("dict:")
        value: Any = {
            payload if "k" in flags else "population_register": payload if "v" in flags else 4
        }
    else:
        value = {"str": payload, "list": [payload]}[kind]
    node[path[-1]] = value
    return data


def test_the_walk_finds_the_string_settings() -> None:
    """The enumeration is not empty by accident: it finds the fields known to reach SQL or
    files, and one inside a list of models (the study config's outcomes)."""
    run = {p for p, _ in _string_fields(RunSettings)}
    assert {
        ("validation", "duckdb_memory_limit"),
        ("linkage", "duckdb_memory_limit"),
        ("build", "duckdb_memory_limit"),
        ("linkage", "model_path"),
        ("validation", "extra_columns", "note"),
        ("model", "covariates"),
        ("model", "spline_knots"),
    } <= run
    study = {p for p, _ in _string_fields(StudyConfig)}
    assert {("outcomes", 0, "name"), ("outcomes", 0, "exclude_groups")} <= study


@pytest.fixture(scope="module")
def quoted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1,500-child delivery and its run folder, both under a folder named ``o'brien``:
    validated, linked and built."""
    from synthetic_data import generate_world

    base = tmp_path_factory.mktemp("quoted") / "o'brien"
    data, run = base / "data", base / "run"
    generate_world(n_children=1500, seed=11, out_dir=data)
    layout = RunLayout.at(run)
    validate_delivery(data_dir=data, layout=layout)
    link_run(layout=layout, secret=TEST_SECRET)
    build_cohort(layout=layout, config=load_study_config())
    return run


def test_paths_with_a_quote_go_through_validate_link_build(quoted_run: Path) -> None:
    layout = RunLayout.at(quoted_run)
    base = quoted_run.parent
    assert sorted(p.name for p in base.parent.iterdir()) == ["o'brien"]
    assert sorted(p.name for p in base.iterdir()) == ["data", "run"]  # nothing written beside
    assert layout.analysis_db.exists()
    assert not layout.linkage_scratch_dir.exists()  # removed when the link stage ended
    assert not (layout.tmp_dir / "identifiers").exists()
    ev = evaluate_linkage(layout=layout, truth_dir=base / "data" / "truth")
    assert ev["pair_precision"] > 0.9 and ev["pair_recall"] > 0.9
    agree = cohort_truth_agreement(layout=layout, truth_dir=base / "data" / "truth")
    assert agree["children_checked"] > 0


def test_memory_sizes_are_parsed_and_re_rendered() -> None:
    assert memory_size("4GB") == "4GB"
    assert memory_size(" 1.5 gib ") == "1.5GiB"
    for bad in ("4GB'; SELECT 1", "4", "0GB", "-1GB", "4 GB; x", "", "4GB\n4GB"):
        with pytest.raises(ConfigError, match="not a memory size"):
            memory_size(bad)
    assert sql_string("o'brien") == "'o''brien'"
    for bad in ("a\x00b", "a\nb", "a\rb"):
        with pytest.raises(ConfigError):
            sql_string(bad)


def test_connect_and_link_tables_refuse_an_unparsed_memory_limit(tmp_path: Path) -> None:
    """The db.connect path and link_tables (also reached by Prefect parameters and the
    build's ``memory_limit`` argument, which no settings model checks first)."""
    pwned = tmp_path / "pwned.csv"
    for payload in _payloads(pwned):
        with pytest.raises(ConfigError, match="memory"):
            connect(tmp_path / "x.duckdb", settings=DuckDBSettings(memory_limit=payload))
        with pytest.raises(ConfigError, match="memory"):
            link_tables({"a": {"record_id": ["1"]}}, {"a": {"record_id": "record_id"}}, memory_limit=payload)  # fmt: skip
        # a spill folder with a quote in its name is a parameter, not SQL text
        spill = tmp_path / "it's spill"
        con = connect(tmp_path / "y.duckdb", settings=DuckDBSettings(temp_directory=str(spill)))
        assert con.execute("SELECT current_setting('temp_directory')").fetchone()[0] == str(spill)  # type: ignore[index]
        con.close()
    assert not pwned.exists()


def test_build_refuses_an_unparsed_memory_limit(quoted_run: Path, tmp_path: Path) -> None:
    """``build_cohort(memory_limit=...)`` is what the Prefect build flow's parameter reaches."""
    run = tmp_path / "run"
    shutil.copytree(quoted_run, run)
    pwned = tmp_path / "pwned.csv"
    for payload in _payloads(pwned):
        with pytest.raises(ConfigError, match="memory"):
            build_cohort(layout=RunLayout.at(run), memory_limit=payload)
    assert not pwned.exists()


def _run_stage(section: str, settings: RunSettings, quoted_run: Path, work: Path) -> None:
    """The stage that reads ``section`` of the settings, on a copy of the quoted run; any error
    is fine (the payload is not a sensible value), a written ``pwned.csv`` is not."""
    from models.run import run_models

    run = work / "run"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(quoted_run, run)
    layout = RunLayout.at(run)
    # any failure is fine (a payload is not a sensible value); a written pwned.csv is not
    with contextlib.suppress(Exception):
        if section == "validation":
            validate_delivery(
                data_dir=quoted_run.parent / "data",
                layout=layout,
                settings=settings.validation.model_copy(update={"run_great_expectations": False}),
            )
        elif section == "linkage":
            link_run(layout=layout, settings=settings.linkage, secret=TEST_SECRET)
        elif section == "build":
            build_cohort(layout=layout, memory_limit=settings.build.duckdb_memory_limit)
        elif section == "model":
            run_models(
                layout=layout,
                settings=settings.model.model_copy(update={"bootstrap_replicates": 0}),
            )


def test_injection_through_every_run_settings_string(quoted_run: Path, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned.csv"
    accepted: dict[tuple[str, int], dict[str, Any]] = {}
    refused = []
    for path, kind in _string_fields(RunSettings):
        for i, payload in enumerate(_payloads(pwned)):
            data = _set({}, path, kind, payload)
            f = tmp_path / "settings.yaml"
            f.write_text(yaml.safe_dump(data), encoding="utf-8")
            try:
                load_run_settings(f)
            except ConfigError as e:
                assert ".".join(str(p) for p in path[:2]) in str(e)  # names the key
                refused.append(path)
                continue
            # accepted: gather every accepted field of the section into one run of its stage
            _set(accepted.setdefault((str(path[0]), i), {}), path, kind, payload)
    for (section, _), data in sorted(accepted.items()):
        settings = RunSettings.model_validate(data)
        _run_stage(section, settings, quoted_run, tmp_path)
        assert not pwned.exists(), f"a payload in {section} settings reached SQL"
    # what reaches SQL text is refused at load time, before any work
    for key in ("validation", "linkage", "build"):
        assert (key, "duckdb_memory_limit") in refused
    assert ("linkage", "spark_master") in refused


def test_injection_through_every_study_config_string(quoted_run: Path, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned.csv"
    default = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    run = tmp_path / "run"
    shutil.copytree(quoted_run, run)
    fields = list(_string_fields(StudyConfig))
    assert fields
    for path, kind in fields:
        for payload in _payloads(pwned):
            f = tmp_path / "study.yaml"
            f.write_text(yaml.safe_dump(_set(yaml.safe_load(yaml.safe_dump(default)), path, kind, payload)), encoding="utf-8")  # fmt: skip
            try:
                config = load_study_config(f)
            except ConfigError:
                continue
            with contextlib.suppress(Exception):  # a failure is fine, a written file is not
                build_cohort(layout=RunLayout.at(run), config=config)
            assert not pwned.exists(), f"a payload in study config {path} reached SQL"
