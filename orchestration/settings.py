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
    model:                 # models.stage.ModelSettings
      bootstrap_replicates: 100
      disclosure: {threshold: 10, rounding: 5}

Unknown keys are errors (with the key's path), never silently ignored.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ground.config_files import read_yaml_mapping
from ground.db import MemorySize
from ground.errors import ConfigError
from linkage.settings import LinkageSettings
from models.stage import ModelSettings
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
    """The settings in ``path`` (defaults when None); a clear :class:`ConfigError` otherwise."""
    if path is None:
        return RunSettings()
    p = Path(path)
    data = read_yaml_mapping(p, "settings file")
    try:
        return RunSettings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"settings file {p}: {problems}") from None
