"""The embedding rules: embed.shards jobs, the GPU resource they request, and the merge that graph reads.

Dry runs only (seconds); the whole chain runs in tests/test_workflow.py, and the plan /
shard / merge modes are checked against one job in tests/test_embed.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from workflow_tools import copy_workflow, scheduled, snakemake, write_config


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("embed_workflow") / "project")


def dry_run(workflow: Path, embed: dict) -> str:
    name = write_config(workflow, {"run": "t", "embed": embed}, "c.yaml")
    result = snakemake(workflow, "--configfile", name, "-n", "results/t/embed/text.npz", timeout=300)
    return result.stdout + result.stderr


def shard_resources(text: str) -> list[str]:
    blocks = re.split(r"\n(?=\S*rule )", text)
    return [re.search(r"resources: (.*)", b).group(1) for b in blocks if re.search(r"rule embed_shard:", b)]


def test_shards_make_one_job_each_with_a_gpu_when_asked(workflow):
    text = dry_run(workflow, {"shards": 3, "gpus_per_job": 1})
    counts = scheduled(text)
    assert counts["embed_plan"] == 1 and counts["embed_shard"] == 3 and counts["embed"] == 1
    resources = shard_resources(text)
    assert len(resources) == 3 and all("gpu=1" in r for r in resources)
    for i in range(3):
        assert f"results/t/embed/shards/text.{i}.npz" in text


def test_cpu_only_shards_request_no_gpu(workflow):
    text = dry_run(workflow, {"shards": 2})
    assert scheduled(text)["embed_shard"] == 2
    resources = shard_resources(text)
    assert len(resources) == 2 and not any(re.search(r"gpu=[1-9]", r) for r in resources)
