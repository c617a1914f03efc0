from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from grape import options as generated
from grape.config import STAGE_SECTIONS, WORKFLOW_KEYS, ConfigError, load_schema, validate_config
from grape.data.dataset import DatasetOptions
from grape.io.download import DownloadOptions, RetryPolicy
from grape.model import train
from grape.model.gnn import ModelConfig


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


JSON_SCHEMA_KEYWORDS = {"type", "description", "default", "enum", "const", "minimum", "maximum", "exclusiveMinimum",
                        "exclusiveMaximum", "items", "minItems", "uniqueItems", "pattern", "format", "minLength",
                        "additionalProperties", "properties", "required", "anyOf"}


def test_schema_keys_use_only_json_schema_keywords(schema):
    """A comma in an unquoted description of a flow mapping ({description: a, b, default: 0}) splits it
    into stray keys, which JSON Schema ignores: the help text the options show would be cut short."""
    def walk(node, path):
        for name, sub in node.get("properties", {}).items():
            stray = sorted(set(sub) - JSON_SCHEMA_KEYWORDS)
            assert not stray, f"{path}{name}: stray keys {stray} (quote its description)"
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
        ({"split": {"kind": "table", "table": "nowhere.tsv", "seeds": [1, 2]}}, "split.seeds"),
        ({"split": {"seeds": [1, 1]}}, "split.seeds"),
        ({"aggregate": {"n_boot": 0}}, "aggregate.n_boot"),
        ({"aggregate": {"metrics": ["pearson_dleta"]}}, "aggregate.metrics"),
    ],
)
def test_bad_config_names_the_key(config, schema, tmp_path, patch, key):
    bad = copy.deepcopy(config)
    for section, values in patch.items():
        bad.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(bad, schema, base_dir=tmp_path)


def test_repeated_splits_are_seeded_splits(schema, tmp_path):
    """split.seeds repeats a seeded split (simulation: the seed, logo: the fold); a fixed table is refused."""
    assert validate_config({}, schema)["split"]["seeds"] == []
    for kind in ("simulation", "logo"):
        assert validate_config({"split": {"kind": kind, "seeds": [1, 2]}}, schema)["split"]["seeds"] == [1, 2]
    (tmp_path / "split.tsv").write_text("condition\tsplit\n")
    table = {"split": {"kind": "table", "table": str(tmp_path / "split.tsv"), "seeds": [3]}}
    with pytest.raises(ConfigError, match=r"split\.seeds: .*split\.kind is table"):
        validate_config(table, schema)


# Options fields that the workflow sets per job rather than from the stage's config sections, with
# the schema key each one is filled from (None: no config key, e.g. a wildcard). train's --ablation
# comes from the {variant} wildcard, graph's --variant from {graph_variant}; the ensembl download
# takes its release from the file's path and species and server from annotate.ensembl_*; the
# dataset commands take dataset.name/url/... (workflow keys) as their own flags.
PER_JOB_FIELDS: dict[str, dict[str, str | None]] = {
    "train": {"ablation": None},
    "graph": {"variant": None},
    "ensembl": {"species": "annotate.ensembl_species", "release": "annotate.ensembl_release",
                "ensembl_url": "annotate.ensembl_url"},
    "dataset download": {"name": "dataset.name", "url": "dataset.url", "sha256": "dataset.sha256",
                         "md5": "dataset.md5", "member": "dataset.member"},
    "dataset subset": {"subset": "dataset.subset"},
}


def stage_options(stage: str) -> type:
    """The options dataclass the command line builds for a stage (``"dataset subset"``: a command of a stage)."""
    name, _, command = stage.partition(" ")
    module = importlib.import_module(f"grape.stages.{name}")
    return module.COMMANDS[command].options if command else module.Options


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _help(sub: dict) -> str:
    return " ".join(sub["description"].split())


