"""The packaged app: ``--self-test`` from source, and (slow) the PyInstaller bundle built by ``make package``
from its own clean virtualenv, then started with ``--self-test``.

The bundle test reuses ``.venv-package`` when it exists (``make`` skips the set-up); from scratch the
set-up takes about a minute and the PyInstaller run about a minute and a half on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.loading import default_model

ROOT = Path(__file__).resolve().parents[2]
SIZE_LIMIT = int(1.2e9)  # bytes, onedir with CPU torch
# Qt's offscreen platform says this whenever a window is shown; nothing else may reach stderr.
EXPECTED_STDERR = ("This plugin does not support propagateSizeHints()",)
# Never in the bundle: dev and test tools, other Qt bindings, tkinter, CUDA libraries (CPU torch).
FORBIDDEN = ("pytest", "_pytest", "hypothesis", "transformers", "PyQt5", "PyQt6", "PySide2", "tkinter", "nvidia")


def unexpected_stderr(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and line.strip() not in EXPECTED_STDERR]


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """The user's own folders point into tmp_path, so a run cannot touch the real ones."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "QT_"))}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "config"))
    env["XDG_CACHE_HOME"] = str(home / "cache")
    return env


def check_self_test(result: subprocess.CompletedProcess) -> None:
    report = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, report
    assert "Ember self-test" in result.stdout and "passed in" in result.stdout, report
    assert "inspection:" in result.stdout, report
    assert "merged GGUF of a LoRA adapter written" in result.stdout, report  # the gguf package is there
    assert not unexpected_stderr(result.stderr), report


def test_self_test_from_source(tmp_path):
    shot = tmp_path / "window.png"
    result = subprocess.run(
        [sys.executable, "-m", "desktop", "--self-test", "--screenshot", str(shot)],
        cwd=ROOT,
        env=isolated_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    check_self_test(result)
    assert "mode:       from source" in result.stdout
    assert shot.stat().st_size > 10_000
    assert not (tmp_path / "home" / "data").exists(), "the self-test wrote to the user's data folder"


def test_self_test_fails_loudly_when_the_model_cannot_load(tmp_path):
    code = (
        "import sys, engine.loading.loader as loader\n"
        "from engine.errors import ModelFileError\n"
        "def gone(): raise ModelFileError('SmolLM2.gguf', 'deliberately missing')\n"
        "loader.default_model_path = gone\n"
        "from desktop.app import main\n"
        "sys.exit(main(['--self-test']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=isolated_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result
    assert "Ember self-test FAILED" in result.stderr and "deliberately missing" in result.stderr, result.stderr
    assert "passed" not in result.stdout


def test_frozen_app_finds_the_bundled_model(tmp_path, monkeypatch):
    bundled = tmp_path / "models" / default_model.FILENAME
    bundled.parent.mkdir()
    bundled.write_bytes(b"GGUF")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert default_model.default_model_path() == bundled


def test_frozen_app_without_a_bundled_model_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(default_model.ModelFileError, match="pip install"):
        default_model.default_model_path()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.slow
@pytest.mark.timeout(2400)  # ~7 minutes on a quiet 2-core CPU (4 shipped steps compiled, then PyInstaller)
@pytest.mark.skipif(sys.platform != "linux", reason="the bundle test drives the Linux build")
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_bundle_builds_and_passes_its_self_test(tmp_path):
    dist, work = tmp_path / "dist", tmp_path / "build"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    build = subprocess.run(
        ["make", "package", f"DISTDIR={dist}", f"WORKDIR={work}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert build.returncode == 0, f"make package failed:\n{build.stdout[-5000:]}\n{build.stderr[-10000:]}"
    bundle = dist / "Ember"
    app = bundle / "Ember"
    assert app.is_file() and os.access(app, os.X_OK)
    internal = bundle / "_internal"
    assert (internal / "models" / default_model.FILENAME).is_file()
    assert (internal / "resources" / "presets" / "sampling.json").is_file()
    assert (internal / "resources" / "icons" / "ember-256.png").is_file()
    assert (internal / "resources" / "ember.desktop").is_file()
    present = {p.name.split(".")[0] for p in internal.iterdir()}
    assert not present & set(FORBIDDEN), sorted(present & set(FORBIDDEN))
    assert not list(internal.glob("**/libcudart*")), "CUDA libraries in a CPU build"
    assert not (internal / "torch" / "test").exists()
    size = folder_size(bundle)
    assert size < SIZE_LIMIT, f"the bundle is {size / 1e9:.2f} GB"

    # The self-test from the bundle, which must leave the bundle as it was (user data goes elsewhere).
    before = snapshot(bundle)
    shot = tmp_path / "bundle-window.png"
    result = subprocess.run(
        [str(app), "--self-test", "--screenshot", str(shot)],
        cwd=tmp_path,
        env=isolated_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    check_self_test(result)
    assert f"mode:       packaged ({bundle})" in result.stdout, result.stdout
    # The bundle cannot compile (no headers), but carries the default model's step for each CPU level.
    assert len(list((internal / "compiled").glob("*.pt2"))) == 4
    assert "decoding:   compiled, shipped for" in result.stdout, result.stdout
    assert shot.stat().st_size > 10_000
    assert snapshot(bundle) == before, "running the bundle changed files inside it"

    # The Linux desktop entry, installed for a user whose folders are in tmp_path.
    data_home = tmp_path / "home" / "share"
    install = subprocess.run(
        [str(bundle / "install-desktop-entry.sh")],
        env={**isolated_env(tmp_path), "XDG_DATA_HOME": str(data_home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert install.returncode == 0, install.stderr
    entry = (data_home / "applications" / "ember.desktop").read_text()
    assert f'Exec="{app}"' in entry and "Icon=ember" in entry
    assert (data_home / "icons" / "hicolor" / "256x256" / "apps" / "ember.png").is_file()


def test_desktop_entry_is_valid():
    entry = (ROOT / "resources" / "ember.desktop").read_text()
    keys = dict(line.split("=", 1) for line in entry.splitlines()[1:] if "=" in line)
    assert entry.startswith("[Desktop Entry]\n")
    assert keys["Type"] == "Application" and keys["Name"] == "Ember" and keys["Icon"] == "ember"
    assert keys["Exec"] == "Ember" and keys["StartupWMClass"] == "Ember" and keys["Terminal"] == "false"
    if shutil.which("desktop-file-validate"):
        entry_file = ROOT / "resources" / "ember.desktop"
        check = subprocess.run(["desktop-file-validate", str(entry_file)], capture_output=True)
        assert check.returncode == 0 and not check.stdout, check.stdout


def test_icons_exist_for_every_platform():
    icons = ROOT / "resources" / "icons"
    for size in (16, 24, 32, 48, 64, 128, 256, 512):
        assert (icons / f"ember-{size}.png").read_bytes().startswith(b"\x89PNG")
    assert (icons / "ember.ico").read_bytes()[:4] == b"\x00\x00\x01\x00"
    assert (icons / "ember.icns").read_bytes()[:4] == b"icns"
