from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grape.annotation import annotate

from grape.annotation import describe

from grape.features import embed

from grape.evaluation import evaluate

from grape.graph import build as graph

from grape.graph import network

from grape.data import preflight

from grape.evaluation import report

from grape.demo import simulate

from grape.data import split

from grape.model import train
from grape.config import ConfigError, load_schema, validate_config
from grape.data.dataset import DatasetOptions


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
    "preflight": (preflight.Options, []),  # reads the whole config from --config
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


# --------------------------------------------------------------------------- numeric strings


def test_numeric_strings_are_coerced_where_the_schema_says_number(config, schema, repo):
    cfg = copy.deepcopy(config)
    cfg["train"].update(lr="1e-3", epochs="3", weight_decay="0")
    cfg["graph"]["min_similarity"] = "-0.5"
    cfg["embed"]["dna_max_length"] = "512"  # type [integer, null]
    validate_config(cfg, schema, base_dir=repo)
    assert cfg["train"]["lr"] == 0.001 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["epochs"] == 3 and isinstance(cfg["train"]["epochs"], int)
    assert cfg["train"]["weight_decay"] == 0
    assert cfg["graph"]["min_similarity"] == -0.5
    assert cfg["embed"]["dna_max_length"] == 512 and isinstance(cfg["embed"]["dna_max_length"], int)


def test_yaml_exponent_without_dot_is_a_string_and_still_accepted(schema):
    cfg = yaml.safe_load("train:\n  lr: 1e-3\n  epochs: 1e2\n")
    assert cfg["train"]["lr"] == "1e-3"  # PyYAML's reading of YAML 1.1
    validate_config(cfg, schema)
    assert cfg["train"]["lr"] == 0.001 and cfg["train"]["epochs"] == 100


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"epochs": "three"}, r"config key train\.epochs: 'three' is not of type 'integer'"),
        ({"epochs": "2.5"}, r"config key train\.epochs: '2\.5' is not of type 'integer'"),
        ({"lr": "nan"}, r"config key train\.lr: 'nan' is not of type 'number'"),
        ({"epochs": "0"}, r"config key train\.epochs: 0 is less than the minimum of 1"),
    ],
)
def test_strings_that_are_no_valid_number_are_refused_naming_the_key(schema, patch, match):
    with pytest.raises(ConfigError, match=match):
        validate_config({"train": dict(patch)}, schema)


def test_strings_stay_strings_where_the_schema_allows_them(schema):
    cfg = validate_config({"run": "123", "dataset": {"control": "0", "subset": {"dose": "1"}}}, schema)
    assert cfg["run"] == "123" and cfg["dataset"]["control"] == "0"
    assert cfg["dataset"]["subset"] == {"dose": "1"}


def test_snakemake_config_idiom_reaches_the_schema_as_numbers(repo, tmp_path):
    """`snakemake --config "train={epochs: 3, lr: 1e-3}"` hands strings ("3", "1e-3"); they validate as numbers."""
    exe = Path(sys.executable).with_name("snakemake")
    if not exe.exists():
        pytest.skip("snakemake is not installed beside this Python")
    out = tmp_path / "seen.json"
    (tmp_path / "Snakefile").write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(repo)!r})\n"
        "from grape.config import validate_config\n"
        "raw = json.loads(json.dumps(config))\n"
        f"validate_config(config, {str(repo / 'workflow' / 'schemas' / 'config.schema.yaml')!r})\n"
        f"open({str(out)!r}, 'w').write(json.dumps({{'raw': raw['train'], 'validated': config['train']}}))\n"
        "rule all:\n    run:\n        pass\n"
    )
    subprocess.run([str(exe), "-n", "-c1", "--config", "train={epochs: 3, lr: 1e-3}"], cwd=tmp_path,
                   check=True, capture_output=True, text=True)
    seen = json.loads(out.read_text())
    assert seen["raw"]["epochs"] == "3" and seen["raw"]["lr"] == "1e-3"  # what Snakemake hands over
    assert seen["validated"]["epochs"] == 3 and seen["validated"]["lr"] == 0.001
