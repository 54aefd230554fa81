"""Reading the project's YAML files (scenarios, study configs, run settings) with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ground.errors import ConfigError


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The mapping of keys to values in a YAML file (an empty file is an empty mapping).

    A missing file, invalid YAML or a document that is not a mapping is a :class:`ConfigError`
    naming ``what`` (e.g. "study config") and the path."""
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    except ValueError as exc:  # YAML reads an unquoted 2024-31-08 as a date and fails
        raise ConfigError(
            f"{what} {path}: a value is not valid ({exc}); dates are YYYY-MM-DD"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys to values")
    return data
