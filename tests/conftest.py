"""Shared fixtures: tiny inputs built in the test, the optional real data beside the repo, one tiny workflow run.

The tiny run (and the real SLURM test, where it runs) start in the background as soon as the tests
are collected, so that they go on beside the unit tests; the fixtures below wait for them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from workflow_tools import (
    TINY,
    TINY_ARGS,
    TINY_FILE,
    Background,
    copy_workflow,
    slurm_test_skip_reason,
    snakemake_command,
    write_config,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SLURM_SCRIPT = REPO / "tests" / "slurm" / "run_slurm_test.sh"
TINY_TIMEOUT = 900  # seconds for the shared tiny run
SLURM_TIMEOUT = 1500  # seconds for the SLURM test (it may install SLURM first)

# A SLURM client configuration that fails at once. Every Snakemake process loads the SLURM executor
# plugin, whose import runs `scontrol show config` (for a help text); where SLURM is installed but no
# controller runs (as after tests/slurm/run_slurm_test.sh), that call retries for MessageTimeout
# (10 s) before it gives up, in each of the suite's dozens of Snakemake calls. The tests run Snakemake
# locally, so they point SLURM_CONF here; the SLURM test hands its cluster the real one.
NO_CONTROLLER = """\
# written by tests/conftest.py: the local Snakemake runs of the tests reach no SLURM controller
ClusterName=none
SlurmctldHost=localhost
MessageTimeout=1
NodeName=localhost CPUs=1
PartitionName=none Nodes=localhost
"""

_SESSION: dict[str, object] = {}  # temporary folder, SLURM_CONF before, background jobs


def pytest_configure(config: pytest.Config) -> None:
    folder = Path(tempfile.mkdtemp(prefix="grape-tests-"))
    (folder / "slurm.conf").write_text(NO_CONTROLLER)
    _SESSION.update(folder=folder, slurm_conf=os.environ.get("SLURM_CONF"), jobs={})
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the shared tiny run is slow (`-m "not slow"` leaves out every pipeline run)."""
    for item in items:
        if "tiny_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the tiny run if a collected test needs it, and the SLURM test if it is collected and can run."""
    needed = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if "tiny_run" in needed:
        start_tiny_run()
    if "slurm_run" in needed and not slurm_test_skip_reason():
        start_slurm_test()


def start_tiny_run() -> None:
    folder = _SESSION["folder"]
    root = copy_workflow(folder / "tiny" / "project")
    write_config(root, TINY, TINY_FILE)
    cmd, env = snakemake_command(root, *TINY_ARGS)
    _SESSION["jobs"]["tiny_run"] = (root, Background(cmd, cwd=root, env=env, log=folder / "tiny.log"))


def start_slurm_test() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}  # the script's cluster, not the stub
    cmd = ["bash", str(SLURM_SCRIPT), str(Path(sys.executable).parent)]
    _SESSION["jobs"]["slurm"] = (REPO, Background(cmd, cwd=REPO, env=env, log=_SESSION["folder"] / "slurm.log"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    for _, job in _SESSION.get("jobs", {}).values():
        job.stop()
    if _SESSION.get("slurm_conf") is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = _SESSION["slurm_conf"]
    if "folder" in _SESSION:
        shutil.rmtree(_SESSION["folder"], ignore_errors=True)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real development data not present at {SHARED_DATA} (outside users do not have it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_run() -> Path:
    """A copy of the workflow with the tiny demo (workflow_tools.TINY) run to completion, once per session.

    Tests read it and dry-run it as it is; a test that changes files or runs jobs works on its own copy,
    ``copy_workflow(tmp_path / "project", run=tiny_run)``, which Snakemake finds complete.
    """
    if "tiny_run" not in _SESSION["jobs"]:  # asked for by a test that did not name it
        start_tiny_run()
    root, job = _SESSION["jobs"]["tiny_run"]
    status, output = job.wait(TINY_TIMEOUT)
    assert status == 0, f"the tiny run failed ({status}):\n{output[-6000:]}"
    return root


@pytest.fixture(scope="session")
def slurm_run() -> tuple[int, str]:
    """Exit status and output of tests/slurm/run_slurm_test.sh, started when the tests were collected."""
    reason = slurm_test_skip_reason()
    if reason:
        pytest.skip(reason)
    if "slurm" not in _SESSION["jobs"]:
        start_slurm_test()
    _, job = _SESSION["jobs"]["slurm"]
    return job.wait(SLURM_TIMEOUT)
