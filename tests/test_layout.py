"""Repository layout guards: platform/ is a src dir and must never shadow stdlib `platform`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_platform_dir_has_no_init() -> None:
    assert not (REPO / "platform" / "__init__.py").exists(), (
        "platform/__init__.py would shadow the stdlib 'platform' module; platform/ is a src dir"
    )


def test_stdlib_platform_wins_from_repo_root() -> None:
    # `python -m pytest` puts the cwd first on sys.path, exactly like this call.
    code = "import platform, sys; print(platform.__file__); print(platform.python_version())"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--version"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    probe = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    path, version = probe.stdout.split()
    assert "site-packages" not in path and not path.startswith(str(REPO))
    assert version.count(".") == 2


def test_layout_fixed_by_user() -> None:
    for name in (
        "pyproject.toml",
        "README.md",
        "platform",
        "plugins",
        "workflows",
        "validation",
        "tests",
        "docs",
    ):
        assert (REPO / name).exists(), name


def test_editable_installs_use_plain_path_files() -> None:
    import medlens

    site = Path(
        subprocess.run(
            [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    pths = list(site.glob("__editable__*medlens*.pth"))
    assert pths, "no editable .pth for medlens distributions"
    for pth in pths:
        for line in pth.read_text().splitlines():
            assert not line.startswith("import "), f"{pth.name} uses an import hook, not a path"
            assert Path(line).is_dir(), f"{pth.name}: {line!r} is not a folder"
    assert Path(medlens.__file__).is_relative_to(REPO / "platform")


def test_validation_never_imports_torch() -> None:
    for py in (REPO / "validation").rglob("*.py"):
        text = py.read_text()
        for bad in ("import torch", "from torch", "import monai", "from monai"):
            assert bad not in text, f"{py} imports {bad.split()[-1]}"
