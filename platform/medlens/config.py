"""Host configuration: which plugins to load, read from TOML.

Example ``medlens.toml``::

    [plugins]
    allow = ["ct-abdomen-seg", "volume-measure"]   # omit to allow all
    block = ["some-plugin"]
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medlens.errors import ConfigError

__all__ = ["HostConfig", "PluginsConfig", "load_config"]

#: Environment variable naming a configuration file.
CONFIG_ENV = "MEDLENS_CONFIG"


class PluginsConfig(BaseModel):
    """Allowlist and blocklist of plugin ids."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    allow: list[str] | None = Field(default=None, description="Only these ids, if given.")
    block: list[str] = Field(default_factory=list, description="Never these ids.")


class HostConfig(BaseModel):
    """Everything configurable about the host."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)


def load_config(path: Path | None = None) -> HostConfig:
    """Read the configuration from ``path``, else ``$MEDLENS_CONFIG``, else defaults.

    Raises:
        ConfigError: If the file is missing, not TOML, or has unknown keys.
    """
    if path is None:
        env = os.environ.get(CONFIG_ENV)
        if not env:
            return HostConfig()
        path = Path(env)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read configuration {str(path)!r}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"configuration {str(path)!r} is not valid TOML: {e}") from e
    try:
        return HostConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"configuration {str(path)!r}: {where}: {first['msg']}") from e
