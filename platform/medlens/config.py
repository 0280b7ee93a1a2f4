"""Host configuration: which plugins to load, read from TOML.

Example ``medlens.toml``::

    [plugins]
    allow = ["ct-abdomen-seg", "volume-measure"]   # omit to allow all
    block = ["some-plugin"]

    # A MONAI bundle the hospital already has, run as a plugin without new code.
    # The sha256 pins the whole directory (``medlens plugins pin-bundle DIR`` prints it).
    [[bundles]]
    path = "/models/spleen_ct_segmentation"   # relative paths resolve beside this file
    sha256 = "9f2c…"
    id = "spleen-ct"                          # optional; default: the bundle's name
    manifest = { body_part = "ABDOMEN" }      # optional manifest field overrides

    # Run only weights that passed `medlens validate` (MLflow registry alias `validated`).
    [validation]
    require_validated = true                  # default: on for `watch` when a registry is set
    registry_uri = "sqlite:////srv/medlens/mlflow.db"

    # Gantry-tilted CT: correct by resampling instead of refusing (per plugin id, or "*").
    [tilt]
    ct-abdomen-seg = "resample"

    # Heatmap Secondary Captures: JPEG baseline (default, marked lossy) or uncompressed.
    [outputs]
    heatmap_sc = "uncompressed"
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medlens.errors import ConfigError

__all__ = [
    "BundleConfig",
    "HostConfig",
    "OutputsConfig",
    "PluginsConfig",
    "ValidationConfig",
    "load_config",
]

#: Environment variable naming a configuration file.
CONFIG_ENV = "MEDLENS_CONFIG"


class PluginsConfig(BaseModel):
    """Allowlist and blocklist of plugin ids."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    allow: list[str] | None = Field(default=None, description="Only these ids, if given.")
    block: list[str] = Field(default_factory=list, description="Never these ids.")


class BundleConfig(BaseModel):
    """A MONAI bundle directory registered as a plugin, pinned by its sha256."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    path: Path = Field(description="The bundle directory (configs/, models/).")
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="sha256 of the directory's files, pinned."
    )
    id: str | None = Field(default=None, description="Plugin id [the bundle's name, slugified].")
    manifest: dict[str, Any] = Field(
        default_factory=dict, description="Manifest fields to override (body_part, selection)."
    )


class ValidationConfig(BaseModel):
    """Validation gating (see :mod:`medlens.gating`).

    ``require_validated`` unset means: on for a service (``watch``) when a registry is
    configured, off otherwise.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    require_validated: bool | None = Field(
        default=None,
        description="Refuse plugins whose weights have no `validated` registry version.",
    )
    registry_uri: str | None = Field(
        default=None, description="MLflow registry URI, e.g. 'sqlite:////srv/medlens/mlflow.db'."
    )

    def required(self, *, service: bool) -> bool:
        """Whether the gate applies (``service``: a long-running ``watch`` host)."""
        if self.require_validated is not None:
            return self.require_validated
        return service and self.registry_uri is not None


class OutputsConfig(BaseModel):
    """How results are written."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    heatmap_sc: Literal["jpeg-baseline", "uncompressed"] = Field(
        default="jpeg-baseline",
        description=(
            "Heatmap Secondary Captures: JPEG baseline (quality 95, marked lossy; a display "
            "rendering, about a tenth of the size) or uncompressed RGB, for archives that take "
            "no lossy objects. The heat values are lossless in the Parametric Map either way."
        ),
    )


class HostConfig(BaseModel):
    """Everything configurable about the host."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    bundles: list[BundleConfig] = Field(default_factory=list)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    tilt: dict[str, Literal["refuse", "resample"]] = Field(
        default_factory=dict,
        description="Gantry-tilt policy per plugin id ('*': every plugin), over the manifest's.",
    )
    outputs: OutputsConfig = Field(default_factory=OutputsConfig)


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
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is harmless
    except OSError as e:
        raise ConfigError(f"cannot read configuration {str(path)!r}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"configuration {str(path)!r} is not UTF-8 text (byte {e.start})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"configuration {str(path)!r} is not valid TOML: {e}") from e
    for b in data.get("bundles", []) if isinstance(data.get("bundles"), list) else []:
        if isinstance(b, dict) and isinstance(b.get("path"), str):
            b["path"] = str(path.parent / Path(b["path"]).expanduser())  # abs stays abs
    try:
        return HostConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"configuration {str(path)!r}: {where}: {first['msg']}") from e
