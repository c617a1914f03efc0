"""Stage options generated from the configuration schema, the one home of every option.

``workflow/schemas/config.schema.yaml`` gives each key of ``config.yaml`` its type, its
default and its help text. :func:`options_class` turns one section of it into a frozen
dataclass with one field per key: the field's type follows the JSON type
(``integer`` -> ``int``, ``number`` -> ``float``, ``boolean`` -> ``bool``, ``string`` ->
``str``, ``array`` -> ``list[...]``, ``object`` -> ``dict``, a type list with ``null`` ->
``X | None``), its default is the schema's ``default`` (lists and dicts through a
``default_factory``) and ``metadata["help"]`` is the key's ``description``, which the
command line shows. A stage's options class subclasses the generated base and adds only
its checks and methods::

    @dataclass(frozen=True)
    class Options(options_class("graph")):
        def __post_init__(self) -> None: ...

Keys that choose the workflow's inputs rather than a stage's options
(:data:`grape.config.WORKFLOW_KEYS`) are left out unless asked for by name (``keys=``).
This module needs only the standard library and PyYAML, so importing it costs little.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from grape.config import WORKFLOW_KEYS

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
"""The configuration schema (JSON Schema in YAML) the options are generated from."""

_JSON_TYPES: dict[str, type] = {"integer": int, "number": float, "boolean": bool, "string": str,
                                "array": list, "object": dict}


@functools.cache
def schema() -> dict[str, Any]:
    """The configuration schema, read once."""
    if not SCHEMA_PATH.is_file():
        raise FileNotFoundError(f"configuration schema not found: {SCHEMA_PATH} (grape reads its options from it; "
                                "install the package from its source tree, pip install -e .)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it: ten times faster
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=loader)  # noqa: S506 - a safe loader


def section(name: str) -> dict[str, dict[str, Any]]:
    """The schema of each key of config section ``name``, in the schema's order."""
    sections = schema()["properties"]
    if name not in sections or "properties" not in sections[name]:
        raise KeyError(f"the configuration schema has no section {name!r} (sections: "
                       f"{', '.join(k for k, v in sections.items() if 'properties' in v)})")
    return sections[name]["properties"]


def key_schema(section_name: str, key: str) -> dict[str, Any]:
    """The schema of ``<section_name>.<key>``; ``KeyError`` naming the dotted key when absent."""
    keys = section(section_name)
    if key not in keys:
        raise KeyError(f"the configuration schema has no key {section_name}.{key}")
    return keys[key]


def _scalar(spec: Mapping[str, Any]) -> Any:
    """The Python type of a schema node with at most one non-null type (``Any`` when unclear)."""
    kinds = spec.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
    kinds = [k for k in kinds if k != "null"]
    if not kinds and "enum" in spec:  # e.g. items: {enum: [train, val]}: the type of the values
        names = {str: "string", bool: "boolean", int: "integer", float: "number"}
        kinds = sorted({names[type(v)] for v in spec["enum"] if type(v) in names})
    if len(kinds) != 1:
        return Any
    kind = kinds[0]
    if kind == "array":
        items = spec.get("items")
        return list[_scalar(items)] if isinstance(items, Mapping) else list
    if kind == "object":
        extra = spec.get("additionalProperties")
        value = _scalar(extra) if isinstance(extra, Mapping) else Any
        return dict[str, value] if value in (str, int, float, bool) else dict
    return _JSON_TYPES[kind]


def python_type(spec: Mapping[str, Any], *, as_tuple: bool = False) -> Any:
    """The annotation of a field from its schema: ``int``, ``list[str]``, ``str | None``, ...

    ``as_tuple`` makes an array a ``tuple[X, ...]`` (immutable, for configurations that are
    hashed or compared).
    """
    hint = _scalar(spec)
    if as_tuple:
        if typing.get_origin(hint) is not list and hint is not list:
            raise TypeError(f"as_tuple asked for a non-array schema: {dict(spec)}")
        args = typing.get_args(hint)
        hint = tuple[(args[0] if args else Any), ...]
    kinds = spec.get("type")
    if (isinstance(kinds, list) and "null" in kinds) or spec.get("default", ...) is None:
        hint = hint | None if hint is not Any else Any
    return hint


def option_field(section_name: str, key: str, *, as_tuple: bool = False) -> dataclasses.Field:
    """A dataclass field for ``<section_name>.<key>``: the schema's default, its description as
    ``metadata["help"]`` and the dotted key as ``metadata["config_key"]``."""
    spec = key_schema(section_name, key)
    if "default" not in spec:
        raise KeyError(f"the configuration schema gives no default for {section_name}.{key}")
    default = spec["default"]
    metadata = {"help": " ".join(str(spec.get("description", "")).split()), "config_key": f"{section_name}.{key}"}
    if as_tuple:
        return dataclasses.field(default=tuple(default), metadata=metadata)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def options_class(
    section_name: str,
    *,
    keys: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    tuples: Iterable[str] = (),
    name: str | None = None,
) -> type:
    """A frozen dataclass with one field per key of config section ``section_name``.

    Fields follow the schema's order. ``keys`` picks a subset by name (every named key
    must exist, and workflow keys named here are kept); without it every key except
    :data:`~grape.config.WORKFLOW_KEYS` is a field. ``exclude`` drops further keys, and
    the arrays named in ``tuples`` become tuples. Subclass the result (``frozen=True``)
    to add checks and methods.
    """
    spec = section(section_name)
    exclude = set(exclude)
    tuples = set(tuples)
    if keys is None:
        chosen = [k for k in spec if k not in WORKFLOW_KEYS and k not in exclude]
    else:
        wanted = list(keys)
        missing = [k for k in wanted if k not in spec]
        if missing:
            raise KeyError(f"the configuration schema has no key {', '.join(f'{section_name}.{k}' for k in missing)}")
        chosen = [k for k in spec if k in set(wanted) and k not in exclude]
    unknown = tuples - set(chosen)
    if unknown:
        raise KeyError(f"tuples names keys that are not fields: {', '.join(sorted(unknown))}")
    fields = [(key, python_type(spec[key], as_tuple=key in tuples), option_field(section_name, key, as_tuple=key in tuples))
              for key in chosen]
    cls_name = name or "".join(part.title() for part in section_name.split("_")) + "Section"
    cls = dataclasses.make_dataclass(cls_name, fields, frozen=True, namespace={
        "__doc__": f"The keys of config section ``{section_name}`` (generated from the schema)."})
    cls.__module__ = __name__
    return cls


def defaults(section_name: str) -> dict[str, Any]:
    """The schema default of every key of a section (copies)."""
    return {key: copy.deepcopy(sub.get("default")) for key, sub in section(section_name).items()}


def default(section_name: str, key: str) -> Any:
    """The schema default of ``<section_name>.<key>`` (a copy)."""
    return copy.deepcopy(key_schema(section_name, key)["default"])
