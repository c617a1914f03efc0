"""conda cannot run here: this test keeps each rule's conda env consistent with the rule and with pyproject.toml.

The rules are read from the parsed workflow (Snakemake's own rule objects), so a rule without a
`conda:` directive, an env file that is not there, an env file no rule uses, or an env that lacks a
package that the rule's stage imports when it loads (anywhere in the stage's `grape` import closure)
fails here.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from workflow_tools import REPO, copy_workflow

# Prints each rule of the workflow as Snakemake parsed it (run in the copy's directory).
LIST_RULES = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path("Snakefile"),
                            workdir=Path("."))._workflow
    rules = [{"name": r.name, "conda": r.conda_env, "snakefile": str(r.snakefile), "shell": r.shellcmd,
              "command": bool(r.is_shell or r.is_run or r.script or r.notebook or r.wrapper)} for r in workflow.rules]
sys.stdout.write("RULES " + json.dumps(rules) + "\\n")
"""
# `python -m grape <stage>`, also as the rules write it: `{params.grape} <stage>` (params.grape is the command).
STAGE = re.compile(r"(?:\bpython -m grape|\{params\.grape\})\s+(\w+)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", dep).groups()
        pins[normalize(name)] = version
    return pins


def env_files() -> list[Path]:
    return sorted((REPO / "envs").glob("*.yaml"))


def requirement_name(text: str) -> str:
    return normalize(re.split(r"[=<>!~;\[ (]", text.strip(), maxsplit=1)[0])


def env_packages(path: Path) -> set[str]:
    """Normalised names of the packages an env file installs: those it lists and what they require.

    The requirements are read from the distributions installed here (the same pins), without extras.
    """
    spec = yaml.safe_load(path.read_text())
    todo = [requirement_name(item) for dep in spec["dependencies"]
            for item in (dep["pip"] if isinstance(dep, dict) else [dep])]
    names: set[str] = set()
    while todo:
        name = todo.pop()
        if name in names:
            continue
        names.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [requirement_name(r) for r in requires if "extra ==" not in r]
    return names


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> list[dict]:
    root = copy_workflow(tmp_path_factory.mktemp("envs") / "project")
    result = subprocess.run([sys.executable, "-c", LIST_RULES], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("RULES "))
    found = json.loads(line.removeprefix("RULES "))
    for rule in found:  # the env file as it lies in the repository
        if rule["conda"] is not None:
            rule["env"] = (REPO / Path(rule["snakefile"]).relative_to(root)).parent / rule["conda"]
    return found


def module_file(name: str) -> Path | None:
    """The source file of grape module ``name`` (a package's __init__.py), or None when there is none."""
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports(tree: ast.AST, *, lazy: bool = False):
    """(import node, inside a function) for each import that can run; `if TYPE_CHECKING:` bodies never do."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (item for child in node.orelse for item in imports(ast.Module([child], []), lazy=lazy))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, lazy
        else:
            yield from imports(node, lazy=lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))


def third_party_imports(stage: str) -> dict[str, str]:
    """Third-party top-level modules that the grape import closure of `python -m grape <stage>` imports.

    Maps each to the grape module that imports it. The closure follows every grape import, also one
    inside a function; third-party modules count where a module imports them at load time (an import
    inside a function is how a module keeps a dependency off the stages that do not call it).
    """
    todo = ["grape", "grape.__main__", "grape.cli", "grape.stages", f"grape.stages.{stage}"]
    seen: set[str] = set()
    found: dict[str, str] = {}
    while todo:
        name = todo.pop()
        path = module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node, lazy in imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    mod = f"{base}.{node.module}" if node.module else base
                else:
                    mod = node.module
                targets = [mod, *(f"{mod}.{alias.name}" for alias in node.names)]
            for target in targets:
                top = target.split(".")[0]
                if top == "grape":
                    parts = target.split(".")
                    todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
                elif not lazy and top != "__future__" and top not in sys.stdlib_module_names:
                    found.setdefault(top, name)
    return found


def test_every_rule_that_runs_something_has_an_env_file_of_envs(rules):
    assert len(rules) > 10
    for rule in rules:
        if not rule["command"]:
            assert rule["shell"] is None, rule["name"]
            continue
        assert rule["conda"] is not None, f"rule {rule['name']} has no conda: env"
        env = rule["env"].resolve()
        assert env.is_file(), f"rule {rule['name']}: conda env {rule['conda']} is not a file"
        assert env.parent == REPO / "envs", f"rule {rule['name']}: {rule['conda']} is not in envs/"
        assert {"name", "channels", "dependencies"} <= set(yaml.safe_load(env.read_text())), env.name
    used = {rule["env"].resolve() for rule in rules if rule["command"]}
    assert set(env_files()) == used, f"env files no rule uses: {sorted(p.name for p in set(env_files()) - used)}"


def test_each_rules_env_has_what_its_stage_imports(rules):
    distributions = importlib.metadata.packages_distributions()
    stages = 0
    for rule in rules:
        match = STAGE.search(rule["shell"] or "")
        if match is None:
            continue
        stages += 1
        packages = env_packages(rule["env"])
        for module, importer in sorted(third_party_imports(match.group(1)).items()):
            assert module in distributions, f"{importer} imports {module}, which is not installed here"
            provided = {normalize(d) for d in distributions[module]}
            assert provided & packages, (f"rule {rule['name']} (grape {match.group(1)}) runs in {rule['env'].name}, "
                                         f"which lacks {sorted(provided)} that {importer} imports ({module})")
    assert stages > 10


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
        assert normalize(name) in pins, f"{env.name}: {name} is not a dependency in pyproject.toml"
        assert pins[normalize(name)] == version, f"{env.name}: {name}=={version} but pyproject pins {pins[normalize(name)]}"
    conda_pkgs = [d for d in spec["dependencies"] if isinstance(d, str)]
    assert all("=" in d for d in conda_pkgs), f"{env.name}: unpinned conda package"
