"""The real SLURM test (tests/slurm/run_slurm_test.sh), run where it is asked for.

It installs Debian's SLURM and munge and starts daemons, so it runs only with
GRAPE_TEST_SLURM=1 (set by .ci/run) as root with apt-get; otherwise it is skipped.
The script starts when the tests are collected (tests/conftest.py, `slurm_run`): it mostly
waits on SLURM's status polls, so it runs beside the other tests.
"""

from __future__ import annotations

import sys

import pytest


@pytest.mark.slow
def test_demo_runs_through_slurm_profile(slurm_run, capsys):
    status, output = slurm_run
    with capsys.disabled():  # the job ids and states it saw, in the test log even when it passes
        sys.stdout.write("\n" + "\n".join(l for l in output.splitlines() if l.startswith("[slurm-test]")) + "\n")
    assert status == 0, output[-6000:]
    assert "all COMPLETED" in output
