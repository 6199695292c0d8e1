"""``config/README.md``, generated from the schema's descriptions (``mmc config docs --out config/README.md``).

The schema (``workflow/schemas/config.schema.yaml``) is the single source of truth for every option;
this page lists every section and key with its type, default and description, in the schema's
order, as the Snakemake workflow catalog expects a ``config/README.md``. ``tests/test_config_docs.py``
fails when the committed page differs from what the schema gives, naming the command above.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

COMMAND = "mmc config docs --out config/README.md"
HEADER = f"""# Configuration

<!-- Generated from workflow/schemas/config.schema.yaml by `{COMMAND}`: edit the schema, not this file. -->

The workflow and every `mmc` command read one YAML file (`snakemake --configfile FILE`,
`mmc <stage> --config FILE`), validated against `workflow/schemas/config.schema.yaml`, which gives
every default below. Three files come with the project: `config/test.yaml` (the tiny CPU run of
`make demo`), `config/study.yaml` (the CPU study of `make study`, docs/study.md) and
`config/config.yaml` (the paper run). `mmc config show FILE` prints a file with
every default filled in; `mmc config check FILE` validates it. Options marked "(choice)" are this
project's choices where the paper is silent (docs/method.md#choices).
"""


def _resolve(node: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Follow local ``$ref``s; sibling keys (``default``, ``description``) win over the target's."""
    node = dict(node)
    while "$ref" in node:
        target: Any = schema
        for part in node.pop("$ref").removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **node}
    return node


def _bounds(node: Mapping[str, Any]) -> str:
    parts = []
    for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in node:
            parts.append(f"{sign} {node[key]:g}" if isinstance(node[key], float) else f"{sign} {node[key]}")
    return f" ({', '.join(parts)})" if parts else ""


def type_text(node: Mapping[str, Any], schema: Mapping[str, Any]) -> str:
    """A short human reading of a schema node's type: ``integer (>= 1)``, ``one of: a, b``, ``list of number``."""
    node = _resolve(node, schema)
    if "enum" in node:
        return "one of: " + ", ".join(f"`{v}`" for v in node["enum"])
    kinds = node.get("type", "any")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    literal = re.fullmatch(r"\^(\w+)\$", node.get("pattern", ""))  # a string that can be one word only
    words = []
    for kind in kinds:
        if kind == "array":
            items = type_text(node.get("items", {}), schema) if node.get("items") else "values"
            size = ""
            if node.get("minItems") is not None and node.get("minItems") == node.get("maxItems"):
                size = f"{node['minItems']} "
            elif node.get("minItems"):
                size = f"{node['minItems']}+ "
            words.append(f"list of {size}{items}")
        elif kind == "object":
            words.append("mapping")
        elif kind == "string" and literal:
            words.append(f"`{literal.group(1)}`")
        else:
            words.append(kind)
    text = " or ".join(words) + _bounds(node)
    if "pattern" in node and not literal:
        text += f", matching `{node['pattern']}`"
    return text


def _default_text(node: Mapping[str, Any], required: bool) -> str:
    if "default" not in node:
        return "required" if required else ""
    return f"`{json.dumps(node['default'])}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _rows(prefix: str, node: Mapping[str, Any], schema: Mapping[str, Any]) -> Iterator[tuple[str, str, str, str]]:
    """(key, type, default, description) for every key below ``node``, nested objects flattened."""
    node = _resolve(node, schema)
    required = set(node.get("required", ()))
    for key, child in node.get("properties", {}).items():
        child = _resolve(child, schema)
        path = f"{prefix}{key}"
        if "properties" in child:
            if child.get("description"):
                yield f"`{path}`", "mapping", _default_text(child, key in required), child["description"]
            yield from _rows(f"{path}.", child, schema)
            continue
        yield (f"`{path}`", type_text(child, schema), _default_text(child, key in required),
               child.get("description", ""))
        items = _resolve(child.get("items", {}), schema) if child.get("type") == "array" else {}
        if "properties" in items:  # a list of mappings (archives): their keys
            yield from _rows(f"{path}[].", items, schema)


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(_cell(c) for c in row)} |" for row in rows]
    return lines


def render(schema: Mapping[str, Any]) -> str:
    """The page, from the schema (as :func:`mmc.config.schema` reads it)."""
    lines = [HEADER]
    top = schema["properties"]
    required = set(schema.get("required", ()))
    sections = {k for k, v in top.items() if {"properties", "additionalProperties"} & set(_resolve(v, schema))}
    scalars = [(k, _resolve(v, schema)) for k, v in top.items() if k not in sections]
    lines += ["## Top-level keys", ""]
    lines += _table([(f"`{k}`", type_text(v, schema), _default_text(v, k in required), v.get("description", ""))
                     for k, v in scalars])
    for name, raw in top.items():
        node = _resolve(raw, schema)
        if name not in sections:
            continue
        lines += ["", f"## `{name}`", ""]
        if node.get("description"):
            lines += [_cell(node["description"]), ""]
        if "properties" in node:
            lines += _table(list(_rows(f"{name}.", node, schema)))
            continue
        entry = node.get("additionalProperties")
        entry = _resolve(entry, schema) if isinstance(entry, Mapping) else {}
        pattern = node.get("propertyNames", {}).get("pattern")
        named = f"`{name}.<name>`" + (f" (names matching `{pattern}`)" if pattern else "")
        default = f"; default `{json.dumps(node['default'])}`" if "default" in node else ""
        if "properties" in entry:
            lines += [f"A mapping from a name to an entry{default}. Keys of each entry {named}:", ""]
            lines += _table(list(_rows(f"{name}.<name>.", entry, schema)))
            conditions = [f"`{k}: {c['if']['properties'][k]['const']}` needs `{', '.join(c['then']['required'])}`"
                          for c in entry.get("allOf", ()) for k in c.get("if", {}).get("properties", {})
                          if "const" in c["if"]["properties"][k] and "required" in c.get("then", {})]
            if conditions:
                lines += ["", "; ".join(conditions) + "."]
        else:
            lines += [f"A mapping from a name to an entry{default}: {named}, each a mapping of the keys of the "
                      "`pretrain` section that differ from it."]
    return "\n".join(lines).rstrip() + "\n"


def current() -> str:
    """The page the schema gives now."""
    from mmc import config

    return render(config.schema())
