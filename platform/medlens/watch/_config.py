"""Watch-service settings, read from TOML (top level or a ``[watch]`` table).

Example ``watch.toml``::

    quiet_seconds = 5          # a series is stable after this long with no new instance
    job_timeout_seconds = 900
    memory_limit_mb = 16384
    max_attempts = 3

    [plugins.ct-abdomen-seg]   # per-plugin overrides
    quiet_seconds = 20
    job_timeout_seconds = 1800
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medlens.errors import ConfigError

__all__ = [
    "NodeSettings",
    "PacsTarget",
    "PluginOverrides",
    "WatchConfig",
    "load_watch_config",
    "parse_pacs",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PluginOverrides(_Frozen):
    """Settings one plugin may override; ``None`` keeps the service-wide value."""

    quiet_seconds: float | None = Field(default=None, ge=0)
    job_timeout_seconds: float | None = Field(default=None, gt=0)
    memory_limit_mb: int | None = Field(default=None, ge=64)
    max_attempts: int | None = Field(default=None, ge=1)
    tilt: Literal["refuse", "resample"] | None = Field(
        default=None, description="Gantry-tilted series: refuse or resample (see WatchConfig)."
    )
    enabled: bool = Field(default=True, description="False: never route series to it.")


class PacsTarget(_Frozen):
    """A DICOM node results are sent to by C-STORE (over TLS with ``tls = true``).

    Example (``watch.toml``)::

        [send_to]
        host = "pacs.hospital.org"
        port = 2762
        ae_title = "PACS"
        tls = true
        tls_ca = "/etc/medlens/hospital-ca.pem"   # else the system's CAs
        tls_cert = "/etc/medlens/medlens.pem"     # a client certificate, if the PACS asks
        tls_key = "/etc/medlens/medlens.key"
    """

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    ae_title: str = Field(min_length=1, max_length=16)
    tls: bool = Field(default=False, description="DICOM over TLS (PS3.15 Annex B.1).")
    tls_ca: Path | None = Field(
        default=None,
        description="CA bundle the PACS's certificate is checked against (None: the system's).",
    )
    tls_cert: Path | None = Field(default=None, description="Client certificate (PEM).")
    tls_key: Path | None = Field(default=None, description="Its private key (PEM).")
    tls_server_name: str | None = Field(
        default=None, description="Name on the PACS's certificate (None: host)."
    )

    @model_validator(mode="after")
    def _tls(self) -> PacsTarget:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        given = [k for k in ("tls_ca", "tls_cert", "tls_server_name") if getattr(self, k)]
        if given and not self.tls:
            raise ValueError(f"{', '.join(given)} given without tls = true")
        return self


class NodeSettings(_Frozen):
    """Access control and limits of the C-STORE SCP (the DICOM node)."""

    allowed_calling_aets: list[str] | None = Field(
        default=None,
        description="Calling AE titles accepted (None: any, with a warning at start).",
    )
    require_called_aet: bool = Field(
        default=True, description="Refuse associations not addressed to our AE title."
    )
    max_associations: int = Field(default=8, ge=1, description="Concurrent associations.")
    acse_timeout_seconds: float = Field(default=10.0, gt=0, description="Association setup.")
    dimse_timeout_seconds: float = Field(default=30.0, gt=0, description="One DIMSE message.")
    network_timeout_seconds: float = Field(
        default=15.0, gt=0, description="A silent connection is closed after this long."
    )
    max_pdu_bytes: int = Field(
        default=1024 * 1024, ge=4096, description="Largest PDU we accept (0 is not allowed)."
    )
    open_association_wait_seconds: float = Field(
        default=600.0,
        ge=0,
        description="A series whose association is still open is not run before the "
        "association ends (released: it runs; cut off: it is held), or until this long "
        "after its last instance (a sender that keeps one association open for hours).",
    )
    tls_cert: Path | None = Field(default=None, description="Server certificate (PEM): TLS on.")
    tls_key: Path | None = Field(default=None, description="Its private key (PEM).")
    tls_ca: Path | None = Field(
        default=None, description="CA bundle: when set, peers must present a certificate."
    )

    @model_validator(mode="after")
    def _tls(self) -> NodeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class WatchConfig(_Frozen):
    """Everything configurable about ``medlens watch``."""

    quiet_seconds: float = Field(
        default=5.0, ge=0, description="Series stable after this long with no new instance."
    )
    settle_seconds: float = Field(
        default=1.0, ge=0, description="A file is read once its size and mtime held this long."
    )
    partial_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        description="A file that does not parse is quarantined only once unchanged this long.",
    )
    rescan_seconds: float = Field(
        default=30.0, gt=0, description="Full rescan of the input folder (missed events)."
    )
    tick_seconds: float = Field(default=0.1, gt=0, description="Main-loop period.")
    job_timeout_seconds: float = Field(default=1800.0, gt=0)
    memory_limit_mb: int = Field(
        default=32768, ge=64, description="RSS ceiling of the worker process."
    )
    max_attempts: int = Field(default=3, ge=1, description="Tries per job before it fails.")
    retry_delay_seconds: float = Field(default=5.0, ge=0)
    drain_seconds: float = Field(
        default=60.0, ge=0, description="On SIGTERM, wait this long for the running job."
    )
    max_declared_bytes: int = Field(
        default=4 * 1024**3, gt=0, description="Refuse instances declaring more pixel bytes."
    )
    max_file_bytes: int = Field(
        default=2 * 1024**3,
        gt=0,
        description="Files larger than this are quarantined unread (checked before reading).",
    )
    empty_dir_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Empty sub-folders of the inbox are removed once unchanged this long.",
    )
    ingest_batch: int = Field(default=256, ge=1, description="Instances per state transaction.")
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N or mps.")
    scp_port: int | None = Field(default=None, ge=0, le=65535, description="C-STORE SCP port.")
    scp_host: str = Field(default="127.0.0.1", description="Address the SCP listens on.")
    ae_title: str = Field(default="MEDLENS", min_length=1, max_length=16)
    gap_tolerance: float = Field(
        default=1.5,
        gt=1.0,
        description="A slice gap above this many times the nominal spacing makes a series partial.",
    )
    partial_series: Literal["hold", "publish"] = Field(
        default="hold",
        description="hold: a partial series waits, incomplete, for its missing slices; "
        "publish: it runs and its result says partial.",
    )
    node: NodeSettings = Field(default_factory=NodeSettings, description="The DICOM node.")
    send_to: PacsTarget | None = Field(default=None, description="PACS receiving results.")
    send_attempts: int = Field(
        default=5, ge=1, description="Unused: deliveries retry until send_max_age_seconds."
    )
    send_backoff_seconds: float = Field(
        default=2.0, gt=0, description="First delay after a failed delivery (doubles)."
    )
    send_backoff_max_seconds: float = Field(
        default=300.0, gt=0, description="Longest delay between delivery tries."
    )
    send_max_age_seconds: float | None = Field(
        default=None, gt=0, description="Give up a delivery this old (None: never)."
    )
    workers: int = Field(default=1, ge=1, description="Jobs run at once (worker processes).")
    heartbeat_seconds: float = Field(
        default=5.0, gt=0, description="How often the service records that it is alive."
    )
    tilt: Literal["refuse", "resample"] | None = Field(
        default=None,
        description="Gantry-tilted series: refuse, or correct by resampling; None: the host "
        "config's [tilt] table, else the plugin manifest's input.tilt.",
    )
    plugins: dict[str, PluginOverrides] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ae(self) -> WatchConfig:
        if not self.ae_title.isascii() or "\\" in self.ae_title:
            raise ValueError(f"AE title {self.ae_title!r} must be ASCII without backslash")
        return self

    def for_plugin(self, plugin_id: str) -> PluginOverrides:
        """The overrides of ``plugin_id`` (empty if none)."""
        return self.plugins.get(plugin_id, PluginOverrides())

    def quiet_for(self, plugin_id: str) -> float:
        """Quiet period before ``plugin_id`` runs on a series."""
        v = self.for_plugin(plugin_id).quiet_seconds
        return self.quiet_seconds if v is None else v

    def timeout_for(self, plugin_id: str) -> float:
        """Per-job timeout of ``plugin_id``."""
        v = self.for_plugin(plugin_id).job_timeout_seconds
        return self.job_timeout_seconds if v is None else v

    def memory_for(self, plugin_id: str) -> int:
        """Worker RSS ceiling (MiB) while ``plugin_id`` runs."""
        v = self.for_plugin(plugin_id).memory_limit_mb
        return self.memory_limit_mb if v is None else v

    def tilt_for(self, plugin_id: str) -> str | None:
        """Tilt policy asked for ``plugin_id`` (None: the host's default for it)."""
        v = self.for_plugin(plugin_id).tilt
        return self.tilt if v is None else v

    def attempts_for(self, plugin_id: str) -> int:
        """Tries per job of ``plugin_id``."""
        v = self.for_plugin(plugin_id).max_attempts
        return self.max_attempts if v is None else v


def parse_pacs(text: str) -> PacsTarget:
    """Parse ``HOST:PORT:AET``.

    Raises:
        ConfigError: If the text is not of that form.
    """
    host, sep1, rest = text.rpartition(":")
    host, sep2, port = host.rpartition(":")
    aet = rest
    if not (sep1 and sep2 and host and port.isdigit() and aet):
        raise ConfigError(f"--send-to {text!r} must be HOST:PORT:AET")
    try:
        return PacsTarget(host=host, port=int(port), ae_title=aet)
    except ValidationError as e:
        raise ConfigError(f"--send-to {text!r}: {e.errors()[0]['msg']}") from e


def load_watch_config(path: Path | None, **overrides: object) -> WatchConfig:
    """Read the watch configuration (defaults if ``path`` is None), then apply overrides.

    Args:
        path: TOML file; keys at top level or under ``[watch]``.
        **overrides: Values taking precedence (``None`` values are ignored).

    Raises:
        ConfigError: If the file is unreadable or invalid.
    """
    data: dict[str, object] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is harmless
        except OSError as e:
            raise ConfigError(f"cannot read watch configuration {str(path)!r}: {e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"watch configuration {str(path)!r} is not UTF-8 text (byte {e.start})"
            ) from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"watch configuration {str(path)!r} is not TOML: {e}") from e
        table = raw.get("watch", raw)
        if not isinstance(table, dict):
            raise ConfigError(f"watch configuration {str(path)!r}: [watch] is not a table")
        data.update(table)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return WatchConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"watch configuration: {where}: {first['msg']}") from e
