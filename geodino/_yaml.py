"""Reading YAML config files: one mapping, or a one-line ConfigError."""

from __future__ import annotations

from pathlib import Path

import yaml

from geodino.errors import ConfigError

__all__ = ["read_mapping"]


def read_mapping(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of options, not a {type(data).__name__}")
    return data
