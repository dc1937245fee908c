"""`builtin:` locations are built by whatever builder the entry-point group installs, never by an import.

The engine does not import the devkit (tests/test_architecture.py holds it to that); these check
the other half: the installed project registers the tiny models' builder, the engine finds it from
a fresh process, and without a builder the error names the group instead of an ImportError.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from linfusion_engine import builtins
from linfusion_engine.registry import ModelNotAvailableError


def test_the_installed_project_registers_the_tiny_builder():
    installed = builtins.installed_builders()
    assert isinstance(installed.get("tiny"), builtins.BuiltinBuilder)
    for name in ("tiny-sd15", "tiny-sdxl", "tiny-sd15-controlnet-canny", "tiny-sdxl-ip-adapter",
                 "tiny-sd15-lora-tiny-style"):
        assert builtins.find_builder(name) is installed["tiny"]


def test_without_a_builder_the_error_names_the_group(monkeypatch):
    monkeypatch.setattr(builtins, "entry_points", lambda group: [])
    with pytest.raises(ModelNotAvailableError, match="linfusion_engine.builtin_models") as caught:
        builtins.ensure_built("builtin:tiny-sd15", Path("/nonexistent"), Path("/nonexistent"))
    assert "installed: none" in str(caught.value) and "pip install -e ." in str(caught.value)


def test_a_name_no_builder_provides_is_refused():
    with pytest.raises(builtins.BuiltinBuilderMissingError, match="builtin:flux-tiny: no installed builder"):
        builtins.find_builder("flux-tiny")


def test_an_entry_point_that_is_no_builder_is_refused(monkeypatch):
    point = EntryPoint(name="broken", value="pathlib:Path", group=builtins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(builtins, "entry_points", lambda group: [point])
    with pytest.raises(TypeError, match="broken = pathlib:Path"):
        builtins.installed_builders()


def test_a_stand_in_builder_is_called_with_the_name_and_folders(monkeypatch, tmp_path):
    class StandIn:
        calls = []

        def provides(self, name):
            return name == "stand-in"

        def build(self, name, folder, models_dir):
            self.calls.append((name, folder, models_dir))
            return folder

    point = EntryPoint(name="stand-in", value="x:y", group=builtins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(EntryPoint, "load", lambda self: StandIn())
    monkeypatch.setattr(builtins, "entry_points", lambda group: [point])
    assert builtins.ensure_built("builtin:stand-in", tmp_path / "f", tmp_path) == tmp_path / "f"
    assert StandIn.calls == [("stand-in", tmp_path / "f", tmp_path)]
    with pytest.raises(ValueError, match="not a builtin: location"):
        builtins.ensure_built("package:shapes-sd15", tmp_path, tmp_path)


def test_importing_the_engine_loads_no_builder():
    """The devkit is loaded only when a `builtin:` model is built, not by importing the engine."""
    code = ("import sys, linfusion_engine, linfusion_engine.builtins, linfusion_engine.engine; "
            "print(sorted(m for m in sys.modules if m.startswith('linfusion_devkit')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
