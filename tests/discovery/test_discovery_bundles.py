"""MONAI bundle directories registered in the host configuration run as plugins; a bundle
that cannot run as MONAI runs it is refused, by discovery and by ``pin-bundle``, with one
line saying why."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundlekit import INFERENCE, META, UNET, inference_with, make_bundle
from click.testing import CliRunner

from medlens.cli.plugins import plugins
from medlens.config import load_config
from medlens.errors import PluginNotFoundError
from medlens.host import Host
from medlens.imaging.image import Image
from medlens.weights import file_sha256


def _config(tmp_path: Path, bundle: Path, sha: str, **extra: str) -> Path:
    rel = bundle.relative_to(tmp_path)
    lines = ["[[bundles]]", f'path = "{rel}"', f'sha256 = "{sha}"']
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    cfg = tmp_path / "medlens.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def test_configured_bundle_is_discovered_and_runs(tmp_path: Path) -> None:
    b = make_bundle(tmp_path)
    cfg = load_config(_config(tmp_path, b, file_sha256(b), id="spleen-ct"))
    host = Host(cfg, entry_points=[])
    assert [m.id for m in host.plugins()] == ["spleen-ct"]
    assert host.report.plugins["spleen-ct"].entry_point == f"bundle {b}"
    m = host.plugins()[0]
    assert m.explanations == [] and m.inference is None
    rng = np.random.default_rng(0)
    image = Image(
        rng.normal(40, 60, (1, 24, 20, 12)).astype(np.float32),
        (2.0, 2.0, 3.0),
        (0.0, 0.0, 0.0),
        np.eye(3),
    )
    result = host.run("spleen-ct", image)
    assert result.prediction.mask is not None and result.prediction.mask.same_grid(image)
    assert result.prediction.heatmap is None
    assert result.provenance.weights_sha256 == file_sha256(b)


def test_bundle_with_wrong_pin_is_reported_not_registered(tmp_path: Path) -> None:
    b = make_bundle(tmp_path)
    host = Host(load_config(_config(tmp_path, b, "0" * 64)), entry_points=[])
    assert host.plugins() == []
    (err,) = host.errors()
    assert "differs from the configured pin" in err.reason
    with pytest.raises(PluginNotFoundError, match="configured pin"):
        host.get(err.plugin_id)


def test_missing_bundle_directory_is_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "medlens.toml"
    cfg.write_text(f'[[bundles]]\npath = "nowhere"\nsha256 = "{"a" * 64}"\n')
    host = Host(load_config(cfg), entry_points=[])
    assert host.plugins() == [] and "not found" in host.errors()[0].reason


def test_pin_bundle_prints_a_config_the_host_accepts(tmp_path: Path) -> None:
    b = make_bundle(tmp_path)
    out = CliRunner().invoke(plugins, ["pin-bundle", str(b), "--trust-code"])
    assert out.exit_code == 0, out.output
    cfg = tmp_path / "pinned.toml"
    cfg.write_text(out.output)
    host = Host(load_config(cfg), entry_points=[])
    (m,) = host.plugins()
    assert m.id == "spleen-ct-segmentation" and m.weights is not None
    assert m.weights.sha256 == file_sha256(b)


def test_pin_bundle_lists_the_code_it_would_run_and_builds_only_when_trusted(
    tmp_path: Path,
) -> None:
    # helper-59: pinning (the review) built the bundle first, so a '$' expression ran
    # before anyone had approved it.
    marker = tmp_path / "PWNED"
    inf = copy.deepcopy(INFERENCE)
    inf["pwn"] = f"$__import__('os').system('touch {marker}')"
    inf["preprocessing"]["transforms"][0]["keys"] = "$@pwn and 'image' or 'image'"
    b = make_bundle(tmp_path, inference=inf)
    out = CliRunner().invoke(plugins, ["pin-bundle", str(b)])
    assert out.exit_code != 0 and "[[bundles]]" not in out.output
    assert "pin with --trust-code" in out.output
    assert f"inference.json: $__import__('os').system('touch {marker}')" in out.output
    assert "inference.json: $torch.device(" in out.output  # every expression, listed
    assert not marker.exists()
    # helper-62: targets that run code without a '$': a command MONAI ships, a builtin
    # MONAI's lookup falls back to. Listed; MONAI's own pipeline parts are not.
    inf = copy.deepcopy(INFERENCE)
    inf["cmd"] = {"_target_": "monai.utils.run_cmd", "cmd_list": ["touch", str(marker)]}
    inf["file"] = {"_target_": "open", "file": str(marker), "mode": "w"}
    b = make_bundle(tmp_path / "targets", inference=inf)
    out = CliRunner().invoke(plugins, ["pin-bundle", str(b)])
    assert "inference.json: _target_ monai.utils.run_cmd" in out.output
    assert "inference.json: _target_ open" in out.output
    assert "_target_ LoadImaged" not in out.output and "_target_ UNet" not in out.output
    assert not marker.exists()
    # helper-64: a name under MONAI's parts whose attribute walk reaches os.system: judged
    # on what it resolves to, listed (it ran at the pin).
    inf = copy.deepcopy(INFERENCE)
    inf["cmd"] = {"_target_": "monai.data.utils.os.system", "command": f"touch {marker}"}
    b = make_bundle(tmp_path / "walk", inference=inf)
    out = CliRunner().invoke(plugins, ["pin-bundle", str(b)])
    assert out.exit_code != 0 and "[[bundles]]" not in out.output
    assert "inference.json: _target_ monai.data.utils.os.system" in out.output
    assert not marker.exists()


def _transforms(section: str, change: Any) -> dict[str, Any]:
    inf = copy.deepcopy(INFERENCE)
    inf[section]["transforms"] = change(inf[section]["transforms"])
    return inf


UNRUNNABLE: dict[str, tuple[dict[str, Any], str]] = {
    "unknown component": (
        _transforms("preprocessing", lambda t: [*t[:3], {"_target_": "NoSuchTransformd"}]),
        "cannot build the bundle's 'preprocessing': ",
    ),
    "network code missing": (
        inference_with(network_def={**UNET, "_target_": "scripts.nets.SpleenNet"}),
        "cannot build the bundle's 'network_def': ",
    ),
    "no inferer": (inference_with(inferer=None), "bundle's inference.json has no 'inferer'"),
    "weights do not fit": (
        inference_with(network_def={**UNET, "channels": [4, 8, 32]}),
        "weights do not fit the bundle's network: ",
    ),
    "no label map": (
        _transforms("postprocessing", lambda t: [x for x in t if x["_target_"] != "AsDiscreted"]),
        "makes no label map (no AsDiscreted)",
    ),
    "input not a file": (
        _transforms("preprocessing", lambda t: t[1:]),
        "does not start with LoadImaged",
    ),
}


@pytest.mark.parametrize("case", sorted(UNRUNNABLE))
def test_unrunnable_bundle_is_refused_with_a_one_line_reason(tmp_path: Path, case: str) -> None:
    inference, reason = UNRUNNABLE[case]
    b = make_bundle(tmp_path, inference=inference)
    host = Host(load_config(_config(tmp_path, b, file_sha256(b), id="spleen-ct")), entry_points=[])
    assert host.plugins() == []
    (err,) = host.errors()
    assert reason in str(err) and "\n" not in str(err), str(err)
    with pytest.raises(PluginNotFoundError):
        host.get("spleen-ct")
    out = CliRunner().invoke(plugins, ["pin-bundle", str(b), "--trust-code"])
    assert out.exit_code != 0 and "[[bundles]]" not in out.output
    assert reason in out.output and out.output.count("\n") == 1, out.output


def test_bundle_network_from_its_scripts_folder_runs_and_keeps_its_pin(tmp_path: Path) -> None:
    inf = inference_with(network_def={**UNET, "_target_": "scripts.nets.SpleenNet"})
    b = make_bundle(tmp_path, inference=inf)
    (b / "scripts").mkdir()
    (b / "scripts" / "__init__.py").write_text("")
    (b / "scripts" / "nets.py").write_text("from monai.networks.nets import UNet as SpleenNet\n")
    pin = file_sha256(b)
    host = Host(load_config(_config(tmp_path, b, pin, id="spleen-ct")), entry_points=[])
    assert host.errors() == []
    image = Image(np.full((1, 16, 16, 8), 80, np.float32), (3.0, 3.0, 4.0), (0, 0, 0), np.eye(3))
    assert host.run("spleen-ct", image).prediction.mask is not None
    assert file_sha256(b) == pin  # no __pycache__ written into the pinned tree


def _tripwire_bundle(tmp_path: Path) -> tuple[Path, Path]:
    """A bundle whose network code writes a marker file when it is imported."""
    inf = inference_with(network_def={**UNET, "_target_": "scripts.tripwire.SpleenNet"})
    b = make_bundle(tmp_path, inference=inf)
    (b / "scripts").mkdir()
    (b / "scripts" / "__init__.py").write_text("")
    marker = tmp_path / "imported"
    (b / "scripts" / "tripwire.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n"
        "from monai.networks.nets import UNet as SpleenNet\n"
    )
    return b, marker


def test_blocked_bundle_is_skipped_and_none_of_its_code_runs(tmp_path: Path) -> None:
    b, marker = _tripwire_bundle(tmp_path)
    cfg = _config(tmp_path, b, file_sha256(b), id="spleen-ct")
    cfg.write_text('[plugins]\nblock = ["spleen-ct"]\n\n' + cfg.read_text())
    host = Host(load_config(cfg), entry_points=[])
    assert host.plugins() == [] and host.errors() == []
    assert host.report.skipped == {"spleen-ct": "blocked by configuration"}
    assert not marker.exists()
    # The same bundle, not blocked, is built (its code runs) and accepted.
    again = Host(load_config(_config(tmp_path, b, file_sha256(b), id="spleen-ct")), entry_points=[])
    assert again.errors() == [] and marker.exists()


def test_a_gated_host_builds_no_unvalidated_bundle(tmp_path: Path) -> None:
    # The probe: with require_validated on, an unvalidated bundle's config code ran at
    # every host start (plugins list, a run of another, validated plugin); the gate only
    # refused it at run time, after its code had run.
    from medlens.gating import NotValidatedError

    b, marker = _tripwire_bundle(tmp_path)
    cfg = _config(tmp_path, b, file_sha256(b), id="spleen-ct")
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    cfg.write_text(
        cfg.read_text() + f'\n[validation]\nrequire_validated = true\nregistry_uri = "{uri}"\n'
    )
    host = Host(load_config(cfg), entry_points=[])
    assert [m.id for m in host.plugins()] == ["spleen-ct"] and host.errors() == []
    image = Image(np.full((1, 16, 16, 8), 80, np.float32), (3.0, 3.0, 4.0), (0, 0, 0), np.eye(3))
    with pytest.raises(NotValidatedError):
        host.run("spleen-ct", image)
    assert not marker.exists()


def _refused(tmp_path: Path, b: Path, reason: str) -> None:
    """Refused by pin-bundle and by discovery, in one line naming ``reason``."""
    out = CliRunner().invoke(plugins, ["pin-bundle", str(b), "--trust-code"])
    assert out.exit_code != 0 and "[[bundles]]" not in out.output, out.output
    assert reason in out.output and out.output.count("\n") == 1, out.output
    host = Host(load_config(_config(tmp_path, b, file_sha256(b), id="spleen-ct")), entry_points=[])
    assert host.plugins() == []
    (err,) = host.errors()
    assert reason in str(err) and "\n" not in str(err), str(err)


@pytest.mark.parametrize("linked", ["models", "configs/inference.json"])
def test_a_bundle_holding_a_link_is_refused(tmp_path: Path, linked: str) -> None:
    # The probe: `models -> ../weights_store` pinned, then the weights were swapped for
    # zeros: the sha256 skipped the linked folder (MONAI follows it) and the run was "ok".
    b = make_bundle(tmp_path)
    target = tmp_path / "elsewhere" / Path(linked).name
    target.parent.mkdir()
    (b / linked).rename(target)
    (b / linked).symlink_to(target)
    _refused(tmp_path, b, f"the bundle holds a link ('{linked}')")


def test_a_bundle_holding_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    # The probe: a FIFO configs/extra.json hung `plugins list` and every host command at
    # its read, and the pin (regular files only) did not change with it.
    b = make_bundle(tmp_path)
    os.mkfifo(b / "configs" / "extra.json")
    _refused(tmp_path, b, "the bundle holds 'configs/extra.json', which is no regular file")


def test_a_metadata_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    b = make_bundle(tmp_path)
    (b / "configs" / "metadata.json").write_text("[" * 100_000 + "]" * 100_000)
    _refused(tmp_path, b, "cannot read metadata.json: nested too deeply")


def test_a_config_reading_another_file_through_a_macro_is_refused(tmp_path: Path) -> None:
    # The probe: "inferer": "%/site/common.json#inferer", pinned, then code added there.
    site = tmp_path / "site.json"
    site.write_text('{"inferer": {"_target_": "SimpleInferer"}}')
    b = make_bundle(tmp_path, inference=inference_with(inferer=f"%{site}#inferer"))
    _refused(tmp_path, b, "inference.json reads another file through a macro")


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_channels", "one"), ("channel_def", {"bg": "background"}), ("authors", 3)],
)
def test_a_wrong_typed_metadata_field_refuses_that_bundle_only(
    tmp_path: Path, field: str, value: Any
) -> None:
    # The probe: ValueError/TypeError out of the mapping stopped discovery of every plugin.
    import importlib.metadata as md

    meta = copy.deepcopy(META)
    fmt = meta["network_data_format"]
    if field == "authors":
        meta["authors"] = value
    elif field == "num_channels":
        fmt["inputs"]["image"][field] = value
    else:
        fmt["outputs"]["pred"][field] = value
    b = make_bundle(tmp_path, metadata=meta)
    cfg = load_config(_config(tmp_path, b, file_sha256(b), id="spleen-ct"))
    ep = md.EntryPoint(
        "volume-measure", "medlens_volume_measure.manifest:MANIFEST", "medlens.plugins"
    )
    host = Host(cfg, entry_points=[ep])
    assert [m.id for m in host.plugins()] == ["volume-measure"]
    (err,) = host.errors()
    assert err.plugin_id == "spleen-ct" and "\n" not in str(err), str(err)
    assert "cannot map the bundle's metadata.json" in str(err) or "metadata" in str(err)


def test_a_model_ts_that_is_not_torchscript_is_refused_before_any_case(tmp_path: Path) -> None:
    b = make_bundle(tmp_path)
    (b / "models" / "model.pt").unlink()
    (b / "models" / "model.ts").write_bytes(b"not a TorchScript archive")
    _refused(tmp_path, b, "'model.ts' is not a TorchScript model")


def test_a_network_that_gives_nan_fails_the_case_instead_of_an_empty_mask(
    tmp_path: Path,
) -> None:
    import torch
    from bundlekit import bundle_net

    from medlens.errors import EngineError

    net = bundle_net()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(float("nan"))
    b = make_bundle(tmp_path, network=net)
    host = Host(load_config(_config(tmp_path, b, file_sha256(b), id="spleen-ct")), entry_points=[])
    image = Image(np.zeros((1, 24, 20, 12), np.float32), (2.0, 2.0, 3.0), (0.0,) * 3, np.eye(3))
    with pytest.raises(EngineError, match="NaN or infinite values"):
        host.run("spleen-ct", image)