@pytest.mark.parametrize("stage", sorted(STAGE_SECTIONS))
def test_stage_options_match_schema(schema, stage):
    """Each stage's options are exactly the schema keys of its config sections (grape.config.STAGE_SECTIONS)
    less the workflow keys, key by key: the same names, defaults and help as the schema."""
    options_cls = stage_options(stage)
    per_job = PER_JOB_FIELDS.get(stage, {})
    expected = {}
    for section in STAGE_SECTIONS[stage]:
        for key, sub in schema["properties"][section]["properties"].items():
            if key not in WORKFLOW_KEYS:
                assert key not in expected, f"{stage}: key {key} is in two of its sections"
                expected[key] = (sub["default"], _help(sub))
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    assert set(per_job) <= set(fields), f"{stage}: per-job fields {sorted(set(per_job) - set(fields))} are gone"
    got = {name: (_default(f), f.metadata.get("help")) for name, f in fields.items() if name not in per_job}
    assert sorted(got) == sorted(expected), f"{stage}: options differ from the schema keys of {STAGE_SECTIONS[stage]}"
    wrong = {key: (got[key], expected[key]) for key in expected if got[key] != expected[key]}
    assert not wrong, f"{stage}: (default, help) differ from the schema's: {wrong}"
    for name, dotted in per_job.items():
        if dotted is None or _default(fields[name]) is dataclasses.MISSING:
            continue  # no config key, or a required flag
        section, key = dotted.split(".")
        sub = schema["properties"][section]["properties"][key]
        assert (_default(fields[name]), fields[name].metadata.get("help")) == (sub["default"], _help(sub)), name


@pytest.mark.parametrize("stage", sorted(STAGE_SECTIONS))
def test_shared_groups_are_one_mixin_each(stage):
    """The dataset and download keys are declared once: every stage that reads the section inherits its mixin."""
    options_cls = stage_options(stage)
    for section, mixin in (("dataset", DatasetOptions), ("download", DownloadOptions)):
        assert issubclass(options_cls, mixin) == (section in STAGE_SECTIONS[stage]), (stage, mixin.__name__)


def test_the_rules_pass_each_stage_its_sections(repo):
    """Every rule's options come from opts(<stage>) with a stage of STAGE_SECTIONS (no hand list of sections)."""
    calls = re.findall(r"opts\(([^)]*)\)", "\n".join(p.read_text() for p in sorted((repo / "rules").glob("*.smk"))))
    stages = {eval(call) for call in calls if call.strip() not in ("stage", "*sections")}  # noqa: S307 - string literals
    assert stages and stages <= set(STAGE_SECTIONS), sorted(stages - set(STAGE_SECTIONS))
    assert set(STAGE_SECTIONS) - stages <= {"preflight"}  # preflight reads the whole config from a file


def test_model_config_is_the_train_options_of_its_names(schema):
    """ModelConfig's fields are train keys with the schema's defaults, except its internal constants,
    and train.Options.model_config() carries every one of them."""
    train_keys = schema["properties"]["train"]["properties"]
    internal = {"gsl_chunk_size", "attention_hidden"}
    for field in dataclasses.fields(ModelConfig):
        if field.name in internal:
            assert field.name not in train_keys
            continue
        default = _default(field)
        assert (list(default) if isinstance(default, tuple) else default) == train_keys[field.name]["default"], field.name
    changed = {"hidden": 7, "layers": 1, "dropout": 0.25, "modalities": ["dna"], "gsl": False, "gsl_layers": 3,
               "gsl_heads": 2, "gsl_k": 5, "gsl_prior_weight": 0.3, "gsl_refresh": 4, "global_context": False,
               "doubles": "joint", "singles": "network", "observed_singles": False, "temperature": 0.2,
               "dropout_shared": True}
    assert set(changed) == {f.name for f in dataclasses.fields(ModelConfig)} - internal
    config = train.Options(**changed).model_config()
    assert {k: getattr(config, k) for k in changed} == {**changed, "modalities": ("dna",)}
    assert ModelConfig(modalities=["text"]).modalities == ("text",)  # model.yaml holds a list


