from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from medlens.discovery import discover
from medlens.errors import (
    ApiVersionError,
    DuplicatePluginError,
    NeedsNewerHostError,
    PluginLoadError,
    PluginValidationError,
)

Make = Callable[..., md.EntryPoint]


def test_good_plugins_accepted_and_model_code_not_imported(plugin_factory: Make) -> None:
    ep = plugin_factory("alpha")
    report = discover(entry_points=[ep])
    assert list(report.plugins) == ["alpha"]
    assert report.errors == []
    assert report.plugins["alpha"].manifest.version == "1.2.3"


@pytest.mark.parametrize("api", ["2", "1.2", "2.0"])
def test_newer_api_needs_a_newer_host_and_others_survive(plugin_factory: Make, api: str) -> None:
    report = discover(entry_points=[plugin_factory("future", api=api), plugin_factory("ok")])
    assert list(report.plugins) == ["ok"]
    (err,) = report.errors
    assert isinstance(err, NeedsNewerHostError)
    assert not isinstance(err, PluginValidationError)  # valid manifest, old host
    assert err.plugin_id == "future"
    assert str(err) == (
        f"plugin 'future': needs a newer MedLens (plugin targets API {api}, host provides 1.1)"
    )


@pytest.mark.parametrize("api", ["1", "1.0", "1.1"])
def test_v1_and_v1_1_manifests_load(plugin_factory: Make, api: str) -> None:
    report = discover(entry_points=[plugin_factory("current", api=api)])
    assert list(report.plugins) == ["current"] and report.errors == []


def test_an_older_major_is_refused_with_its_own_reason(plugin_factory: Make) -> None:
    report = discover(entry_points=[plugin_factory("ancient", api="0")])
    (err,) = report.errors
    assert isinstance(err, ApiVersionError) and not isinstance(err, NeedsNewerHostError)
    assert "no longer provides" in str(err)


def test_duplicate_ids_rejected(plugin_factory: Make) -> None:
    report = discover(entry_points=[plugin_factory("same"), plugin_factory("same")])
    assert report.plugins == {}
    assert isinstance(report.errors[0], DuplicatePluginError)
    assert "registered more than once" in str(report.errors[0])


def test_broken_import_and_bad_objects_reported(plugin_factory: Make) -> None:
    broken = plugin_factory("broken", body="raise RuntimeError('boom at import')\n")
    notmanifest = plugin_factory("weird", body="MANIFEST = 42\n")
    invalid = plugin_factory("invalid", body="MANIFEST = {'id': 'x'}\n")
    missing = md.EntryPoint(
        name="gone", value="no_such_module_xyz:MANIFEST", group="medlens.plugins"
    )
    report = discover(entry_points=[broken, notmanifest, invalid, missing, plugin_factory("fine")])
    assert list(report.plugins) == ["fine"]
    by_id = {e.plugin_id: e for e in report.errors}
    assert isinstance(by_id["broken"], PluginLoadError) and "boom at import" in str(by_id["broken"])
    assert isinstance(by_id["weird"], PluginValidationError) and "not a Manifest" in str(
        by_id["weird"]
    )
    assert isinstance(by_id["invalid"], PluginValidationError) and "invalid manifest" in str(
        by_id["invalid"]
    )
    assert isinstance(by_id["gone"], PluginLoadError)
    assert all("\n" not in str(e) for e in report.errors)


def test_a_base_exception_at_import_rejects_that_plugin_only(plugin_factory: Make) -> None:
    # A probe's finding: a module raising a BaseException subclass at import stopped the
    # discovery of every plugin (the first-party ones too), a traceback for `plugins list`.
    body = "class Boom(BaseException):\n    pass\n\nraise Boom('custom base at import')\n"
    boom = plugin_factory("boom", body=body)
    factory = plugin_factory("factory", body="def MANIFEST():\n    raise GeneratorExit('no')\n")
    # helper-62: a subclass of KeyboardInterrupt passed as the operator's Ctrl-C.
    stop = plugin_factory("stop", body="class Stop(KeyboardInterrupt):\n    pass\n\nraise Stop()\n")
    report = discover(entry_points=[boom, factory, stop, plugin_factory("fine")])
    assert list(report.plugins) == ["fine"]
    assert "Stop" in str({e.plugin_id: e for e in report.errors}["stop"])
    by_id = {e.plugin_id: e for e in report.errors}
    assert isinstance(by_id["boom"], PluginLoadError)
    assert "Boom: custom base at import" in str(by_id["boom"])
    assert "manifest factory" in str(by_id["factory"]) and "GeneratorExit" in str(by_id["factory"])


