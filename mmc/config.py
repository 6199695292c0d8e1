"""Typed, validated configuration.

``workflow/schemas/config.schema.yaml`` is the single source of truth for every option and its
default. This module is the one place a config is read and checked, by ``mmc`` and by the
Snakefile alike:

1. ``load_raw`` reads the YAML strictly (UTF-8, no alias bombs, no duplicate keys: its docstring);
2. ``resolve`` requires every number finite, validates against the schema (filling defaults),
   resolves each entry of ``experiments`` by deep-merging it over ``pretrain`` (so an ablation
   names only what differs) and validates the result as a full pretraining config;
3. ``rule_problems`` applies every rule that spans keys (patch/size, heads/width, ordered ranges,
   loss weights, saved epochs, references, folders, inputs that must exist);
4. ``freeze`` hands the code frozen dataclasses built from the schema (``cfg.pretrain.optim.epochs``).

Errors are one line naming the file, the key path, the bad value and what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
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

    def is_integer(checker, instance):
        # JSON schema counts 4.0 as an integer; a count or a size written as a float is a mistake
        return isinstance(instance, int) and not isinstance(instance, bool)

    del jsonschema
    return validators.extend(
        base,
        {"properties": properties_with_defaults},
        type_checker=base.TYPE_CHECKER.redefine("integer", is_integer),
    )


def _validate(instance: dict, node: Mapping, where: str, prefix: str = "") -> dict:
    """Validate ``instance`` (filled with defaults in place) against ``node``; raise one clear error."""
    validator = _validator_class()({**node, "$defs": schema()["$defs"]})
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    _raise_problems(where, [_describe(e, prefix) for e in errors])
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


def resolve(raw: Mapping, where: str = "<config>", *, check_inputs: bool = False) -> dict:
    """Validate ``raw``, fill every default and resolve experiments; return plain data.

    ``check_inputs`` also requires the files and folders the run reads from outside the folders
    the workflow writes (``rule_problems``); ``mmc config check`` and the Snakefile ask for it.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a YAML mapping at the top level, got {type(raw).__name__}")
    _raise_problems(where, _number_problems(raw))
    data = copy.deepcopy(dict(raw))
    pretrain_base = copy.deepcopy(data.get("pretrain") or {})
    _validate(data, schema(), where)
    overrides = data["experiments"]
    experiments = {}
    for name, override in overrides.items():
        merged = deep_merge(pretrain_base, override)
        experiments[name] = _validate(merged, schema()["$defs"]["pretrain"], where, prefix=f"experiments.{name}.")
    data["experiments"] = experiments
    if data["seeds"] is None:  # one training seed: the base seed
        data["seeds"] = [data["seed"]]
    if data["results_dir"] is None:  # the schema's default: each run its own folder
        data["results_dir"] = f"results/{data['run_name']}"
    _raise_problems(where, rule_problems(data, raw, check_inputs=check_inputs))
    return data


def _raise_problems(where: str, problems: list[str]) -> None:
    if len(problems) == 1:
        raise ConfigError(f"{where}: invalid configuration: {problems[0]}")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ConfigError(f"{where}: invalid configuration ({len(problems)} problems): {shown}")


# ----------------------------------------------------------------------------- seeds
def _field(node: Any, key: str) -> Any:
    return node[key] if isinstance(node, Mapping) else getattr(node, key)


def model_seeds(model: Any, seeds: Any) -> tuple[int, ...] | None:
    """The training seeds a ``models`` entry is evaluated with, given the run's resolved ``seeds``:
    every seed for ``source: experiment`` and for ``source: random`` without a ``seed`` of its own;
    None for a model evaluated once (colour, file, url, a random model with its own seed).
    ``model`` is a resolved entry (a mapping or the frozen config object)."""
    source = _field(model, "source")
    if source == "experiment" or (source == "random" and _field(model, "seed") is None):
        return tuple(int(s) for s in seeds)
    return None


def run_name(name: str, seed: int | None) -> str:
    """Where an experiment's or a model's evaluation with ``seed`` lives below a stage's folder:
    ``NAME/seedS``, or ``NAME`` for a model without seeds (docs/workflow.md#seeds)."""
    return name if seed is None else f"{name}/seed{seed}"


