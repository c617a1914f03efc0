"""Helpers of the tests that run Snakemake: copy the workflow (or a finished run of it), run Snakemake, read its jobs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "config.yaml")
WORKFLOW_DIRS = ("rules", "workflow", "grape", "envs")

# The tiny demo that the workflow tests share (tests/conftest.py runs it once per session):
# 80 genes, 30 epochs, and one ablation, so the variant wildcard runs end to end.
TINY = {
    "run": "tiny",
    "simulate": {"n_genes": 80, "n_modules": 3, "n_singles": 12, "n_doubles": 6,
                 "cells_per_condition": 15, "control_cells": 60},
    "graph": {"top_k": 5},
    "train": {"epochs": 30, "patience": 15, "hidden": 16, "batch_size": 8, "pretrain_epochs": 5,
              "ablations": ["no_gsl"]},
}
TINY_FILE = "tiny.yaml"
# One thread per training job: the two training jobs of the tiny run go side by side on two cores, and
# training is deterministic for a fixed thread count, so a run resumed with `--cores 1` (tests/test_resume.py)
# must give the shared run's metrics value for value.
TINY_ARGS = ("--configfile", TINY_FILE, "--set-threads", "train=1")


def copy_workflow(root: Path, *, run: Path | None = None, shared: Path | None = None) -> Path:
    """Copy the workflow files to ``root`` and return it.

    With ``run``, copy that finished project instead (results, resources, logs and the ``.snakemake``
    records, modification times kept, paths in the records moved to the copy), so Snakemake finds the
    copy complete and a test can change it without running the pipeline again. With ``shared``, link ``root/../shared`` to it (as in a checkout).
    """
    if run is not None:
        shutil.copytree(run, root, symlinks=True, ignore=shutil.ignore_patterns("locks"))
        # Snakemake records the code inputs by absolute path (under the workflow's base directory):
        # the copy's records name the copy's files, or Snakemake would see a changed set of inputs.
        for record in (root / ".snakemake" / "metadata").iterdir():
            text = record.read_text()
            if str(run) in text:
                record.write_text(text.replace(f"{run}/", f"{root}/"))
    else:
        root.mkdir(parents=True, exist_ok=True)
        for name in WORKFLOW_FILES:
            shutil.copy2(REPO / name, root / name)
        for name in WORKFLOW_DIRS:
            shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    if shared is not None:
        link = root.parent / "shared"
        if not link.exists():
            link.symlink_to(shared, target_is_directory=True)
    return root


def write_config(root: Path, config: dict, name: str = "test_config.yaml") -> str:
    """Write ``config`` as ``root/name`` and return ``name`` (for ``--configfile``)."""
    (root / name).write_text(yaml.safe_dump(config, sort_keys=False))
    return name


def snakemake_command(root: Path, *args: str, cores: int = 2) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of Snakemake on a copied workflow.

    This interpreter's environment comes first on PATH for the jobs, with one BLAS/OpenMP thread each.
    """
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile"), "--directory", str(root),
           "--cores", str(cores), *args]
    return cmd, env


def snakemake(root: Path, *args: str, timeout: int = 900, check: bool = True,
              cores: int = 2) -> subprocess.CompletedProcess:
    """Run Snakemake on a copied workflow; AssertionError with the tail of its output when it fails and ``check``."""
    cmd, env = snakemake_command(root, *args, cores=cores)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=root)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def scheduled(result: subprocess.CompletedProcess | str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run ({} when nothing is to be done)."""
    text = result if isinstance(result, str) else result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    assert "Job stats:" in text, text[-3000:]
    table = text.split("Job stats:", 1)[1]
    rows = re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)
    return {rule: int(n) for rule, n in rows if rule != "total"}


def slurm_test_skip_reason() -> str | None:
    """Why the real SLURM test (tests/slurm/run_slurm_test.sh) cannot run here, or None when it can."""
    if os.environ.get("GRAPE_TEST_SLURM") != "1":
        return "set GRAPE_TEST_SLURM=1 to run the real SLURM test"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the SLURM test needs root"
    if shutil.which("apt-get") is None:
        return "the SLURM test needs apt-get"
    return None


class Background:
    """A command started in its own process group as soon as the tests are collected; a test waits for it.

    The shared tiny run and the SLURM test spend most of their time on one core or waiting (one job
    after another, SLURM's status polls), so they run beside the unit tests instead of after them.
    """

    def __init__(self, cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("w") as handle:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait(self, timeout: float) -> tuple[int, str]:
        """Exit status and output (stdout and stderr together); the process group is killed after ``timeout``."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"{self.proc.args[:4]} ran past {timeout} s:\n{self.log.read_text()[-5000:]}")
        return self.proc.returncode, self.log.read_text()

    def stop(self) -> None:
        """End the process group (SIGTERM, so that the SLURM script stops its daemons; SIGKILL after 30 s)."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
