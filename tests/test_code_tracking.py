"""Rules track the code their stage runs, computed (grape.codedeps), and the Snakemake process stays light.

- every module a stage imports is in the closure its rule hashes (the import closure of
  ``grape.stages.<stage>``), and every rule that runs a stage hashes that stage;
- the hash ignores comments and docstrings and follows code edits;
- after a run, editing a help text (a ``description`` of the schema) reruns nothing;
- Snakemake's parse imports neither grape nor what its stages need.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from grape import codedeps
from workflow_tools import TINY, TINY_ARGS, TINY_FILE, copy_workflow, snakemake

REPO = Path(__file__).resolve().parents[1]
STAGES = sorted(p.stem for p in (REPO / "grape" / "stages").glob("*.py") if p.stem != "__init__")

# Imports every stage once (so that the third-party modules are loaded), then each stage again with
# the grape modules forgotten: the grape modules it then imports are exactly those it needs.
IMPORTED = textwrap.dedent("""
    import importlib, json, sys
    stages = sys.argv[1:]
    for stage in stages:
        importlib.import_module(f"grape.stages.{stage}")
    found = {}
    for stage in stages:
        for name in [n for n in sys.modules if n == "grape" or n.startswith("grape.")]:
            del sys.modules[name]
        importlib.import_module(f"grape.stages.{stage}")
        found[stage] = sorted(getattr(m, "__file__", None) or n for n, m in sys.modules.items()
                              if n == "grape" or n.startswith("grape."))
    print(json.dumps(found))