def reference_seed(reference_seeds: tuple[int, ...] | None, seed: int | None) -> int | None:
    """The seed of the reference's evaluation that a model's evaluation with ``seed`` is paired with
    (``reference_seeds``: :func:`model_seeds` of the reference): the same seed, or the reference's only
    evaluation (a model without seeds, or with one). KeyError when the reference has several seeds
    and not this one."""
    if reference_seeds is None:
        return None
    if seed is not None and seed in reference_seeds:
        return seed
    if len(reference_seeds) == 1:
        return reference_seeds[0]
    raise KeyError(seed)


# ----------------------------------------------------------------------------- rules across keys
INT64 = (-(2**63), 2**63 - 1)


def _int_problem(path: str, value: int) -> str | None:
    if INT64[0] <= value <= INT64[1]:
        return None
    digits = len(str(abs(value)))
    shown = str(value) if digits <= 40 else f"an integer of {digits} digits"
    return f"{path}: {shown} is out of range: expected an integer of at most 64 bits (|n| < 2**63)"


def _number_problems(raw: Mapping) -> list[str]:
    """Every number finite and every integer within 64 bits (JSON schema ranges let NaN through)."""
    problems, stack = [], [("", raw)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, Mapping):
            stack += [(f"{path}.{k}" if path else str(k), v) for k, v in reversed(list(value.items()))]
        elif isinstance(value, list | tuple):
            stack += [(f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value)))]
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{path}: {value} is not a finite number: expected a finite number")
        elif isinstance(value, int) and not isinstance(value, bool) and (problem := _int_problem(path, value)):
            problems.append(problem)
    return problems


