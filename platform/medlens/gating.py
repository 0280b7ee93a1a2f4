"""Validation gating: run only plugins whose weights passed a locked validation protocol.

``medlens validate`` registers each plugin's weights in an MLflow Model Registry (one
registered model per plugin, :func:`registered_model_name`; one version per weights
sha256, tagged ``weights_sha256``) and sets the alias ``validated`` only when every
criterion of the protocol passed. With ``require_validated = true`` in the host
configuration (``[validation]`` table), the host refuses a plugin unless the registry's
``validated`` version carries the sha256 of the weights about to be loaded.

The registry is read on each check (it is small and a decision must see the latest
alias); MLflow is imported only when a check runs, never at start-up.

A plugin without weights (a measurement's deterministic code) is validated by version: its
registry version is keyed ``no-weights@<version>`` (:func:`registry_key`), so a validation
of one release never opens the gate for the next.
"""

from __future__ import annotations

from dataclasses import dataclass

from medlens.errors import PluginError

__all__ = [
    "VALIDATED_ALIAS",
    "NotValidatedError",
    "ValidationStatus",
    "check_validated",
    "registered_model_name",
    "registry_key",
    "validation_status",
]

#: Alias of the registry version whose weights passed validation.
VALIDATED_ALIAS = "validated"


class NotValidatedError(PluginError):
    """The plugin's weights have no ``validated`` version in the registry."""


def registered_model_name(plugin_id: str) -> str:
    """The registered model of a plugin, e.g. ``medlens-ct-abdomen-seg``."""
    return f"medlens-{plugin_id}"


def registry_key(weights_sha256: str | None, plugin_version: str) -> str:
    """What a registry version is found by: the weights' sha256, else the plugin version.

    Without weights the code is the model: keying by version alone keeps a validation of
    0.2.0 from validating 0.3.0 (a bare ``none`` key validated every release at once).
    """
    return weights_sha256 or f"no-weights@{plugin_version}"


@dataclass(frozen=True)
class ValidationStatus:
    """What the registry says about one plugin's weights.

    Attributes:
        validated: Whether the ``validated`` alias points at a version with these weights.
        summary: One line for ``medlens plugins list`` (e.g. ``validated (v3)``).
    """

    validated: bool
    summary: str


def validation_status(
    plugin_id: str, weights_sha256: str | None, registry_uri: str, *, version: str
) -> ValidationStatus:
    """Look the weights (or, without weights, the version) up in the registry (never raises)."""
    sha = registry_key(weights_sha256, version)
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover - mlflow is a host dependency
        return ValidationStatus(False, "unknown (mlflow not installed)")
    name = registered_model_name(plugin_id)
    try:
        client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
        mv = client.get_model_version_by_alias(name, VALIDATED_ALIAS)
    except MlflowException:
        mv = None
    except Exception as e:  # an unreachable registry is a status, not a crash
        return ValidationStatus(False, f"unknown (registry: {type(e).__name__})")
    if mv is not None and (mv.tags or {}).get("weights_sha256") == sha:
        return ValidationStatus(True, f"validated (v{mv.version})")
    if mv is not None:
        return ValidationStatus(False, f"not validated (validated v{mv.version} has other weights)")
    return ValidationStatus(False, "not validated")


def check_validated(
    plugin_id: str, weights_sha256: str | None, registry_uri: str | None, *, version: str
) -> None:
    """Refuse weights (or a weightless version) without a ``validated`` registry version.

    Raises:
        NotValidatedError: One line saying why (no registry, not validated, other weights).
    """
    if not registry_uri:
        raise NotValidatedError(
            plugin_id, "require_validated is on but no registry_uri is configured"
        )
    status = validation_status(plugin_id, weights_sha256, registry_uri, version=version)
    if not status.validated:
        what = f"weights {weights_sha256[:12]}… are" if weights_sha256 else f"version {version} is"
        raise NotValidatedError(plugin_id, f"{what} {status.summary}; run `medlens validate` first")