""")


def test_every_stage_is_found():
    assert {"train", "graph", "embed", "annotate", "ensembl", "dataset", "report"} <= set(STAGES)


def test_a_stage_imports_only_modules_its_rule_tracks():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", IMPORTED, *STAGES], capture_output=True, text=True, cwd=REPO,
                            env=env, timeout=600, check=True)
    imported = json.loads(result.stdout.splitlines()[-1])
    for stage in STAGES:
        tracked = {p.resolve() for p in codedeps.stage_files(stage)}
        untracked = {Path(f).resolve() for f in imported[stage]} - tracked
        assert not untracked, f"grape.stages.{stage} imports {sorted(map(str, untracked))}, which its rule does not track"
        assert (REPO / "grape" / "cli.py").resolve() not in tracked, stage  # the dispatcher reruns nothing


def _rules():
    """(rule name, its text) of every rule in rules/*.smk."""
    for path in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule \w+:)", path.read_text(), flags=re.M):
            match = re.match(r"rule (\w+):", block)
            if match:
                yield match.group(1), block


def test_every_rule_hashes_the_stage_it_runs():
    rules = dict(_rules())
    assert len(rules) >= 15
    for name, text in rules.items():
        if name == "all":
            continue
        ran = re.findall(r"\{params\.grape\} (\w+)", text)
        hashed = re.findall(r'^\s+code=code_hash\("(\w+)"\),$', text, flags=re.M)
        assert ran and ran == hashed, f"rule {name} runs stage(s) {ran} but hashes the code of {hashed}"
        assert re.search(r"^\s+grape=GRAPE,$", text, flags=re.M), f"rule {name}: no params grape=GRAPE"
        assert ran[0] in STAGES, name
        assert "python -m grape" not in text and "code(" not in text.replace("code_hash(", ""), name


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def test_closure_follows_every_kind_of_import(tmp_path):
    root = _package(tmp_path / "grape", {
        "__init__.py": "",
        "cli.py": "import grape.stages.train\n",
        "stages/__init__.py": "",
        "stages/train.py": "from grape.model.train import run\nfrom ..data import split\n",
        "model/__init__.py": "from grape import io\n",
        "model/train.py": "def run():\n    from .gnn import Model\n    import grape.features.models as m\n",
        "model/gnn.py": "import importlib\nX = importlib.import_module('grape.graph.build')\n",
        "features/__init__.py": "",
        "features/models.py": "",
        "graph/__init__.py": "",
        "graph/build.py": "",
        "data/__init__.py": "",
        "data/split.py": "from grape.data import normalize\n",
        "data/normalize.py": "",
        "data/unused.py": "",
        "io/__init__.py": "",
    })
    found = {p.relative_to(root).as_posix() for p in codedeps.stage_files("train", root=root)}
    assert found == {"__init__.py", "stages/__init__.py", "stages/train.py", "model/__init__.py", "model/train.py",
                     "model/gnn.py", "features/__init__.py", "features/models.py", "graph/__init__.py", "graph/build.py",
                     "data/__init__.py", "data/split.py", "data/normalize.py", "io/__init__.py"}
    with pytest.raises(ValueError, match="grape.stages.missing"):
        codedeps.stage_files("missing", root=root)


def test_hash_ignores_comments_and_docstrings_and_follows_code(tmp_path):
    root = tmp_path / "grape"
    shutil.copytree(REPO / "grape", root, ignore=shutil.ignore_patterns("__pycache__"))
    before = {stage: codedeps.stage_hash(stage, root=root) for stage in STAGES}
    gnn = root / "model" / "gnn.py"
    original = gnn.read_text()
    assert original.startswith('"""')
    gnn.write_text('"""Edited docstring.\n\n' + original[3:].replace("\n", "\n# a comment\n", 3) + "\n\n# edited\n")
    (root / "cli.py").write_text((root / "cli.py").read_text() + "\nEDITED = True\n")
    assert {stage: codedeps.stage_hash(stage, root=root) for stage in STAGES} == before
    gnn.write_text(original + "\nEDITED = True\n")
    after = {stage: codedeps.stage_hash(stage, root=root) for stage in STAGES}
    changed = {stage for stage in STAGES if after[stage] != before[stage]}
    assert "train" in changed
    assert changed == {stage for stage in STAGES if gnn.resolve() in {p.resolve() for p in codedeps.stage_files(stage, root=root)}}
    assert {"annotate", "describe", "embed", "simulate", "split"}.isdisjoint(changed)


# --- the workflow ---------------------------------------------------------------------------

HEAVY = {"torch", "torch_geometric", "pandas", "anndata", "scanpy", "pyensembl", "transformers", "sklearn", "scipy",
         "h5py", "grape"}

# Runs Snakemake in this process and writes the top-level modules it imported when it exits.
MODULES = textwrap.dedent("""
    import atexit, json, sys
    out = sys.argv.pop(1)
    atexit.register(lambda: open(out, "w").write(json.dumps(sorted({n.split(".")[0] for n in sys.modules}))))
    from snakemake.cli import main
    sys.argv[0] = "snakemake"
    main()
""")


def _parse_modules(snakefile: Path, workdir: Path, out: Path, *args: str) -> set[str]:
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    env.pop("PYTHONPATH", None)
    subprocess.run([sys.executable, "-c", MODULES, str(out), "--snakefile", str(snakefile), "--directory", str(workdir),
                    "-n", "--cores", "1", *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
                   check=True)
    return set(json.loads(out.read_text()))


def test_snakemake_parse_imports_nothing_heavy(tmp_path):
    """Snakemake's own imports (a trivial workflow) are the baseline: pandas is one of them today."""
    trivial = tmp_path / "trivial"
    trivial.mkdir()
    (trivial / "Snakefile").write_text('rule a:\n    output: "a.txt"\n    shell: "touch {output}"\n')
    baseline = _parse_modules(trivial / "Snakefile", trivial, tmp_path / "baseline.json")
    root = copy_workflow(tmp_path / "workflow")
    (root / TINY_FILE).write_text(yaml.safe_dump(TINY))
    imported = _parse_modules(root / "Snakefile", root, tmp_path / "workflow.json", "--configfile", str(root / TINY_FILE))
    assert "snakemake" in baseline and "yaml" in imported
    assert not (imported - baseline) & HEAVY, sorted((imported - baseline) & HEAVY)


def _dry_run(root: Path) -> str:
    result = snakemake(root, "-n", *TINY_ARGS)
    return result.stdout + result.stderr


@pytest.mark.slow
def test_editing_a_help_text_reruns_nothing(tiny_run, tmp_path):
    root = copy_workflow(tmp_path / "project", run=tiny_run)
    assert "Nothing to be done" in _dry_run(root)
    schema = root / "workflow" / "schemas" / "config.schema.yaml"
    original = schema.read_text()
    parsed = yaml.safe_load(original)
    description = parsed["properties"]["train"]["properties"]["epochs"]["description"]
    assert original.count(description) == 1
    try:
        schema.write_text(original.replace(description, description + " Edited help text."))
        assert "Edited help text." in yaml.safe_load(schema.read_text())["properties"]["train"]["properties"]["epochs"]["description"]
        text = _dry_run(root)
    finally:
        schema.write_text(original)
    assert "Nothing to be done" in text, text[-3000:]