def _same_split(a: Mapping, b: Mapping) -> bool:
    """Two dataset entries that read the same images (same format, root and split)."""
    return (a["format"], os.path.normpath(a["root"]), a["split"]) == (b["format"], os.path.normpath(b["root"]), b["split"])


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or below it (both taken relative to the working directory)."""
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _set_in(override: Mapping, dotted: str) -> bool:
    """Whether an ``experiments`` entry sets ``dotted`` itself (else it inherits it from ``pretrain``)."""
    node: Any = override
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _backbone_problems(key: str, backbone: Mapping) -> list[str]:
    problems = []
    heads, width = backbone["num_heads"], backbone["embed_dim"]
    if width % heads:
        problems.append(
            f"{key}.num_heads: {heads} does not divide {key}.embed_dim ({width}): expected a divisor of the width"
        )
    problems += _patch_grid_problems(f"{key}.img_size", backbone["img_size"], f"{key}.patch_size", backbone["patch_size"])
    return problems


def _patch_grid_problems(size_key: str, size: int, patch_key: str, patch: int) -> list[str]:
    if patch > size:
        return [f"{patch_key}: {patch} is larger than {size_key} ({size}): expected a patch no larger than the image"]
    if size % patch:
        return [f"{size_key}: {size} is not a multiple of {patch_key} ({patch}): expected a whole number of patches"]
    return []


def _ordered_problem(key: str, pair) -> str | None:
    low, high = pair
    if low > high:
        return f"{key}: {json.dumps(list(pair))} is reversed: expected [low, high] with low <= high"
    return None


# Pairs that are ranges [low, high] a value is drawn from. Not ranges: optim.weight_decay,
# optim.ema_momentum and distill.teacher_temp (start -> end schedules, either direction), and
# augment.blur_p / solarize_p (one probability per global view).
PRETRAIN_RANGES = ("data.global_crop_scale", "data.local_crop_scale", "mask.ratio", "mask.aspect_ratio")
SYNTHETIC_RANGES = ("objects", "object_scale")
LOSS_WEIGHTS = ("w_mim", "w_distill", "w_contrast")


def _experiment_problems(name: str, exp: Mapping, override: Mapping) -> list[str]:
    """Rules of one resolved experiment, each named where it is set (``experiments.E`` or ``pretrain``)."""

    def key(*dotted: str) -> str:
        own = any(_set_in(override, d) for d in dotted)
        return f"experiments.{name}" if own else "pretrain"

    def get(dotted: str):
        node: Any = exp
        for part in dotted.split("."):
            node = node[part]
        return node

    problems = _backbone_problems(f"{key('backbone')}.backbone", exp["backbone"])
    data, patch = exp["data"], exp["backbone"]["patch_size"]
    crops = [("global_crop_size", data["global_crop_size"])]
    if data["local_crops"]:
        crops.append(("local_crop_size", data["local_crop_size"]))
    for crop, size in crops:
        where = key(f"data.{crop}", "backbone.patch_size")
        problems += _patch_grid_problems(f"{where}.data.{crop}", size, f"{where}.backbone.patch_size", patch)
    for dotted in PRETRAIN_RANGES:
        if problem := _ordered_problem(f"{key(dotted)}.{dotted}", get(dotted)):
            problems.append(problem)
    if not any(exp["loss"][w] > 0 for w in LOSS_WEIGHTS):
        where = key(*(f"loss.{w}" for w in LOSS_WEIGHTS))
        weights = ", ".join(f"{w}={exp['loss'][w]:g}" for w in LOSS_WEIGHTS)
        problems.append(f"{where}.loss: {weights}: expected at least one loss weight > 0")
    batch, micro = exp["optim"]["batch_size"], exp["optim"]["micro_batch_size"]
    if isinstance(micro, int) and batch % micro:  # auto: derived at start (mmc.plan.micro_batch_for)
        where = key("optim.micro_batch_size", "optim.batch_size")
        problems.append(
            f"{where}.optim.micro_batch_size: {micro} does not divide {where}.optim.batch_size ({batch}): "
            "expected a divisor (the global batch is split into whole micro-batches)"
        )
    epochs, saved = exp["optim"]["epochs"], exp["checkpoint"]["save_epochs"]
    late = [e for e in saved if e > epochs]
    if late:
        where = key("checkpoint.save_epochs", "optim.epochs")
        problems.append(
            f"{where}.checkpoint.save_epochs: {late} exceed {where}.optim.epochs ({epochs}): "
            "expected epochs within the run"
        )
    return problems


def _model_problems(name: str, model: Mapping, models: Mapping, experiments: Mapping, seeds) -> list[str]:
    """Initial weights exist only for a pretrained experiment; a reference is another model whose
    evaluations can be paired with this model's, seed by seed."""
    problems = []
    if model["checkpoint"] == "initial":
        if model["source"] != "experiment":
            problems.append(
                f"models.{name}.checkpoint: 'initial' is for source experiment (an experiment's weights "
                f"before its first step), not source {model['source']!r}: expected checkpoint: selected"
            )
        elif model["experiment"] in experiments and experiments[model["experiment"]]["init_checkpoint"] is not None:
            problems.append(
                f"models.{name}.checkpoint: 'initial': experiment '{model['experiment']}' sets init_checkpoint, "
                "so it is not pretrained and has no initial weights: expected checkpoint: selected"
            )
    reference = model["reference"]
    if reference is None:
        return problems
    if reference == name:
        problems.append(f"models.{name}.reference: '{name}' is the model itself: expected another key of models")
    elif reference not in models:
        problems.append(f"models.{name}.reference: '{reference}' is not a key of models (have: {sorted(models)})")
    else:
        theirs = model_seeds(models[reference], seeds)
        for seed in model_seeds(model, seeds) or (None,):
            try:
                reference_seed(theirs, seed)
            except KeyError:
                own = "no seed" if seed is None else f"seed {seed}"
                problems.append(
                    f"models.{name}.reference: '{reference}' is evaluated with seeds {list(theirs or ())}, "
                    f"not with {own} of {name}: expected a reference evaluated with this model's seeds, or once"
                )
                break
    return problems


def _input_problem(key: str, path: str | None, kind: str, made: dict[str, str]) -> str | None:
    """A file or folder the run reads that no rule makes must exist now (not after hours of GPU time)."""
    if path is None or any(_inside(path, folder) for folder in made.values()):
        return None
    exists = os.path.isfile(path) if kind == "file" else os.path.isdir(path)
    if exists:
        return None
    what = "an existing file" if kind == "file" else "an existing folder"
    return f"{key}: {path!r} does not exist: expected {what} (no rule of the workflow makes it)"


