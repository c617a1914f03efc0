"""The real SLURM test (tests/slurm/run_slurm_test.sh), run where it is asked for.

It installs Debian's SLURM and munge and starts daemons, so it runs only with
GRAPE_TEST_SLURM=1 (set by .ci/run) as root with apt-get; otherwise it is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "slurm" / "run_slurm_test.sh"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("GRAPE_TEST_SLURM") != "1", reason="set GRAPE_TEST_SLURM=1 to run the real SLURM test")
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the SLURM test needs root")
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="the SLURM test needs apt-get")
def test_demo_runs_through_slurm_profile(capsys):
    result = subprocess.run(["bash", str(SCRIPT), str(Path(sys.executable).parent)], capture_output=True,
                            text=True, timeout=1500)
    with capsys.disabled():  # the job ids and states it saw, in the test log even when it passes
        sys.stdout.write("\n" + "\n".join(l for l in result.stdout.splitlines() if l.startswith("[slurm-test]")) + "\n")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "all COMPLETED" in result.stdout
