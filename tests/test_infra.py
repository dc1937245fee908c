"""The deployment files that cannot run here are at least well-formed and point at real commands."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from linstudio.cli import app

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"


def _linstudio_args(command: list[str]) -> list[str]:
    return command[command.index("linstudio") + 1:] if "linstudio" in command else []


def test_compose_file_describes_the_whole_stack():
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "s3", "prefect", "gallery", "control-worker", "gpu-worker"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            assert (INFRA / ".." / service["build"]["dockerfile"]).resolve().is_file(), name
    gpu = services["gpu-worker"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert gpu["environment"]["PREFECT_API_URL"].startswith("http://prefect:")


@pytest.mark.parametrize("service", ["gallery", "control-worker", "gpu-worker"])
def test_compose_commands_are_real_linstudio_commands(service):
    command = yaml.safe_load((INFRA / "docker-compose.yml").read_text())["services"][service]["command"]
    result = CliRunner().invoke(app, [*_linstudio_args(command)[:1], "--help"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("unit", sorted(p.name for p in (INFRA / "systemd").glob("*.service")))
def test_systemd_units_parse_and_run_real_commands(unit):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(INFRA / "systemd" / unit)
    assert {"Unit", "Service", "Install"} <= set(parser.sections())
    command = shlex.split(parser["Service"]["ExecStart"].replace("%i", "0").replace("%H", "host"))
    result = CliRunner().invoke(app, [*_linstudio_args([Path(c).name for c in command])[:1], "--help"])
    assert result.exit_code == 0, result.output
    assert parser["Service"]["Restart"] == "always"


def test_prefect_yaml_declares_the_deployments():
    # `prefect deploy --all` loading this very file is exercised by tests/flows/test_distributed.py.
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["name"]: d for d in config["deployments"]}
    assert {"nightly-batch", "rerender", "render-shard", "render-shard-large"} <= set(names)
    assert names["nightly-batch"]["schedules"][0]["cron"] == "{{ $LINSTUDIO_NIGHTLY_CRON }}"
    for deployment in names.values():
        # One interpreter start per flow run (see the comment in prefect.yaml); `linstudio worker` puts
        # its own interpreter first on PATH so that `python` is the project's environment.
        assert deployment["work_pool"]["job_variables"]["command"] == "python -m prefect.engine", deployment["name"]
        module, function = deployment["entrypoint"].split(":")
        source = (ROOT / module).read_text()
        assert f"def {function}(" in source, deployment["entrypoint"]