def rule_problems(data: Mapping, raw: Mapping, *, check_inputs: bool) -> list[str]:
    """Every rule that spans keys (JSON schema cannot express them), as one line each.

    The one place these rules live: ``mmc config check``, every ``mmc`` command (through
    ``resolve``) and the Snakefile apply them. ``data`` is schema-valid with defaults filled and
    experiments resolved; ``raw`` is the file as written (to name the key where a value was set, and
    for values that must be written rather than defaulted). ``check_inputs`` adds the rules that
    look at the file system.
    """
    problems: list[str] = []
    overrides = raw.get("experiments") or {}
    experiments, models, datasets = data["experiments"], data["models"], data["datasets"]
    evaluation, selection = data["evaluation"], data["selection"]

    # --- references between sections
    for name in evaluation["datasets"]:
        if name not in datasets:
            problems.append(f"evaluation.datasets: '{name}' is not a key of datasets (have: {sorted(datasets)})")
    if selection["policy"] != "last":
        split = selection["dataset"]
        if split is None:
            problems.append(f"selection.dataset: policy {selection['policy']!r} needs a held-out selection dataset")
        elif split not in datasets:
            problems.append(f"selection.dataset: '{split}' is not a key of datasets (have: {sorted(datasets)})")
        elif split in evaluation["datasets"]:
            problems.append(f"selection.dataset: '{split}' is also an evaluation dataset (never select on test data)")
        else:
            same = [
                name
                for name in evaluation["datasets"]
                if name in datasets and _same_split(datasets[name], datasets[split])
            ]
            if same:
                problems.append(
                    f"selection.dataset: '{split}' reads the same images as evaluation dataset '{same[0]}' "
                    f"(root {datasets[split]['root']!r}, split {datasets[split]['split']!r}): expected a "
                    "held-out split (never select on test data)"
                )

    # --- values the weights cannot tell, which must therefore be written in the file
    for name, model in (raw.get("models") or {}).items():
        backbone = model.get("backbone") if isinstance(model, Mapping) else None
        if model.get("format") == "mocov3" and not (isinstance(backbone, Mapping) and "num_heads" in backbone):
            # MoCo v3's ViT-S has 12 heads where the default (DeiT's ViT-S) has 6; qkv weights fit both
            problems.append(
                f"models.{name}.backbone.num_heads: not written: expected the number of heads of this "
                "mocov3 model (MoCo v3's ViT-S and ViT-B have 12; the default 6 is DeiT's ViT-S), which "
                "cannot be read from the weights"
            )

    # --- experiments (resolved over pretrain) and the models evaluated
    for name, exp in experiments.items():
        problems += _experiment_problems(name, exp, overrides.get(name) or {})
    patches: dict[int, list[str]] = {}  # patch size -> models
    for name, model in models.items():
        if model["source"] == "experiment":
            if model["experiment"] not in experiments:
                problems.append(
                    f"models.{name}.experiment: '{model['experiment']}' is not a key of experiments "
                    f"(have: {sorted(experiments)})"
                )
                continue
            backbone = experiments[model["experiment"]]["backbone"]
        else:
            backbone = model["backbone"]
            problems += _backbone_problems(f"models.{name}.backbone", backbone)
        patches.setdefault(backbone["patch_size"], []).append(name)
    for name, model in models.items():
        problems += _model_problems(name, model, models, experiments, data["seeds"])
    if not evaluation["keep_aspect"]:
        for patch, names in patches.items():
            if evaluation["resolution"] % patch:
                problems.append(
                    f"evaluation.resolution: {evaluation['resolution']} is not a multiple of the patch "
                    f"size {patch} of model(s) {', '.join(names)}: expected a whole number of patches"
                )

    # --- synthetic scenes
    for dotted in SYNTHETIC_RANGES:
        if problem := _ordered_problem(f"synthetic.{dotted}", data["synthetic"][dotted]):
            problems.append(problem)

    # --- folders: resume state outside every declared output; outputs never the repository itself
    produced = {"results_dir": data["results_dir"], "data_dir": data["data_dir"], "dvc.checkpoint_dir": data["dvc"]["checkpoint_dir"]}
    too_wide = set()
    for key in ("results_dir", "data_dir"):
        folder = os.path.abspath(data[key])
        if folder == os.sep or _inside(os.getcwd(), folder):
            too_wide.add(key)
            where = "the file system root" if folder == os.sep else "the repository root (the working directory) or above it"
            problems.append(f"{key}: {data[key]!r} is {where}: expected a folder of its own, e.g. {key.split('_')[0]}/NAME")
    if check_inputs and data["dvc"]["version_results"] and "results_dir" not in too_wide:
        # `mmc share` (run by the workflow) versions results_dir with DVC: the run's own folder
        # inside the repository; a single stage run elsewhere does not share
        results = os.path.abspath(data["results_dir"])
        if not _inside(results, os.getcwd()) or results == os.path.abspath("results"):
            problems.append(
                f"results_dir: {data['results_dir']!r} is not a run's own folder inside the repository "
                f"({os.getcwd()}): expected e.g. results/<run_name> (dvc.version_results versions it "
                "with DVC), or set dvc.version_results: false"
            )
    for key, folder in produced.items():
        if key not in too_wide and _inside(data["state_dir"], folder):
            problems.append(
                f"state_dir: {data['state_dir']!r} is inside {key} ({folder!r}): expected a folder outside "
                "every declared output (Snakemake deletes a job's outputs before rerunning it)"
            )

    # --- what the run reads that no rule makes: under data_dir the rules make only the synthetic
    # scenes, downloaded datasets and fetched checkpoints (ImageNet shards, say, are prepared by hand)
    if check_inputs:
        data_dir = data["data_dir"]
        made = {
            "results_dir": data["results_dir"],
            "dvc.checkpoint_dir": data["dvc"]["checkpoint_dir"],
            "the synthetic scenes": os.path.join(data_dir, "synthetic"),
            "the fetched checkpoints": os.path.join(data_dir, "checkpoints"),
            **{f"datasets.{n}.root (downloaded)": d["root"] for n, d in datasets.items() if d["archives"]},
        }
        for name, exp in experiments.items():
            override = overrides.get(name) or {}
            if exp["init_checkpoint"] is not None:
                key = f"experiments.{name}" if _set_in(override, "init_checkpoint") else "pretrain"
                problems.append(_input_problem(f"{key}.init_checkpoint", exp["init_checkpoint"], "file", made))
            else:
                key = f"experiments.{name}" if _set_in(override, "data.path") else "pretrain"
                problems.append(_input_problem(f"{key}.data.path", exp["data"]["path"], "folder", made))
        for name, model in models.items():
            if model["source"] == "file":
                problems.append(_input_problem(f"models.{name}.path", model["path"], "file", made))
    return list(dict.fromkeys(p for p in problems if p))  # experiments inheriting one value: said once