def test_generated_types_follow_the_schema():
    hints = typing.get_type_hints(train.Options)
    assert hints["epochs"] is int and hints["lr"] is float and hints["gsl"] is bool and hints["device"] is str
    assert hints["modalities"] == list[str] and hints["context_key"] == (str | None)
    assert typing.get_type_hints(ModelConfig)["modalities"] == tuple[str, ...]
    embed_hints = typing.get_type_hints(stage_options("embed"))
    assert embed_hints["dna_max_length"] == (int | None)
    assert typing.get_type_hints(stage_options("network"))["ks"] == list[int]
    assert typing.get_type_hints(stage_options("graph"))["biotype_groups"] == dict[str, str]
    assert typing.get_type_hints(stage_options("evaluate"))["baselines"] == list[str]  # items given by enum only
    a, b = train.Options(), train.Options()
    assert a.modalities == ["text", "dna"] and a.modalities is not b.modalities  # a fresh list each


def test_options_class_refuses_unknown_keys():
    with pytest.raises(KeyError, match=r"train\.nonsense"):
        generated.options_class("train", keys=("epochs", "nonsense"))
    with pytest.raises(KeyError, match="no section 'nowhere'"):
        generated.options_class("nowhere")


def test_retry_policy_is_the_download_options_checked():
    assert RetryPolicy() == DownloadOptions().retry_policy()
    assert isinstance(DownloadOptions(retries=2).retry_policy(), RetryPolicy)
    with pytest.raises(ValueError, match="invalid retry policy"):
        RetryPolicy(timeout=0)


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


def test_boolean_strings_are_coerced_where_the_schema_says_boolean(schema):
    """`snakemake --config "train={gsl: false}"` hands the string "false"."""
    cfg = validate_config({"train": {"gsl": "false", "dropout_shared": "True"}}, schema)
    assert cfg["train"]["gsl"] is False and cfg["train"]["dropout_shared"] is True
    with pytest.raises(ConfigError, match=r"config key train\.gsl: 'no' is not of type 'boolean'"):
        validate_config({"train": {"gsl": "no"}}, schema)


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


def test_search_overlay_holds_the_searched_values(schema, repo):
    """workflow/configs/search_singles.yaml: the best trial of bench/tune.tsv to three digits, a valid overlay."""
    import math

    import pandas as pd

    overlay = yaml.safe_load((repo / "workflow" / "configs" / "search_singles.yaml").read_text())
    trials = pd.read_csv(repo / "bench" / "tune.tsv", sep="\t")
    best = trials[trials["state"] == "COMPLETE"].sort_values("value", ascending=False).iloc[0]
    for key, value in overlay["train"].items():
        searched = best[f"params_{key}"]
        assert math.isclose(value, float(f"{searched:.3g}"), rel_tol=1e-9), key
    config = yaml.safe_load((repo / "config.yaml").read_text())
    config["train"] = {**config.get("train", {}), **overlay["train"]}
    validate_config(config, schema, base_dir=repo)


def test_defaults_are_the_searched_values_and_the_fast_overlay_is_valid(schema, repo):
    """config.yaml and the schema's defaults hold search_singles.yaml's values (the defaults since
    BENCHMARKS.md measured them on real screens); fast_model.yaml, the earlier values, validates."""
    from grape.options import default

    overlay = yaml.safe_load((repo / "workflow" / "configs" / "search_singles.yaml").read_text())["train"]
    config = yaml.safe_load((repo / "config.yaml").read_text())
    for key, value in overlay.items():
        assert default("train", key) == value, key
        assert config["train"].get(key, value) == value, key
    fast = yaml.safe_load((repo / "workflow" / "configs" / "fast_model.yaml").read_text())["train"]
    assert fast["hidden"] < overlay["hidden"] and fast["batch_size"] > overlay["batch_size"]
    config["train"] = {**config["train"], **fast}
    validate_config(config, schema, base_dir=repo)
