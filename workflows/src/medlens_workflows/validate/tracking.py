"""MLflow: one run per validation, and the Model Registry entry of the weights it judged.

* **Run** (experiment ``medlens-validation``): params (protocol id and fingerprint,
  plugin id/version, weights and dataset sha256, MedLens version), metrics (each
  criterion's value and CI bounds), the report files as artifacts.
* **Registry**: one registered model per plugin (:func:`medlens.gating.registered_model_name`),
  one version per weights sha256 (found by its ``weights_sha256`` tag, ``no-weights@<version>``
  for a plugin without weights; created on first
  validation with the run as its source), tagged ``protocol.<id>`` = ``passed``/``failed``
  (and the fingerprint). The alias ``validated`` is set only when every criterion passed;
  it is what a gated host (``require_validated``) looks for.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from medlens.gating import VALIDATED_ALIAS, registered_model_name, registry_key

#: Version tag naming the protocol whose pass set ``validated`` (its failure takes it back).
VALIDATED_BY = "validated_by"

__all__ = [
    "EXPERIMENT",
    "artifact_location",
    "default_tracking_uri",
    "ensure_store",
    "open_run",
]

#: Experiment holding validation runs.
EXPERIMENT = "medlens-validation"


def default_tracking_uri(out_dir: Path) -> str:
    """``sqlite:///<out>/mlflow.db`` (an absolute path)."""
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def ensure_store(tracking_uri: str) -> None:
    """Create a new SQLite store whole, or not at all.

    MLflow builds a new database's schema in many steps (about 9 s here); a validation
    killed in the middle left a half-built ``mlflow.db`` that every ``--resume`` then
    failed on ("table ... already exists"). The schema is built in a side file, renamed
    into place once complete; side files of a killed creation are removed.

    Creations are serialised by a lock file beside the store: two validations starting
    on one new store removed each other's side file, and the first failed after scoring.
    An existing store is checked to be a usable SQLite database before any case runs (a
    folder or another file there failed only after the last case, after minutes of retries).

    Raises:
        OutputError: The path holds something that is no usable SQLite store.
    """
    import fcntl
    import uuid

    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return
    db = Path(tracking_uri[len(prefix) :])
    with open(db.with_name(f".{db.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        for stale in db.parent.glob(f".{db.name}.*.creating"):
            stale.unlink(missing_ok=True)  # under the lock: no live creation's file
        if db.exists() or db.is_symlink():
            _check_sqlite(db)
            return
        side = db.with_name(f".{db.name}.{uuid.uuid4().hex[:8]}.creating")
        try:
            _create(f"{prefix}{side}")
            os.replace(side, db)
        finally:
            side.unlink(missing_ok=True)


def _create(uri: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_experiments(max_results=1)  # the tracking schema
    client.search_registered_models(max_results=1)  # and the registry's


def _check_sqlite(db: Path) -> None:
    """An existing store: a regular file SQLite can open for writing (one line if not)."""
    import sqlite3

    from medlens.errors import OutputError

    if not db.is_file():
        raise OutputError(f"{db.name!r} is not a regular file, so no SQLite store")
    try:
        # as_uri() percent-encodes: a '#' or '?' in the path stays part of it.
        con = sqlite3.connect(f"{db.absolute().as_uri()}?mode=rw", uri=True, timeout=30)
        try:
            con.execute("PRAGMA schema_version").fetchone()  # reads the header: not a db fails
        finally:
            con.close()
    except sqlite3.Error as e:
        raise OutputError(f"{db.name!r} is no usable SQLite store: {e}") from None


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite store, ``mlartifacts/``.

    MLflow's default for a database store is ``./mlruns`` in the *current directory*:
    a validation's report would land wherever the command was started (or fail there
    if that is read-only), not with its ``--out``. A server (``http://``) decides itself.
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    db = Path(tracking_uri[len(prefix) :])
    return (db.parent / "mlartifacts").resolve().as_uri()


def _metric_name(row: dict[str, Any]) -> str:
    parts = [row["metric"], row.get("label"), row.get("operating_point")]
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", ".".join(str(p) for p in parts if p))


class ValidationRun:
    """An open MLflow run; :meth:`finish` registers the weights and closes it."""

    def __init__(self, tracking_uri: str, run_name: str) -> None:
        import mlflow
        from mlflow import MlflowClient

        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        exp_id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(
                EXPERIMENT, artifact_location=artifact_location(tracking_uri)
            )
        )
        self.run = self.client.create_run(exp_id, run_name=run_name)
        self.run_id: str = self.run.info.run_id
        self._mlflow = mlflow
        self._found = ("", "", "", "")  # register's (model, version, protocol id, fingerprint)
        self._passed = False  # whether set_alias opens the gate
        self._set: tuple[str, str] | None = None  # the alias this run set

    def log(self, params: dict[str, str], metrics: list[dict[str, Any]]) -> None:
        """Log parameters and each criterion's value and CI bounds."""
        for k, v in params.items():
            self.client.log_param(self.run_id, k, v)
        for row in metrics:
            name = _metric_name(row)
            for field in ("value", "ci_low", "ci_high"):
                if row.get(field) is not None:
                    self.client.log_metric(self.run_id, f"{name}.{field}", float(row[field]))

    def register(
        self,
        plugin_id: str,
        weights_sha256: str | None,
        protocol_id: str,
        fp: str,
        passed: bool,
        *,
        version: str,
    ) -> dict[str, Any]:
        """Find or create the version of these weights; tag it; alias it when passed.

        A plugin without weights gets one registry version per plugin version
        (:func:`medlens.gating.registry_key`).
        """
        from mlflow.exceptions import MlflowException

        name = registered_model_name(plugin_id)
        sha = registry_key(weights_sha256, version)
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(
                name, description=f"MedLens plugin {plugin_id!r}: one version per weights sha256"
            )
        found = self.client.search_model_versions(f"name='{name}'")
        mine = [v for v in found if (v.tags or {}).get("weights_sha256") == sha]
        if mine:
            version = str(mine[0].version)
        else:
            mv = self.client.create_model_version(
                name,
                source=f"runs:/{self.run_id}/validation",
                run_id=self.run_id,
                tags={"weights_sha256": sha, "plugin": plugin_id, "plugin_version": version},
            )
            version = str(mv.version)
        self._found = (name, version, protocol_id, fp)
        self._passed = passed
        if not passed:
            # These weights now fail the protocol that validated them: the gate closes at
            # once. (Another protocol failing, an exploratory one, does not revoke it.)
            self._tag_outcome("failed")
            self._drop_alias(name, version, protocol_id)
        # A pass is tagged by set_alias, after the report is written: a run that broke
        # before its report left the tag 'passed' with no report behind it.
        return {
            "model_name": name,
            "model_version": version,
            "alias": VALIDATED_ALIAS if passed else None,
        }

    def set_alias(self) -> None:
        """Point ``validated`` at the version :meth:`register` found, if it passed.

        The last step of a validation, after its report is written: a run that fails
        before it never opens the gate.
        """
        if self._passed:
            name, version, protocol_id, _ = self._found
            self._tag_outcome("passed")
            self.client.set_model_version_tag(name, version, VALIDATED_BY, protocol_id)
            self.client.set_registered_model_alias(name, VALIDATED_ALIAS, version)
            self._set = (name, version)

    def _tag_outcome(self, outcome: str) -> None:
        """Tag the version :meth:`register` found with this run's outcome of its protocol."""
        name, version, protocol_id, fp = self._found
        self.client.set_model_version_tag(name, version, f"protocol.{protocol_id}", outcome)
        self.client.set_model_version_tag(name, version, f"protocol.{protocol_id}.fp", fp)
        self.client.set_model_version_tag(name, version, "last_validation_run", self.run_id)

    def _drop_alias(self, name: str, version: str, protocol_id: str | None = None) -> None:
        """Take ``validated`` off ``version`` (only if ``protocol_id`` set it, when given)."""
        from mlflow.exceptions import MlflowException

        try:
            current = self.client.get_model_version_by_alias(name, VALIDATED_ALIAS)
        except MlflowException:
            return
        if str(current.version) != version:
            return
        if protocol_id is None or (current.tags or {}).get(VALIDATED_BY) == protocol_id:
            self.client.delete_registered_model_alias(name, VALIDATED_ALIAS)

    def finish(self, files: list[Path], passed: bool) -> None:
        """Log the report files as artifacts and end the run."""
        for f in files:
            self.client.log_artifact(self.run_id, str(f), artifact_path="validation")
        self.client.set_tag(self.run_id, "outcome", "passed" if passed else "failed")
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self) -> None:
        """End the run as failed (an exception interrupted the validation).

        An alias this run set is taken back: a validation that did not finish opens no gate.
        """
        if self._set is not None:
            self._drop_alias(*self._set)
        self.client.set_terminated(self.run_id, "FAILED")


def close_orphan(tracking_uri: str, run_id: str) -> bool:
    """End as FAILED a run a killed validation left RUNNING; True if it was."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return False  # another store, or deleted: nothing of ours to close
    if run.info.status != "RUNNING":
        return False
    client.set_terminated(run_id, "FAILED")
    return True


def open_run(tracking_uri: str, run_name: str) -> ValidationRun:
    """Start a validation run on ``tracking_uri`` (any MLflow URI)."""
    return ValidationRun(tracking_uri, run_name)