# ----------------------------------------------------------------------------- reading YAML
MAX_CONFIG_BYTES = 1 << 20  # configs are a few kB
# Values of a document once aliases are expanded (config/config.yaml: about 400). A YAML alias
# bomb (a "billion laughs") composes into a few dozen nodes that expand to billions: it is refused
# before anything walks it. Ordinary aliases (yaml.safe_dump writes them for shared objects) pass.
MAX_CONFIG_VALUES = 20_000


class _Refused(Exception):
    """A YAML construct the loader does not accept, at a position in the file."""

    def __init__(self, mark, text: str):
        super().__init__(text)
        self.mark, self.text = mark, text


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that records where each alias is used (see ``_check_size``)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.aliases: list[tuple[str, Any]] = []

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            self.aliases.append((event.anchor, event.start_mark))
        return super().compose_node(parent, index)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_size(loader: _Loader, root: yaml.Node) -> None:
    """Count the values of the document as aliases expand it, without expanding it (each node's
    count is computed once); refuse a recursive alias or more than MAX_CONFIG_VALUES values."""
    counts: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    active: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        if children_done:
            active.discard(id(node))
            counts[id(node)] = 1 + sum(counts[id(c)] for c in _children(node))
            continue
        if id(node) in counts:
            continue
        if id(node) in active:
            raise _Refused(node.start_mark, "a value that contains itself (a recursive YAML alias): expected a tree of values")
        active.add(id(node))
        stack.append((node, True))
        stack += [(c, False) for c in _children(node) if id(c) not in counts]
    total = counts[id(root)]
    if total > MAX_CONFIG_VALUES:
        anchor, mark = loader.aliases[0] if loader.aliases else (None, root.start_mark)
        what = f"aliases expand the document (the first alias, *{anchor}, is here) to" if anchor else "the document has"
        raise _Refused(
            mark, f"{what} more than {MAX_CONFIG_VALUES:,} values: expected at most {MAX_CONFIG_VALUES:,} (an alias bomb?)"
        )


