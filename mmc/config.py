"""Typed, validated configuration.

``workflow/schemas/config.schema.yaml`` is the single source of truth for every option and its
default; the Snakefile validates against the same file. This module

1. loads a YAML file and validates it against the schema, filling defaults;
2. resolves each entry of ``experiments`` by deep-merging it over ``pretrain`` (so an ablation
   names only what differs) and validates the result as a full pretraining config;
3. checks cross-references (evaluation datasets, model experiments, patch/resolution);
4. hands the code frozen dataclasses built from the schema (``cfg.pretrain.optim.epochs``).

Errors name the file, the key path, the bad value and what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from mmc.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


# ----------------------------------------------------------------------------- schema access
@functools.cache
def schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _resolve_ref(node: Mapping) -> Mapping:
    """Follow local ``$ref``s; sibling keys (``default``, ``description``) win over the target's."""
    while "$ref" in node:
        target: Any = schema()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


@functools.cache
def _validator_class():
    import jsonschema
    from jsonschema import validators

    base = validators.validator_for(schema())
    validate_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, node):
        # Same behaviour as snakemake.utils.validate(set_default=True): missing keys get their
        # default before their own subschema is checked, so nested defaults are filled too.
        if validator.is_type(instance, "object"):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, node)

    del jsonschema
    return validators.extend(base, {"properties": properties_with_defaults})


def _validate(instance: dict, node: Mapping, where: str, prefix: str = "") -> dict:
    """Validate ``instance`` (filled with defaults in place) against ``node``; raise one clear error."""
    validator = _validator_class()({**node, "$defs": schema()["$defs"]})
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        lines = [_describe(e, prefix) for e in errors[:10]]
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise ConfigError(f"{where}: invalid configuration:\n  " + "\n  ".join(lines) + more)
    return instance


def _key_path(parts, prefix: str = "") -> str:
    path = prefix + ".".join(str(p) for p in parts)
    return path or "(top level)"


def _describe(error, prefix: str = "") -> str:
    """One line per schema violation, phrased for a person editing a YAML file."""
    path = _key_path(error.absolute_path, prefix)
    kind = error.validator
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        where = path + "." if error.absolute_path else prefix
        keys = ", ".join(f"'{where}{k}'" for k in unknown)
        return f"unknown key {keys}: expected one of {', '.join(allowed)}"
    if kind == "required":
        missing = re.match(r"'([^']+)'", error.message)
        key = missing.group(1) if missing else error.message
        where = path + "." if error.absolute_path else prefix
        return f"missing required key '{where}{key}'"
    value = json.dumps(error.instance, default=str)
    if kind == "type":
        return f"{path}: {value} has the wrong type: expected {_or(error.validator_value)}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        relation = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kind]
        return f"{path}: {value} is out of range: expected a number {relation} {error.validator_value}"
    if kind == "enum":
        return f"{path}: {value} is not allowed: expected one of {_or(error.validator_value)}"
    if kind == "pattern":
        return f"{path}: {value} does not match the expected pattern {error.validator_value!r}"
    if kind in ("minItems", "maxItems"):
        return f"{path}: {value} has the wrong length: {error.message}"
    return f"{path}: {value}: {error.message}"


def _or(values) -> str:
    if isinstance(values, list | tuple):
        return " or ".join(json.dumps(v) if not isinstance(v, str) else v for v in values)
    return str(values)


# ----------------------------------------------------------------------------- typed objects
@functools.cache
def _dataclass_for(name: str, fields: tuple[str, ...]) -> type:
    return dataclasses.make_dataclass(name, [(f, Any) for f in fields], frozen=True)


def _class_name(path: tuple[str, ...]) -> str:
    words = [w for part in path for w in re.split(r"[^A-Za-z0-9]+", part) if w]
    return "".join(w[:1].upper() + w[1:] for w in words) + "Config" if words else "Config"


def _freeze(value: Any, node: Mapping, path: tuple[str, ...]) -> Any:
    """Turn validated plain data into frozen dataclasses (schema objects), read-only maps and tuples."""
    node = _resolve_ref(node)
    if isinstance(value, dict):
        properties = node.get("properties")
        if properties is not None:
            fields = tuple(properties)
            cls = _dataclass_for(_class_name(path), fields)
            return cls(**{k: _freeze(value.get(k), properties[k], (*path, k)) for k in fields})
        item = node.get("additionalProperties")
        item = item if isinstance(item, dict) else {}
        return MappingProxyType({k: _freeze(v, item, (*path, "item")) for k, v in value.items()})
    if isinstance(value, list):
        items = node.get("items", {})
        return tuple(_freeze(v, items, path) for v in value)
    types = node.get("type")
    if isinstance(value, int) and not isinstance(value, bool) and (types == "number" or types == ["number", "null"]):
        return float(value)  # a typed float field stays a float even when the YAML wrote `1`
    return value