def test_allow_and_block_lists(plugin_factory: Make) -> None:
    eps = [plugin_factory("a"), plugin_factory("b"), plugin_factory("c")]
    report = discover(entry_points=eps, allow=["a", "b"], block=["b"])
    assert list(report.plugins) == ["a"]
    assert report.skipped == {"b": "blocked by configuration", "c": "not in the allowlist"}


def test_discovery_of_installed_plugins_imports_no_torch() -> None:
    code = (
        "import sys, json\n"
        "from medlens.cli.main import main\n"
        "try:\n    main(['plugins', 'list', '--json'])\n"
        "finally:\n"
        "    heavy = [m for m in ('torch', 'monai', 'pytorch_grad_cam', 'mlflow') "
        "if m in sys.modules]\n"
        "    print('HEAVY=' + json.dumps(heavy), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "HEAVY=[]" in out.stderr
    listing = json.loads(out.stdout)
    for entry in listing["plugins"]:
        assert {"id", "version", "task", "diagnostic_use"} <= set(entry)
        assert not any("imports" in n for n in entry["notes"]), entry


def _python_beside_module(
    folder: Path, module: str, source: str, code: str
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that can import ``module`` (written to ``folder``)."""
    (folder / f"{module}.py").write_text(source)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(folder)},
    )


def test_a_manifest_module_that_imports_torch_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A third party's manifest module that imports torch slows every MedLens start by
    # seconds; the plugin still works, so it is a note in `plugins list`, not a refusal.
    out = _python_beside_module(
        tmp_path,
        "mlt_heavy_probe",
        "import torch  # noqa: F401\nfrom medlens_volume_measure.manifest import MANIFEST\n",
        "import importlib.metadata as md, json, functools\n"
        "from medlens.cli import plugins\n"
        "from medlens.cli.main import main\n"
        "from medlens.host import Host\n"
        "ep = md.EntryPoint('volume-measure', 'mlt_heavy_probe:MANIFEST', 'medlens.plugins')\n"
        "plugins.Host = functools.partial(Host, entry_points=[ep])\n"
        "main(['plugins', 'list', '--json'])\n",
    )
    assert out.returncode == 0, out.stderr
    (entry,) = json.loads(out.stdout)["plugins"]
    assert entry["id"] == "volume-measure"
    assert entry["notes"][0].startswith("its manifest module imports torch at discovery")
    assert "plugin volume-measure: its manifest module imports torch" in out.stderr


def test_a_blocked_plugin_module_is_never_imported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The manifest module of the blocked plugin would record its import; it must not run.
    proc = _python_beside_module(
        tmp_path,
        "mlt_blocked_probe",
        "import sys\nsys.modules['__probe_imported__'] = sys\nMANIFEST = None\n",
        "import importlib.metadata as md, sys\n"
        "from medlens.discovery import discover\n"
        "eps = [md.EntryPoint('blocked', 'mlt_blocked_probe:MANIFEST', 'medlens.plugins'),\n"
        "       md.EntryPoint('other', 'mlt_blocked_probe:MANIFEST', 'medlens.plugins')]\n"
        "r = discover(entry_points=eps, block=['blocked'], allow=['blocked', 'x'])\n"
        "print(sorted(r.skipped.items()), r.plugins, r.errors,\n"
        "      'mlt_blocked_probe' in sys.modules, '__probe_imported__' in sys.modules)\n",
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    assert out == (
        "[('blocked', 'blocked by configuration'), ('other', 'not in the allowlist')] {} [] "
        "False False"
    )


def test_entry_point_name_must_be_the_plugin_id(plugin_factory: Make) -> None:
    ep = plugin_factory("named")
    renamed = md.EntryPoint(name="alias", value=ep.value, group=ep.group)
    report = discover(entry_points=[renamed])
    (err,) = report.errors
    assert isinstance(err, PluginValidationError) and "differs from the manifest id" in str(err)