def _key_of(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_nodes(loader: _Loader, root: yaml.Node) -> None:
    """Refuse duplicate keys, keys that are not names, and integers Python will not convert."""
    stack, seen_nodes = [("", root)], set()
    while stack:
        path, node = stack.pop()
        if id(node) in seen_nodes:  # an alias: checked where its anchor is
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise _Refused(
                        key_node.start_mark,
                        f"{_key_of(path, '<<')}: YAML merge keys are not supported (not YAML 1.2): expected the "
                        "keys written out (experiments are deep-merged over pretrain already)",
                    )
                key = loader.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a collection"
                    raise _Refused(
                        key_node.start_mark,
                        f"{_key_of(path, shown)}: the key {shown!r} is not read as a name: expected a string key (quote it)",
                    )
                if key in seen:
                    raise _Refused(
                        key_node.start_mark,
                        f"{_key_of(path, key)}: duplicate key (first at line {seen[key] + 1}): "
                        "expected each key once per mapping",
                    )
                seen[key] = key_node.start_mark.line
                stack.append((_key_of(path, key), value_node))
        elif isinstance(node, yaml.SequenceNode):
            stack += [(f"{path}[{i}]", item) for i, item in enumerate(node.value)]
        elif node.tag == "tag:yaml.org,2002:int":
            try:
                loader.construct_yaml_int(node)
            except ValueError:  # beyond sys.get_int_max_str_digits(): Python refuses to convert it
                digits = sum(c.isalnum() for c in node.value)
                raise _Refused(
                    node.start_mark,
                    f"{path or '(top level)'}: an integer of {digits} digits is out of range: "
                    "expected an integer of at most 64 bits (|n| < 2**63)",
                ) from None


def _read_text(path: Path) -> str:
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory: expected a YAML config file")
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file: expected a YAML config file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB: expected a YAML config file (a few kB)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise ConfigError(
            f"{path}: line {line}, column {column} (byte {e.start}): byte 0x{data[e.start]:02x} is not "
            "valid UTF-8: expected a UTF-8 text file"
        ) from None


def load_raw(path: str | Path) -> dict:
    """A config file's YAML as plain data, read strictly: the one loader of ``mmc`` and the workflow.

    UTF-8 only, at most 1 MiB, one document of at most MAX_CONFIG_VALUES values with aliases
    expanded (no alias bomb), no merge keys, no duplicate keys, string keys, integers Python can
    convert; every failure is a one-line ``ConfigError`` naming the file, the line and the key.
    """
    path = Path(path)
    text = _read_text(path)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        _check_size(loader, node)
        _check_nodes(loader, node)
        raw = loader.construct_document(node)
    except _Refused as e:
        raise ConfigError(f"{path}: line {e.mark.line + 1}, column {e.mark.column + 1}: {e.text}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f"{e.context}: " if e.context else ""
        raise ConfigError(f"{path}: {where}not valid YAML: {context}{e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read: expected a config a few levels deep") from None
    finally:
        loader.dispose()
    return raw


def load(path: str | Path, *, check_inputs: bool = False) -> Any:
    """Load, validate and freeze a config file (``check_inputs``: see ``resolve``)."""
    resolved = resolve(load_raw(path), where=str(path), check_inputs=check_inputs)
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


def _allows_null(node: Mapping) -> bool:
    node = _resolve_ref(node)
    types = node.get("type")
    if types == "null" or (isinstance(types, list) and "null" in types):
        return True
    if None in node.get("enum", ()) or ("const" in node and node["const"] is None):
        return True
    return any(_allows_null(option) for option in (*node.get("anyOf", ()), *node.get("oneOf", ())))


def without_absent(data: Any, node: Mapping | None = None) -> Any:
    """Plain config data without the null values that stand for absent keys.

    A frozen config has every field of the schema; an optional key without a default that the
    file did not set reads as None (``models.M.path`` of a model with ``source: experiment``).
    Written out as ``null``, the schema would refuse it: dropping those keys makes a dumped
    config (a job record's snapshot, ``mmc config show``) a file ``load`` accepts, with the same
    :func:`config_hash`. Nulls the schema allows are kept.
    """
    node = _resolve_ref(schema() if node is None else node)
    if isinstance(data, Mapping):
        properties = node.get("properties")
        if properties is not None:
            kept = {}
            for key, value in data.items():
                sub = properties.get(key, {})
                if value is None and key in properties and not _allows_null(sub):
                    continue
                if node is schema() and key == "experiments":  # resolved: full pretraining configs
                    kept[key] = {k: without_absent(v, schema()["$defs"]["pretrain"]) for k, v in value.items()}
                else:
                    kept[key] = without_absent(value, sub)
            return kept
        item = node.get("additionalProperties")
        item = item if isinstance(item, Mapping) else {}
        return {key: without_absent(value, item) for key, value in data.items()}
    if isinstance(data, list):
        return [without_absent(value, node.get("items", {})) for value in data]
    return data


def dump(value: Any) -> str:
    """YAML of a (frozen) config that :func:`load` reads back to the same config and hash."""
    return yaml.safe_dump(without_absent(to_dict(value)), sort_keys=False, default_flow_style=None)
