"""Validate a pipeline configuration against the JSON Schema, with one clear message.

Used by ``rules/common.smk`` before any job is scheduled. Numeric strings (YAML's
``1e-3``, ``snakemake --config "train={epochs: 3}"``) become numbers where the schema
says integer or number; defaults from the schema are filled in place, unknown keys are
refused, and the configured input files must exist; every error names the key as a
dotted path (``train.epochs``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import jsonschema

#: Config keys that choose the workflow's inputs (files, download source, jobs, model variants, repeated splits)
#: rather than a stage's options: the rules turn them into inputs, wildcards or their own flags,
#: so no stage's options class has them (:func:`grape.options.options_class` leaves them out).
WORKFLOW_KEYS: frozenset[str] = frozenset({
    "source", "path", "gtf", "cdna", "ncrna", "table", "shards", "gpus_per_job", "ablations",
    "name", "url", "sha256", "md5", "member", "subset", "seeds",
})

#: The config sections whose keys (less :data:`WORKFLOW_KEYS`) are the options of each stage
#: command, in the order its flags are listed: ``rules/common.smk``'s ``opts(stage)`` passes them,
#: and ``tests/test_config.py`` checks each stage's ``Options`` against them key by key.
#: ``preflight`` reads the whole configuration from a file (``--config``) and has no options.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "preflight": (),
    "simulate": ("simulate",),
    "ensembl": ("download",),
    "dataset download": ("download",),
    "dataset subset": ("dataset",),
    "annotate": ("dataset", "annotate", "download"),
    "describe": ("describe", "download"),
    "embed": ("embed",),
    "graph": ("graph",),
    "split": ("dataset", "split"),
    "train": ("dataset", "train"),
    "network": ("network",),
    "evaluate": ("dataset", "evaluate"),
    "aggregate": ("aggregate",),
    "report": ("report",),
}


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


def _key(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _fill_defaults(instance: MutableMapping[str, Any], schema: dict[str, Any]) -> None:
    for name, sub in schema.get("properties", {}).items():
        if name not in instance and "default" in sub:
            value = sub["default"]
            instance[name] = dict(value) if isinstance(value, dict) else value
        if isinstance(instance.get(name), MutableMapping) and sub.get("type") == "object":
            _fill_defaults(instance[name], sub)


def _types(schema: dict[str, Any]) -> set[str]:
    kind = schema.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def _number(text: str, types: set[str]) -> int | float | None:
    """The number a string spells, of a type the schema allows (None when it spells none)."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if "integer" in types:
        try:
            return int(text.strip())
        except ValueError:
            if value.is_integer():
                return int(value)
    return value if "number" in types else None


def coerce_numbers(instance: Any, schema: dict[str, Any]) -> Any:
    """Turn numeric strings into numbers where the schema says integer or number (and not string),
    and ``"true"`` / ``"false"`` into booleans where it says boolean.

    PyYAML reads ``1e-3`` as a string, and ``snakemake --config "train={epochs: 3}"`` hands
    ``"3"`` (``"train={gsl: false}"``: ``"false"``); all become numbers or booleans, in place. A string that spells no number is left for the
    validator to refuse, naming the key.
    """
    if isinstance(instance, MutableMapping):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name in list(instance):
            sub = properties.get(name, extra if isinstance(extra, dict) else None)
            if sub is not None:
                instance[name] = coerce_numbers(instance[name], sub)
        return instance
    if isinstance(instance, list):
        items = schema.get("items")
        if isinstance(items, dict):
            instance[:] = [coerce_numbers(item, items) for item in instance]
        return instance
    if isinstance(instance, str):
        types = _types(schema)
        if types & {"integer", "number"} and "string" not in types:
            value = _number(instance, types)
            if value is not None:
                return value
        if "boolean" in types and "string" not in types and instance.strip().lower() in BOOLEANS:
            return BOOLEANS[instance.strip().lower()]
    return instance


#: Strings that ``snakemake --config "train={gsl: false}"`` hands for a boolean (YAML 1.2's spellings).
BOOLEANS = {"true": True, "false": False}


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = _key(error.absolute_path)
        keys = ", ".join(f"{where}.{k}" if error.absolute_path else k for k in extra)
        return f"unknown config key {keys} (allowed here: {', '.join(allowed)})"
    if error.validator == "required":
        return f"config key {_key(error.absolute_path)}: {error.message}"
    return f"config key {_key(error.absolute_path)}: {error.message}"


def load_schema(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the YAML JSON-Schema."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def validate_config(
    config: MutableMapping[str, Any],
    schema: dict[str, Any] | str | os.PathLike[str],
    *,
    base_dir: str | os.PathLike[str] | None = None,
) -> MutableMapping[str, Any]:
    """Fill defaults into ``config`` in place and check it; raise :class:`ConfigError`.

    Numeric strings where the schema says integer or number are made numbers first
    (:func:`coerce_numbers`).

    ``base_dir`` resolves relative file paths (the directory Snakemake runs in).
    Keys whose schema carries ``format: existing-file`` or ``format: existing-dir``
    must name an existing file or directory when set.
    """
    import jsonschema  # here, not at the top: grape.options and the stages import this module for its tables

    if not isinstance(schema, dict):
        schema = load_schema(schema)
    coerce_numbers(config, schema)
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise ConfigError(_message(errors[0]))
    _fill_defaults(config, schema)
    # A second pass: defaults themselves must satisfy the schema (a broken default is our bug).
    errors = list(validator.iter_errors(config))
    if errors:
        raise ConfigError(_message(errors[0]))
    _check_split_seeds(config)
    _check_paths(config, schema, Path(base_dir or "."), ())
    return config


def _check_split_seeds(config: MutableMapping[str, Any]) -> None:
    """``split.seeds`` repeats a seeded split (simulation: the seed; logo: the fold); a table is one split."""
    split = config.get("split")
    if isinstance(split, MutableMapping) and split.get("seeds") and split.get("kind") == "table":
        raise ConfigError("config key split.seeds: repeated splits need a seeded split (split.kind simulation or "
                          "logo), but split.kind is table, whose split.table is one fixed split; set split.seeds "
                          "to [] or choose another split.kind")


def _check_paths(instance: Any, schema: dict[str, Any], base: Path, path: tuple[str, ...]) -> None:
    """Check the ``existing-file`` / ``existing-dir`` keys, also inside mappings of objects
    (``additionalProperties``: ``graph.priors.<name>.path``) and lists (``key[i]``)."""
    if isinstance(instance, MutableMapping):
        properties = schema.get("properties", {})
        for name, sub in properties.items():
            if name in instance:
                _check_paths(instance[name], sub, base, (*path, name))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in instance:
                if name not in properties:
                    _check_paths(instance[name], extra, base, (*path, str(name)))
        return
    if isinstance(instance, list):
        items = schema.get("items")
        if isinstance(items, dict) and path:
            for i, item in enumerate(instance):
                _check_paths(item, items, base, (*path[:-1], f"{path[-1]}[{i}]"))
        return
    fmt = schema.get("format")
    if instance is None or fmt not in {"existing-file", "existing-dir"}:
        return
    target = Path(instance) if Path(instance).is_absolute() else base / instance
    if fmt == "existing-file" and not target.is_file():
        raise ConfigError(f"config key {_key(path)}: file not found: {instance}")
    if fmt == "existing-dir" and not target.is_dir():
        raise ConfigError(f"config key {_key(path)}: directory not found: {instance}")
