"""Run configs: dataclasses read from TOML files and `--key value` overrides."""

from __future__ import annotations

import dataclasses
import json
import os


class RunConfig:
    """Shared behaviour of the recipe configs (dataclasses that inherit this)."""

    def update(self, values: dict):
        """A copy with `values` (strings are converted to each field's type)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        converted = {}
        for key, value in values.items():
            key = key.replace("-", "_")
            if key not in fields:
                raise ValueError(f"Unknown setting {key!r}; known: {sorted(fields)}.")
            converted[key] = _convert(value, getattr(self, key), key)
        return dataclasses.replace(self, **converted)

    def to_toml(self) -> str:
        """The config as flat TOML (JSON scalars are valid TOML values)."""
        return "".join(
            f"{key} = {json.dumps(value)}\n"
            for key, value in dataclasses.asdict(self).items()
            if value is not None
        )

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, overrides: dict | None = None):
        """Defaults, then the TOML file at `path`, then `overrides`."""
        config = cls()
        if path is not None:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            with open(path, "rb") as f:
                config = config.update(tomllib.load(f))
        return config.update(overrides or {})


def _convert(value, default, key: str):
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        return type(default)(value)
    except ValueError:
        raise ValueError(f"{key} must be a {type(default).__name__}, got {value!r}.") from None