def to_dict(value: Any) -> Any:
    """The plain-data form of a frozen config (for YAML output, checkpoints, hashing)."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_dict(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: to_dict(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [to_dict(v) for v in value]
    return value


def config_hash(value: Any) -> str:
    """A stable short hash of a (section of a) resolved config, for provenance tags."""
    text = json.dumps(to_dict(value), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- loading
def deep_merge(base: Mapping, override: Mapping) -> dict:
    """``override`` over ``base``: mappings merge recursively, anything else is replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve(raw: Mapping, where: str = "<config>") -> dict:
    """Validate ``raw``, fill every default and resolve experiments; return plain data."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a YAML mapping at the top level, got {type(raw).__name__}")
    data = copy.deepcopy(dict(raw))
    pretrain_base = copy.deepcopy(data.get("pretrain") or {})
    _validate(data, schema(), where)
    experiments = {}
    for name, override in data["experiments"].items():
        merged = deep_merge(pretrain_base, override)
        experiments[name] = _validate(merged, schema()["$defs"]["pretrain"], where, prefix=f"experiments.{name}.")
    data["experiments"] = experiments
    _check_references(data, where)
    return data


def _check_references(data: dict, where: str) -> None:
    """Constraints that span keys, which JSON schema cannot express."""
    problems = []
    for name in data["evaluation"]["datasets"]:
        if name not in data["datasets"]:
            problems.append(f"evaluation.datasets: '{name}' is not a key of datasets (have: {sorted(data['datasets'])})")
    for name, model in data["models"].items():
        if model["source"] == "experiment" and model["experiment"] not in data["experiments"]:
            problems.append(
                f"models.{name}.experiment: '{model['experiment']}' is not a key of experiments "
                f"(have: {sorted(data['experiments'])})"
            )
            continue
        backbone = data["experiments"][model["experiment"]]["backbone"] if model["source"] == "experiment" else model["backbone"]
        patch = backbone["patch_size"]
        if not data["evaluation"]["keep_aspect"] and data["evaluation"]["resolution"] % patch:
            problems.append(
                f"evaluation.resolution: {data['evaluation']['resolution']} is not a multiple of "
                f"the patch size of model {name} ({patch})"
            )
    for name, experiment in data["experiments"].items():
        optim = experiment["optim"]
        micro = optim.get("micro_batch_size")
        if micro is not None and optim["batch_size"] % micro:
            problems.append(
                f"experiments.{name}.optim.micro_batch_size: {micro} does not divide optim.batch_size "
                f"{optim['batch_size']} (the global batch is split into whole micro-batches)"
            )
    selection = data["selection"]
    if selection["policy"] != "last":
        split = selection["dataset"]
        if split is None:
            problems.append(f"selection.dataset: policy {selection['policy']!r} needs a held-out selection dataset")
        elif split not in data["datasets"]:
            problems.append(f"selection.dataset: '{split}' is not a key of datasets")
        elif split in data["evaluation"]["datasets"]:
            problems.append(f"selection.dataset: '{split}' is also an evaluation dataset (never select on test data)")
    if problems:
        raise ConfigError(f"{where}: invalid configuration:\n  " + "\n  ".join(problems))


def load_raw(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return raw if raw is not None else {}


def load(path: str | Path) -> Any:
    """Load, validate and freeze a config file. The result's ``source`` field names the file."""
    resolved = resolve(load_raw(path), where=str(path))
    return freeze(resolved)


def freeze(resolved: Mapping) -> Any:
    top = dict(schema())
    experiments = {
        name: _freeze(exp, schema()["$defs"]["pretrain"], ("pretrain",)) for name, exp in resolved["experiments"].items()
    }
    frozen = _freeze({**resolved, "experiments": {}}, top, ())
    return dataclasses.replace(frozen, experiments=MappingProxyType(experiments))


def section_defaults(name: str) -> Any:
    """The defaults of one top-level section (e.g. ``synthetic``), frozen: for CLI flags with no config."""
    node = _resolve_ref(schema()["properties"][name])
    value = _validate(copy.deepcopy(node.get("default", {})), node, f"defaults of {name}")
    return _freeze(value, node, (name,))


def dump(value: Any) -> str:
    return yaml.safe_dump(to_dict(value), sort_keys=False, default_flow_style=None)
