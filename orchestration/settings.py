"""How each stage of ``cohort run`` runs: one YAML file, one typed section per stage.

The study config (``--config``, :mod:`cohort.config`) says what the study is (window,
exposure, outcomes); these settings say how the stages run (table-check severities, linkage
thresholds and backend, DuckDB memory limits, model designs, disclosure thresholds). Every
section is optional and every key has a default, so an empty file means the defaults::

    validation:            # validation.settings.ValidationSettings
      duckdb_memory_limit: 4GB
    linkage:               # linkage.settings.LinkageSettings
      match_threshold: 0.95
    build:
      duckdb_memory_limit: 4GB
    model:                 # models.ModelSettings
      bootstrap_replicates: 100
      disclosure: {threshold: 10, rounding: 5}

Unknown keys are errors (with the key's path), never silently ignored.

Every command reads this file the same way: ``cohort run --settings FILE`` uses all of it, and
``cohort validate|link|build|model --settings FILE`` each use their own section
(``load_run_settings(FILE).linkage``), with the command's flags put over it
(:func:`with_flags`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ground.config_files import read_yaml_mapping
from ground.db import MemorySize
from ground.errors import ConfigError
from linkage.settings import LinkageSettings
from models import ModelSettings
from validation.settings import ValidationSettings


class BuildSettings(BaseModel):
    """Resources of the cohort build (what it derives is the study config's business)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    duckdb_memory_limit: MemorySize = Field("6GB", description="DuckDB memory limit for the build")


class RunSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    linkage: LinkageSettings = Field(default_factory=LinkageSettings)
    build: BuildSettings = Field(default_factory=BuildSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)

    def stage_yaml(self, stage: str, exclude: set[str] | None = None) -> str:
        """The section a stage runs with, as canonical YAML (for fingerprints and manifests),
        without the keys in ``exclude``."""
        section = getattr(self, stage, None)
        if section is None:
            return ""
        return yaml.safe_dump(section.model_dump(mode="json", exclude=exclude), sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_run_settings(path: str | Path | None) -> RunSettings:
    """The settings in ``path`` (defaults when None); a clear :class:`ConfigError` naming the
    file and the key otherwise."""
    if path is None:
        return RunSettings()
    p = Path(path)
    data = read_yaml_mapping(p, "settings file")
    _refuse_keys_outside_their_section(data, p)
    try:
        return RunSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"settings file {p}: {_problems(exc)}") from None


Section = TypeVar("Section", bound=BaseModel)


def with_flags(section: Section, flags: dict[str, tuple[str, Any]]) -> Section:
    """``section`` with the command-line flags that were given put over it, validated as the
    file is. ``flags`` maps a setting to (flag, value); a value of None means the flag was not
    given. A bad value is a :class:`ConfigError` naming the flag."""
    given = {key: value for key, (_flag, value) in flags.items() if value is not None}
    if not given:
        return section
    try:
        return type(section).model_validate({**section.model_dump(), **given})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            flag, value = flags.get(str(error["loc"][0]), (str(error["loc"][0]), None))
            problems.append(f"{flag} {value}: {error['msg']}")
        raise ConfigError("; ".join(problems)) from None


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())


def _refuse_keys_outside_their_section(data: dict[str, Any], path: Path) -> None:
    """A top-level key that belongs inside a section (e.g. ``min_rows`` from a file written for
    the old ``cohort validate --settings``, which held the validation keys alone) gets an error
    saying which section to move it under."""
    sections = RunSettings.model_fields
    for key in data:
        if key in sections:
            continue
        owners = [
            name
            for name, field in sections.items()
            if isinstance(field.annotation, type)
            and issubclass(field.annotation, BaseModel)
            and key in field.annotation.model_fields
        ]
        if len(owners) == 1:
            raise ConfigError(
                f"settings file {path}: `{key}` is a key of the `{owners[0]}:` section, not a "
                f"section; indent it under `{owners[0]}:` (sections: {', '.join(sections)})"
            )
        if owners:
            raise ConfigError(
                f"settings file {path}: `{key}` is a key of the sections "
                f"{', '.join(f'`{o}:`' for o in owners)}, not a section; indent it under the "
                "one it is for"
            )
