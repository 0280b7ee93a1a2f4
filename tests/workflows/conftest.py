"""Workflow test fixtures: one migrated MLflow store, copied for each test that needs one.

Creating an MLflow SQLite store runs its schema migrations (about 20 s on a loaded test
machine); a copy of a migrated store opens in a fraction of a second and is just as real.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow store (tracking and registry tables)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_experiments()
    client.search_registered_models()
    return db


@pytest.fixture
def mlflow_store(mlflow_template: Path) -> Callable[[Path], str]:
    """``store(folder)`` copies the template to ``folder/mlflow.db`` and returns its URI."""

    def store(folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mlflow_template, folder / "mlflow.db")
        return f"sqlite:///{folder / 'mlflow.db'}"

    return store
