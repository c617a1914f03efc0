"""A run killed hard in the middle of `train` resumes and gives the metrics of a run never killed.

The run never killed is the session's tiny demo (the `tiny_run` fixture of tests/conftest.py).
A copy of it, with the full model's training outputs and log and the later stages' outputs removed,
reruns `train` and later stages; it is killed with SIGKILL (its whole process group, as a power loss or a SLURM job kill
would) while `train` is in its epochs, then resumed the way docs/resume.md tells a user:
`snakemake --unlock`, then `--rerun-incomplete`. Training on the CPU is deterministic for a fixed
seed and the same thread count (both runs train with one thread), so evaluate/metrics.tsv must
match value for value.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from workflow_tools import TINY, TINY_ARGS, copy_workflow, snakemake_command

RUN = TINY["run"]
UPSTREAM = {"simulate", "preflight", "annotate", "describe", "embed_plan", "embed_shard", "embed", "graph", "split"}
TIMEOUT = 600  # seconds for any one Snakemake call


@dataclass
class Job:
    """A Snakemake process started in its own session (process group) and the file of its output."""

    proc: subprocess.Popen
    out: Path

    def output(self) -> str:
        return self.out.read_text()


def start(root: Path, *args: str) -> Job:
    """Snakemake on ``root`` with the tiny configuration, one core (so one thread per job)."""
    cmd, env = snakemake_command(root, *TINY_ARGS, *args, cores=1)
    out = root / f"snakemake_{len(list(root.glob('snakemake_*.out')))}.out"
    with out.open("w") as handle:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Job(proc, out)


def finish(job: Job, *, check: bool = True) -> str:
    """Wait for ``job`` and return its output; AssertionError with the tail when it failed and ``check``."""
    try:
        job.proc.wait(timeout=TIMEOUT)
    finally:
        if job.proc.poll() is None:
            os.killpg(job.proc.pid, signal.SIGKILL)
    if check and job.proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({job.proc.returncode}):\n{job.output()[-5000:]}")
    return job.output()


def run(root: Path, *args: str, check: bool = True) -> str:
    return finish(start(root, *args), check=check)


def descendants(pid: int) -> set[int]:
    """Process ids below ``pid`` (from /proc), to check that the kill left none running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace").split("\0")
    except OSError:
        return []


def jobs(text: str) -> set[str]:
    """Rules of the jobs a Snakemake run started."""
    return set(re.findall(r"^\s*(?:local)?rule (\w+):", text, flags=re.M))


def kill_during_training(root: Path, job: Job) -> None:
    """SIGKILL the whole Snakemake process group once `train` has logged its first epoch."""
    log = root / "logs" / RUN / "train_full.log"
    deadline = time.monotonic() + TIMEOUT
    while not (log.exists() and re.search(r"\bepoch 1\b", log.read_text())):
        if job.proc.poll() is not None:
            raise AssertionError(f"snakemake ended ({job.proc.returncode}) before train ran:\n{job.output()[-5000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"train did not start within {TIMEOUT} s")
        time.sleep(0.05)
    below = descendants(job.proc.pid)
    assert any({"grape", "train"} <= set(cmdline(p)) for p in below if alive(p)), "no `grape train` below snakemake"
    os.killpg(job.proc.pid, signal.SIGKILL)
    job.proc.wait(timeout=30)
    for pid in below:  # a power loss leaves nothing running: neither must this kill
        for _ in range(100):
            if not alive(pid):
                break
            time.sleep(0.05)
        assert not alive(pid), f"process {pid} ({' '.join(cmdline(pid))[:200]}) survived the kill"


@pytest.fixture(scope="module")
def runs(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The shared run (never killed) and a copy whose full-model training was killed and resumed."""
    killed = copy_workflow(tmp_path_factory.mktemp("resume") / "killed", run=tiny_run)
    for later in ("train/full", "network", "evaluate", "report"):  # what the full model's training feeds
        shutil.rmtree(killed / "results" / RUN / later)
    (killed / "logs" / RUN / "train_full.log").unlink()
    kill_during_training(killed, start(killed))
    train_dir = killed / "results" / RUN / "train" / "full"
    after_kill = sorted(p.name for p in train_dir.glob("*")) if train_dir.exists() else []
    locked = run(killed, check=False)
    run(killed, "--unlock")
    resumed = run(killed, "--rerun-incomplete")
    return {"straight": tiny_run, "killed": killed, "locked": locked, "resumed": resumed,
            "train_outputs_after_kill": after_kill}


def test_a_killed_run_is_locked_until_unlocked(runs):
    assert "cannot be locked" in runs["locked"] and "--unlock" in runs["locked"]


def test_the_kill_came_before_training_wrote_its_predictions(runs):
    assert "predictions.h5ad" not in runs["train_outputs_after_kill"]


def test_resume_reruns_training_and_later_only(runs):
    started = jobs(runs["resumed"])
    assert "train" in started and "evaluate" in started
    assert not started & UPSTREAM, f"resume redid finished stages: {sorted(started & UPSTREAM)}"


def test_resumed_metrics_equal_an_uninterrupted_run(runs):
    paths = [root / "results" / RUN / "evaluate" / "metrics.tsv" for root in (runs["straight"], runs["killed"])]
    straight, resumed = (pd.read_csv(p, sep="\t") for p in paths)
    assert len(straight) > 0 and set(straight["model"]) >= {"grape", "no_change"}
    pd.testing.assert_frame_equal(resumed, straight, check_exact=True)
    preds = [ad.read_h5ad(root / "results" / RUN / "train" / "full" / "predictions.h5ad")
             for root in (runs["straight"], runs["killed"])]
    np.testing.assert_array_equal(preds[0].X, preds[1].X)
