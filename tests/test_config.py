from __future__ import annotations

import copy
import dataclasses

import pytest
import yaml

from grape import annotate, describe, embed, evaluate, graph, network, report, simulate, split, train
from grape.config import ConfigError, load_schema, validate_config
from grape.data import DatasetOptions


@pytest.fixture(scope="module")
def schema(repo):
    return load_schema(repo / "workflow" / "schemas" / "config.schema.yaml")


@pytest.fixture()
def config(repo):
    return yaml.safe_load((repo / "config.yaml").read_text())


def test_shipped_config_is_valid(config, schema, repo):
    validate_config(config, schema, base_dir=repo)


def test_defaults_are_filled(schema):
    cfg = validate_config({}, schema)
    assert cfg["train"]["epochs"] == 300
    assert cfg["graph"]["biotype_groups"] == {"protein_coding": "coding"}
    assert cfg["dataset"]["control"] == "ctrl"


def test_every_key_has_description_and_default(schema):
    def walk(node, path):
        for name, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{path}{name} lacks a description"
            assert "default" in sub, f"{path}{name} lacks a default"
            walk(sub, f"{path}{name}.")

    walk(schema, "")


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"train": {"epoch": 3}}, "train.epoch"),
        ({"graph": {"top_k": 0}}, "graph.top_k"),
        ({"unknown_section": {}}, "unknown_section"),
        ({"dataset": {"source": "h5ad", "path": "nowhere.h5ad"}}, "dataset.path"),
        ({"describe": {"table": "missing.tsv"}}, "describe.table"),
        ({"dataset": {"source": "h5ad"}}, "dataset"),
    ],
)
def test_bad_config_names_the_key(config, schema, tmp_path, patch, key):
    bad = copy.deepcopy(config)
    for section, values in patch.items():
        bad.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(bad, schema, base_dir=tmp_path)


SECTIONS = {
    "simulate": (simulate.Options, ["simulate"]),
    "annotate": (annotate.Options, ["dataset", "annotate", "download"]),
    "describe": (describe.Options, ["describe", "download"]),
    "embed": (embed.Options, ["embed"]),
    "graph": (graph.Options, ["graph"]),
    "split": (split.Options, ["dataset", "split"]),
    "train": (train.Options, ["dataset", "train"]),
    "network": (network.Options, ["network"]),
    "evaluate": (evaluate.Options, ["dataset", "evaluate"]),
    "report": (report.Options, ["report"]),
}
WORKFLOW_KEYS = {"source", "path", "gtf", "cdna", "ncrna", "table", "shards", "gpus_per_job", "ablations",
                 "name", "url", "sha256", "md5", "member", "subset"}
# Options fields that the workflow sets per job rather than from the config: train's --ablation
# comes from the {variant} wildcard (rules/common.smk train_options), so it has no schema key.
PER_JOB_FIELDS = {"train": {"ablation"}}


@pytest.mark.parametrize("stage", sorted(SECTIONS))
def test_stage_options_match_schema(schema, stage):
    """The CLI options of each stage are exactly the schema keys the workflow passes, with equal defaults."""
    options_cls, sections = SECTIONS[stage]
    expected = {}
    for section in sections:
        for key, sub in schema["properties"][section]["properties"].items():
            if key not in WORKFLOW_KEYS:
                expected[key] = sub["default"]
    fields = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
              for f in dataclasses.fields(options_cls) if f.name not in PER_JOB_FIELDS.get(stage, set())}
    assert fields == expected


def test_dataset_options_are_shared():
    assert issubclass(train.Options, DatasetOptions) and issubclass(evaluate.Options, DatasetOptions)
