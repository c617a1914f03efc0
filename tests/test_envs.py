"""conda cannot run here: this test keeps envs/*.yaml consistent with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", dep).groups()
        pins[name.lower()] = version
    return pins


def env_files() -> list[Path]:
    return sorted((REPO / "envs").glob("*.yaml"))


def test_every_conda_directive_names_an_existing_file():
    paths = []
    for rule_file in (REPO / "rules").glob("*.smk"):
        for rel in re.findall(r'conda:\s*\n\s*"([^"]+)"', rule_file.read_text()):
            paths.append(rel)
            assert (rule_file.parent / rel).resolve().is_file(), f"{rule_file.name}: {rel}"
    assert paths, "no conda: directive found"


def test_every_rule_has_a_conda_env():
    for rule_file in (REPO / "rules").glob("*.smk"):
        text = rule_file.read_text()
        assert len(re.findall(r"^rule \w+:", text, flags=re.M)) == text.count("conda:"), rule_file.name


@pytest.mark.parametrize("env", env_files(), ids=lambda p: p.name)
def test_env_pins_agree_with_pyproject(env):
    spec = yaml.safe_load(env.read_text())
    assert spec["channels"][0] == "conda-forge"
    assert "defaults" not in spec["channels"]
    pins = pyproject_pins()
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    assert pip, env
    for line in pip:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
        assert name.lower() in pins, f"{env.name}: {name} is not a dependency in pyproject.toml"
        assert pins[name.lower()] == version, f"{env.name}: {name}=={version} but pyproject pins {pins[name.lower()]}"
    conda_pkgs = [d for d in spec["dependencies"] if isinstance(d, str)]
    assert all("=" in d for d in conda_pkgs), f"{env.name}: unpinned conda package"
