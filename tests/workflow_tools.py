"""Helpers of the tests that run Snakemake: copy the workflow to a temporary project, run it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "config.yaml")
WORKFLOW_DIRS = ("rules", "workflow", "grape", "envs")


def copy_workflow(root: Path, *, shared: Path | None = None) -> Path:
    """Copy the workflow files to ``root``; with ``shared``, link ``root/../shared`` to it (as in a checkout)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        shutil.copy(REPO / name, root / name)
    for name in WORKFLOW_DIRS:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    if shared is not None:
        link = root.parent / "shared"
        if not link.exists():
            link.symlink_to(shared, target_is_directory=True)
    return root


def snakemake(root: Path, *args: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run Snakemake on a copied workflow with this interpreter's environment first on PATH (one thread per job)."""
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile"), "--directory", str(root),
           "--cores", "2", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=root)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result
