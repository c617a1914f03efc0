"""The embedding rules: embed.shards jobs, the GPU resource they request, and the merge that graph reads.

Dry runs only (seconds); the whole chain runs in tests/test_workflow.py, and the plan /
shard / merge modes are checked against one job in tests/test_embed.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("embed_workflow")
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, root / name)
    for name in ("rules", "workflow", "grape", "envs"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def dry_run(workflow: Path, embed: dict) -> str:
    (workflow / "c.yaml").write_text(yaml.safe_dump({"run": "t", "embed": embed}))
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(workflow / "Snakefile"), "--directory", str(workflow),
         "--configfile", str(workflow / "c.yaml"), "--cores", "2", "-n", "results/t/embed/text.npz"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def jobs(text: str) -> dict[str, int]:
    rows = re.findall(r"^(\w+)\s+(\d+)$", text.split("Job stats:", 1)[1], flags=re.M)
    return {rule: int(n) for rule, n in rows if rule != "total"}


def shard_resources(text: str) -> list[str]:
    blocks = re.split(r"\n(?=\S*rule )", text)
    return [re.search(r"resources: (.*)", b).group(1) for b in blocks if re.search(r"rule embed_shard:", b)]


def test_shards_make_one_job_each_with_a_gpu_when_asked(workflow):
    text = dry_run(workflow, {"shards": 3, "gpus_per_job": 1})
    counts = jobs(text)
    assert counts["embed_plan"] == 1 and counts["embed_shard"] == 3 and counts["embed"] == 1
    resources = shard_resources(text)
    assert len(resources) == 3 and all("gpu=1" in r for r in resources)
    for i in range(3):
        assert f"results/t/embed/shards/text.{i}.npz" in text


def test_cpu_only_shards_request_no_gpu(workflow):
    text = dry_run(workflow, {"shards": 2})
    assert jobs(text)["embed_shard"] == 2
    resources = shard_resources(text)
    assert len(resources) == 2 and not any(re.search(r"gpu=[1-9]", r) for r in resources)
