"""Documentation that a test keeps honest: every setting and every command is in README.md."""

from __future__ import annotations

from pathlib import Path

import typer.main

from linstudio.cli import app
from linstudio.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _command_paths(group, prefix=()):
    for name, command in getattr(group, "commands", {}).items():
        path = prefix + (name,)
        if getattr(command, "commands", None):
            yield from _command_paths(command, path)
        else:
            yield " ".join(path)


def test_every_setting_is_documented():
    missing = [f"LINSTUDIO_{name.upper()}" for name in Settings.model_fields
               if f"`LINSTUDIO_{name.upper()}`" not in README]
    assert not missing, f"settings missing from README.md: {missing}"


def test_every_setting_has_a_description():
    assert all(field.description for field in Settings.model_fields.values())


def test_every_command_is_documented():
    click_group = typer.main.get_command(app)
    commands = list(_command_paths(click_group))
    assert "run" in commands
    missing = [c for c in commands if f"linstudio {c}" not in README]
    assert not missing, f"commands missing from README.md: {missing}"


def test_readme_opens_with_the_two_newcomer_commands():
    first_block = README.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
