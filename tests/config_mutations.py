"""Bad configs: mutations of config/test.yaml, each with the message it must get.

One row per mutation: its class (what kind of mistake), an id, how to make the file from the text
of config/test.yaml, the fragment of the one-line error that names the key, the value and the
expectation, and how the workflow sees the file:

- ``"configfile"``: ``snakemake -n --configfile config/config.yaml``;
- ``"default"``: ``snakemake -n`` with the file at the default place (config/config.yaml). Used for
  files Snakemake's own command line cannot parse: it reads ``--configfile`` itself before any
  workflow code runs, and crashes with a traceback on them (see docs/workflow.md); read from the
  default place, they reach the workflow's loader (mmc.config.load_raw) first;
- ``None``: checked with ``mmc config check`` only (a variant of a class checked through both).

Tests write the file to ``WORKDIR/config/config.yaml`` and run both commands in WORKDIR.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from workflow_helpers import REPO, write_config

BASE_TEXT = (REPO / "config" / "test.yaml").read_text()
CONFIG = Path("config") / "config.yaml"
APPENDED = BASE_TEXT.count("\n") + 1  # the line number of the first line appended to config/test.yaml


@dataclass(frozen=True)
class Mutation:
    kind: str  # the class of mistake
    id: str
    make: Callable[[Path], None]  # writes WORKDIR/config/config.yaml (or makes it something else)
    expected: str  # a fragment of the one-line message (a regular expression)
    workflow: str | None = "configfile"


def _write(text: str | bytes) -> Callable[[Path], None]:
    def make(workdir: Path) -> None:
        path = workdir / CONFIG
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    return make


def merged(overrides: dict) -> Callable[[Path], None]:
    """config/test.yaml with ``overrides`` deep-merged in (written with ``write_config``)."""
    from mmc.config import deep_merge

    raw = deep_merge(yaml.safe_load(BASE_TEXT), overrides)

    def make(workdir: Path) -> None:
        write_config(workdir / CONFIG, raw)

    return make


def replaced(old: str, new: str) -> Callable[[Path], None]:
    assert BASE_TEXT.count(old) == 1, old
    return _write(BASE_TEXT.replace(old, new))


def appended(text: str | bytes) -> Callable[[Path], None]:
    return _write(BASE_TEXT.encode() + (text if isinstance(text, bytes) else text.encode()))


def _directory(workdir: Path) -> None:
    (workdir / CONFIG).mkdir(parents=True)


def _missing(workdir: Path) -> None:
    (workdir / "config").mkdir(parents=True, exist_ok=True)


def _list_bomb() -> str:
    """The "billion laughs": 9 levels of 10 aliases each, 10**9 strings once expanded."""
    lines = ["bomb:", "  l0: &l0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def _mapping_bomb() -> str:
    lines = ["bomb:", "  m0: &m0 {" + ", ".join(f"k{j}: {j}" for j in range(10)) + "}"]
    lines += [f"  m{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(10)) + "}" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


MISSING = "/nonexistent/mmc-repro-test"
MUTATIONS = [
    # ------------------------------------------------------------------ reading the file
    Mutation("YAML alias bomb", "lists", appended(_list_bomb()), rf"line {APPENDED + 2}, column 12: aliases expand the document \(the first alias, \*l0, is here\) to more than 20,000 values: expected at most 20,000"),
    Mutation("YAML alias bomb", "mappings", appended(_mapping_bomb()), rf"line {APPENDED + 2}, column 16: aliases expand the document \(the first alias, \*m0, is here\) to more than 20,000 values", workflow=None),
    Mutation("YAML alias bomb", "recursive", appended("seed: &s [1, *s]\n"), rf"line {APPENDED}, column 7: a value that contains itself \(a recursive YAML alias\): expected a tree of values", workflow=None),
    Mutation("YAML merge key", "merge", appended("tracking: {<<: {enabled: false}}\n"), r"tracking\.<<: YAML merge keys are not supported \(not YAML 1\.2\)"),
    Mutation("duplicate key", "top-level", appended("run_name: again\n"), rf"line {APPENDED}, column 1: run_name: duplicate key \(first at line 3\): expected each key once per mapping"),
    Mutation("duplicate key", "nested", replaced("optim: {epochs: 4,", "optim: {epochs: 4, epochs: 5,"), r"pretrain\.optim\.epochs: duplicate key \(first at line 22\)", workflow=None),
    Mutation("key not a name", "bool-key", appended("yes: 1\n"), r"yes: the key 'yes' is not read as a name: expected a string key"),
    Mutation("non-UTF-8 bytes", "latin-1", appended(b"seed: 1 # caf\xe9\n"), rf"line {APPENDED}, column 14 \(byte \d+\): byte 0xe9 is not valid UTF-8: expected a UTF-8 text file", workflow="default"),
    Mutation("huge integer", "5000-digit", appended("seed: " + "9" * 5000 + "\n"), rf"line {APPENDED}, column 7: seed: an integer of 5000 digits is out of range: expected an integer of at most 64 bits", workflow="default"),
    Mutation("huge integer", "beyond-64-bit", appended("seed: " + str(10**30) + "\n"), r"seed: 1000000000000000000000000000000 is out of range: expected an integer of at most 64 bits", workflow=None),
    Mutation("not a config file", "directory", _directory, r"config/config\.yaml: is a directory: expected a YAML config file", workflow="default"),
    Mutation("not a config file", "missing", _missing, r"config/config\.yaml: no such config file", workflow="default"),
    Mutation("not a config file", "too-large", appended("#" + "x" * (1 << 20) + "\n"), r"larger than 1 MiB: expected a YAML config file", workflow=None),
    Mutation("not YAML", "unclosed", appended("seed: [1\n"), r"not valid YAML: ", workflow="default"),
    Mutation("not YAML", "two-documents", appended("---\nrun_name: other\n"), rf"line {APPENDED}, column 1: not valid YAML: expected a single document in the stream: but found another document", workflow=None),
    Mutation("not a mapping", "list", _write("- run_name\n- test\n"), r"expected a YAML mapping at the top level, got list", workflow="default"),
    # ------------------------------------------------------------------ numbers
    Mutation("NaN/inf number", "nan", replaced("base_lr: 0.005", "base_lr: .nan"), r"pretrain\.optim\.base_lr: nan is not a finite number: expected a finite number"),
    Mutation("NaN/inf number", "inf", merged({"pretrain": {"optim": {"clip_grad": float("inf")}}}), r"pretrain\.optim\.clip_grad: inf is not a finite number: expected a finite number", workflow=None),
    Mutation("NaN/inf number", "minus-inf-in-list", merged({"evaluation": {"thresholds": [0.1, float("-inf")]}}), r"evaluation\.thresholds\[1\]: -inf is not a finite number", workflow=None),
    Mutation("wrong type", "float-epochs", replaced("epochs: 4,", "epochs: 4.0,"), r"pretrain\.optim\.epochs: 4\.0 has the wrong type: expected integer"),
    # ------------------------------------------------------------------ schema
    Mutation("unknown key", "typo", merged({"pretrain": {"optim": {"epcohs": 3}}}), r"unknown key 'pretrain\.optim\.epcohs'"),
    Mutation("unknown selection metric", "best:nonsense", replaced('policy: "best:miou"', 'policy: "best:nonsense"'), r'selection\.policy: "best:nonsense" is not allowed: expected one of last or best:miou or best:oracle_miou or best:demo_miou'),
    # ------------------------------------------------------------------ rules across keys
    Mutation("heads do not divide the width", "pretrain", merged({"pretrain": {"backbone": {"num_heads": 5}}}), r"pretrain\.backbone\.num_heads: 5 does not divide pretrain\.backbone\.embed_dim \(96\): expected a divisor of the width"),
    Mutation("heads do not divide the width", "experiment", merged({"experiments": {"mim_only": {"backbone": {"num_heads": 7}}}}), r"experiments\.mim_only\.backbone\.num_heads: 7 does not divide", workflow=None),
    Mutation("heads do not divide the width", "model", merged({"models": {"random": {"source": "random", "backbone": {"patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 5, "img_size": 64}}}}), r"models\.random\.backbone\.num_heads: 5 does not divide models\.random\.backbone\.embed_dim \(96\)", workflow=None),
    Mutation("patch larger than the image", "img_size", merged({"pretrain": {"backbone": {"img_size": 4}}}), r"pretrain\.backbone\.patch_size: 8 is larger than pretrain\.backbone\.img_size \(4\): expected a patch no larger than the image"),
    Mutation("size not a multiple of the patch", "img_size", merged({"pretrain": {"backbone": {"img_size": 60}}}), r"pretrain\.backbone\.img_size: 60 is not a multiple of pretrain\.backbone\.patch_size \(8\): expected a whole number of patches"),
    Mutation("size not a multiple of the patch", "crop", merged({"experiments": {"mmc": {"data": {"global_crop_size": 60}}}}), r"experiments\.mmc\.data\.global_crop_size: 60 is not a multiple of experiments\.mmc\.backbone\.patch_size \(8\)", workflow=None),
    Mutation("size not a multiple of the patch", "local-crop", merged({"pretrain": {"data": {"local_crops": 2, "local_crop_size": 20}}}), r"pretrain\.data\.local_crop_size: 20 is not a multiple", workflow=None),
    Mutation("size not a multiple of the patch", "evaluation", merged({"evaluation": {"resolution": 100}}), r"invalid configuration: evaluation\.resolution: 100 is not a multiple of the patch size 8 of model\(s\) mmc, mim_only, init, colour: expected a whole number of patches", workflow=None),
    Mutation("reversed range", "crop-scale", merged({"pretrain": {"data": {"global_crop_scale": [1.0, 0.25]}}}), r"pretrain\.data\.global_crop_scale: \[1\.0, 0\.25\] is reversed: expected \[low, high\] with low <= high"),
    Mutation("reversed range", "mask-ratio", merged({"experiments": {"mim_only": {"mask": {"ratio": [0.5, 0.1]}}}}), r"experiments\.mim_only\.mask\.ratio: \[0\.5, 0\.1\] is reversed", workflow=None),
    Mutation("reversed range", "aspect-ratio", merged({"pretrain": {"mask": {"aspect_ratio": [3.0, 0.3]}}}), r"pretrain\.mask\.aspect_ratio: \[3\.0, 0\.3\] is reversed", workflow=None),
    Mutation("reversed range", "objects", merged({"synthetic": {"objects": [4, 1]}}), r"synthetic\.objects: \[4, 1\] is reversed", workflow=None),
    Mutation("all loss weights 0", "ablation", merged({"experiments": {"mim_only": {"loss": {"w_mim": 0.0}}}}), r"experiments\.mim_only\.loss: w_mim=0, w_distill=0, w_contrast=0: expected at least one loss weight > 0"),
    Mutation("micro-batch not dividing the batch", "3-of-32", merged({"pretrain": {"optim": {"micro_batch_size": 3}}}), r"pretrain\.optim\.micro_batch_size: 3 does not divide pretrain\.optim\.batch_size \(32\): expected a divisor"),
    Mutation("save_epochs beyond epochs", "99", merged({"pretrain": {"checkpoint": {"save_epochs": [2, 99]}}}), r"pretrain\.checkpoint\.save_epochs: \[99\] exceed pretrain\.optim\.epochs \(4\): expected epochs within the run"),
    Mutation("save_epochs beyond epochs", "shorter-ablation", merged({"experiments": {"mim_only": {"optim": {"epochs": 1}}}}), r"experiments\.mim_only\.checkpoint\.save_epochs: \[2\] exceed experiments\.mim_only\.optim\.epochs \(1\)", workflow=None),
    Mutation("state_dir inside a declared output", "results_dir", merged({"state_dir": "results/test"}), r"state_dir: 'results/test' is inside results_dir \('results/test'\): expected a folder outside every declared output"),
    Mutation("state_dir inside a declared output", "checkpoint_dir", merged({"state_dir": "checkpoints/test/state"}), r"state_dir: 'checkpoints/test/state' is inside dvc\.checkpoint_dir", workflow=None),
    Mutation("results_dir is / or the repository", "root", merged({"results_dir": "/"}), r"invalid configuration: results_dir: '/' is the file system root: expected a folder of its own"),
    Mutation("results_dir is / or the repository", "repository", merged({"results_dir": "."}), r"invalid configuration: results_dir: '\.' is the repository root \(the working directory\) or above it", workflow=None),
    Mutation("versioned run folder not the run's own", "results", merged({"results_dir": "results"}), r"results_dir: 'results' is not a run's own folder inside the repository \(.*\): expected e\.g\. results/<run_name>"),
    Mutation("missing external input", "pretrain-data", merged({"pretrain": {"data": {"path": MISSING}}}), re.escape(f"pretrain.data.path: '{MISSING}' does not exist: expected an existing folder (no rule of the workflow makes it)")),
    Mutation("missing external input", "init_checkpoint", merged({"experiments": {"mmc": {"init_checkpoint": MISSING + ".pth"}}}), re.escape(f"experiments.mmc.init_checkpoint: '{MISSING}.pth' does not exist: expected an existing file"), workflow=None),
    Mutation("missing external input", "model-file", merged({"models": {"given": {"source": "file", "path": MISSING + ".pth"}}}), re.escape(f"models.given.path: '{MISSING}.pth' does not exist: expected an existing file"), workflow=None),
    Mutation("unknown reference", "selection-on-test-data", merged({"selection": {"dataset": "synthetic_val"}}), r"selection\.dataset: 'synthetic_val' is also an evaluation dataset \(never select on test data\)"),
    Mutation("selection split read by the evaluation", "same-root-and-split", merged({"datasets": {"synthetic_select": {"split": "val", "max_images": None}}}), r"selection\.dataset: 'synthetic_select' reads the same images as evaluation dataset 'synthetic_val' \(root 'data/synthetic/VOCdevkit/VOC2012', split 'val'\): expected a held-out split"),
    Mutation("value the weights cannot tell", "mocov3-heads", merged({"models": {"moco": {"source": "random", "format": "mocov3", "backbone": {"patch_size": 8, "embed_dim": 96, "depth": 4, "img_size": 64}}}}), r"models\.moco\.backbone\.num_heads: not written: expected the number of heads of this mocov3 model"),
    Mutation("unknown reference", "model-reference", merged({"models": {"mmc": {"reference": "nope"}}}), r"models\.mmc\.reference: 'nope' is not a key of models \(have: \['colour', 'init', 'mim_only', 'mmc'\]\)", workflow=None),
    Mutation("unknown reference", "reference-itself", merged({"models": {"mmc": {"reference": "mmc"}}}), r"models\.mmc\.reference: 'mmc' is the model itself", workflow=None),
    Mutation("initial weights of nothing pretrained", "initial-colour", merged({"models": {"colour": {"checkpoint": "initial"}}}), r"models\.colour\.checkpoint: 'initial' is for source experiment .*not source 'colour'"),
    Mutation("unknown reference", "model-experiment", merged({"models": {"mmc": {"experiment": "nope"}}}), r"models\.mmc\.experiment: 'nope' is not a key of experiments \(have: \['mim_only', 'mmc'\]\)", workflow=None),
]


def mutation_params(workflow_only: bool = False):
    import pytest

    rows = [m for m in MUTATIONS if m.workflow or not workflow_only]
    return [pytest.param(m, id=f"{m.kind} / {m.id}") for m in rows]
