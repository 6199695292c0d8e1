from __future__ import annotations

import dataclasses
import re
import resource
import subprocess
import textwrap

import pytest
import yaml
from config_mutations import MUTATIONS, merged, mutation_params
from workflow_helpers import MMC, REPO, write_config

from mmc import config
from mmc.errors import ConfigError


def limit_memory() -> None:
    # a regression to expanding YAML aliases must fail the test, not exhaust the shared machine
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def write_config_text(tmp_path, text: str):
    """``text`` (dedented) as the config file, as written: the loader's tests start from YAML text
    (syntax errors, aliases, a top level that is not a mapping). A config dict: ``write_config``."""
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name", ["test.yaml", "study.yaml", "config.yaml"])
def test_shipped_configs_validate(name):
    cfg = config.load(REPO / "config" / name)
    assert cfg.run_name
    assert set(cfg.experiments) and all(e in cfg.experiments for m in cfg.models.values() if m.source == "experiment" for e in [m.experiment])


def test_defaults_come_from_the_schema(tmp_path):
    cfg = config.load(write_config_text(tmp_path, "run_name: x\n"))
    schema = config.schema()
    optim = schema["$defs"]["pretrain"]["properties"]["optim"]["properties"]
    assert cfg.experiments["mmc"].optim.epochs == optim["epochs"]["default"]
    assert cfg.experiments["mmc"].distill.mode == "patch"
    assert cfg.evaluation.thresholds[0] == 0.0 and cfg.evaluation.thresholds[-1] == 0.95
    assert len(cfg.evaluation.thresholds) == 20
    assert cfg.evaluation.prompt == "center" and cfg.evaluation.upsample == "nearest"


def test_objects_are_frozen_and_typed(tmp_path):
    cfg = config.load(write_config_text(tmp_path, "run_name: x\npretrain: {loss: {w_mim: 2}}\n"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run_name = "y"
    assert isinstance(cfg.experiments["mmc"].loss.w_mim, float)  # `2` in YAML, a float field
    assert isinstance(cfg.evaluation.thresholds, tuple)
    with pytest.raises(TypeError):
        cfg.models["new"] = 1


def test_experiments_deep_merge_over_pretrain(tmp_path):
    cfg = config.load(
        write_config_text(
            tmp_path,
            """
            run_name: x
            pretrain: {backbone: {embed_dim: 64, depth: 2, num_heads: 2}, optim: {epochs: 3}}
            experiments:
              full: {}
              ablation: {loss: {w_contrast: 0}, optim: {batch_size: 8}}
            """,
        )
    )
    full, ablation = cfg.experiments["full"], cfg.experiments["ablation"]
    assert ablation.loss.w_contrast == 0.0 and ablation.loss.w_mim == 1.0  # sibling keys keep defaults
    assert ablation.optim.epochs == 3 and ablation.optim.batch_size == 8  # base kept, override wins
    assert full.optim.batch_size == 256
    assert ablation.backbone.embed_dim == full.backbone.embed_dim == 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("run_name: x\nbogus: 1\n", "unknown key 'bogus'"),
        ("run_name: x\npretrain: {optim: {epcohs: 3}}\n", "unknown key 'pretrain.optim.epcohs'"),
        ("run_name: x\npretrain: {optim: {epochs: ten}}\n", 'pretrain.optim.epochs: "ten" has the wrong type: expected integer'),
        ("run_name: x\npretrain: {optim: {epochs: 0}}\n", "pretrain.optim.epochs: 0 is out of range: expected a number >= 1"),
        ("run_name: x\nsynthetic: {size: 4096}\n", "synthetic.size: 4096 is out of range: expected a number <= 2048"),
        ("seed: 3\n", "missing required key 'run_name'"),
        ("run_name: x\nevaluation: {prompt: edge}\n", 'evaluation.prompt: "edge" is not allowed: expected one of center or random'),
        ("run_name: x\nexperiments: {a: {loss: {w_mim: -1}}}\n", "experiments.a.loss.w_mim: -1 is out of range"),
        ("run_name: x\nmodels: {m: {source: experiment}}\n", "missing required key 'models.m.experiment'"),
        ("run_name: x\nmodels: {m: {source: experiment, experiment: nope}}\n", "models.m.experiment: 'nope' is not a key of experiments"),
        ("run_name: x\nevaluation: {datasets: [voc]}\n", "evaluation.datasets: 'voc' is not a key of datasets"),
        ("run_name: x\nevaluation: {resolution: 100}\nmodels: {r: {source: random}}\n", "evaluation.resolution: 100 is not a multiple of the patch size 16 of model(s) r"),
    ],
)
def test_bad_configs_name_the_key_the_value_and_the_expectation(tmp_path, text, expected):
    path = write_config_text(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        config.load(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_selection_split_must_not_be_an_evaluation_split(tmp_path):
    path = write_config_text(
        tmp_path,
        """
        run_name: x
        datasets: {v: {format: voc, root: r}}
        evaluation: {datasets: [v]}
        selection: {policy: "best:miou", dataset: v}
        """,
    )
    with pytest.raises(ConfigError, match="never select on test data"):
        config.load(path)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        config.load(tmp_path)
    with pytest.raises(ConfigError, match="line 2, column 1: not valid YAML: while parsing a flow sequence: expected ',' or ']'"):
        config.load(write_config_text(tmp_path, "run_name: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a YAML mapping"):
        config.load(write_config_text(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize("mutation", mutation_params())
def test_bad_config_is_refused_in_one_line_by_mmc_config_check(tmp_path, mutation):
    """Every class of mistake (tests/config_mutations.py): exit 2, one line naming the key, the
    value and the expectation, no traceback. The workflow's verdict is tested in test_workflow.py."""
    mutation.make(tmp_path)
    done = subprocess.run(
        ["timeout", "-k", "5", "60", *MMC, "config", "check", "config/config.yaml"],
        cwd=tmp_path, capture_output=True, text=True, preexec_fn=limit_memory,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout == "" and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("mmc config: error: config/config.yaml: ")
    assert re.search(mutation.expected, lines[0]), lines[0]


def test_unmutated_test_config_passes_the_check(tmp_path):
    # the mutations above start from this file: it must pass, with the same working directory
    merged({})(tmp_path)
    done = subprocess.run([*MMC, "config", "check", "config/config.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_every_mutation_class_has_a_workflow_case():
    classes = {m.kind for m in MUTATIONS}
    assert classes == {m.kind for m in MUTATIONS if m.workflow}


def test_several_problems_are_one_line_each_named(tmp_path):
    path = write_config_text(tmp_path, "run_name: x\npretrain: {backbone: {num_heads: 5}, mask: {ratio: [0.9, 0.1]}}\n")
    with pytest.raises(ConfigError) as error:
        config.load(path)
    message = str(error.value)
    assert "\n" not in message and "(2 problems)" in message
    assert "pretrain.backbone.num_heads: 5 does not divide" in message and "pretrain.mask.ratio: [0.9, 0.1] is reversed" in message


def test_a_value_inherited_by_every_experiment_is_named_once_where_it_is_set(tmp_path):
    path = write_config_text(
        tmp_path,
        """
        run_name: x
        pretrain: {checkpoint: {save_epochs: [200]}}
        experiments: {a: {}, b: {loss: {w_mim: 0}}, c: {optim: {epochs: 300}}}
        """,
    )
    with pytest.raises(ConfigError) as error:
        config.load(path)
    message = str(error.value)
    assert message.count("save_epochs") == 1  # said once for a and b, not at all for c (300 epochs)
    assert "pretrain.checkpoint.save_epochs: [200] exceed pretrain.optim.epochs (100)" in message


def test_schedules_are_not_ranges(tmp_path):
    # weight decay, EMA momentum and the teacher temperature go from a start to an end value,
    # either way; blur and solarisation give one probability per view
    cfg = config.load(
        write_config_text(
            tmp_path,
            """
            run_name: x
            pretrain:
              optim: {weight_decay: [0.4, 0.04], ema_momentum: [1.0, 0.996]}
              distill: {teacher_temp: [0.07, 0.04]}
              augment: {blur_p: [1.0, 0.1]}
            """,
        )
    )
    assert cfg.experiments["mmc"].optim.weight_decay == (0.4, 0.04)


def test_inputs_are_checked_only_when_asked(tmp_path):
    # every `mmc` stage reads the config without the file-system rules; `mmc config check` and the
    # Snakefile apply them (a stage never fails for a file only another stage reads)
    text = f"run_name: x\npretrain: {{data: {{path: {tmp_path / 'absent'}}}}}\n"
    path = write_config_text(tmp_path, text)
    assert config.load(path).experiments["mmc"].data.path == str(tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"pretrain\.data\.path: .* does not exist"):
        config.load(path, check_inputs=True)
    (tmp_path / "absent").mkdir()
    config.load(path, check_inputs=True)


def test_inputs_the_workflow_makes_need_not_exist_yet(tmp_path):
    # under data_dir (the synthetic scenes), results_dir or dvc.checkpoint_dir a rule makes them
    path = write_config_text(
        tmp_path,
        f"""
        run_name: x
        data_dir: {tmp_path / "data"}
        pretrain: {{data: {{path: {tmp_path / "data" / "synthetic" / "unlabelled"}}}}}
        experiments: {{a: {{}}, b: {{init_checkpoint: checkpoints/a.pth}}}}
        """,
    )
    cfg = config.load(path, check_inputs=True)
    assert cfg.experiments["b"].init_checkpoint == "checkpoints/a.pth"


def test_selection_metrics_of_the_schema_are_those_select_knows():
    from mmc.select import METRIC_KEYS

    policies = config.schema()["properties"]["selection"]["properties"]["policy"]["enum"]
    assert set(policies) == {"last"} | {f"best:{m}" for m in METRIC_KEYS}


def test_ordinary_aliases_are_read(tmp_path):
    # yaml.safe_dump writes an anchor and aliases for an object used twice: such files are fine
    backbone = {"patch_size": 8, "embed_dim": 96, "depth": 2, "num_heads": 3, "img_size": 64}
    raw = {"run_name": "x", "models": {a: {"source": "random", "backbone": backbone} for a in "ab"}}
    text = yaml.safe_dump(raw)
    assert "&id001" in text and "*id001" in text
    assert config.load_raw(write_config_text(tmp_path, text)) == raw
    assert config.load(tmp_path / "config.yaml").models["b"].backbone.embed_dim == 96


def test_yaml_loader_reads_what_safe_load_reads(tmp_path):
    # the strict loader refuses constructs, never changes what an accepted file means
    for name in ("test.yaml", "study.yaml", "config.yaml"):
        text = (REPO / "config" / name).read_text()
        assert config.load_raw(REPO / "config" / name) == yaml.safe_load(text)


def test_cli_show_prints_the_resolved_config_and_errors(tmp_path):
    shown = subprocess.run([*MMC, "config", "show", str(REPO / "config" / "test.yaml")], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    resolved = yaml.safe_load(shown.stdout)
    assert resolved["experiments"]["mim_only"]["loss"] == {"w_mim": 1.0, "w_distill": 0.0, "w_contrast": 0.0}
    assert resolved["tracking"]["experiment"] == "mmc-repro"  # a default filled in
    bad = subprocess.run([*MMC, "config", "show", str(write_config_text(tmp_path, "run_name: x\nseed: one\n"))], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "seed: \"one\" has the wrong type: expected integer" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_config_hash_is_stable_and_sensitive(tmp_path):
    a = config.load(write_config_text(tmp_path, "run_name: x\n"))
    b = config.load(write_config_text(tmp_path, "run_name: x\nseed: 0\n"))  # the default, written out
    c = config.load(write_config_text(tmp_path, "run_name: x\nseed: 1\n"))
    assert config.config_hash(a) == config.config_hash(b) != config.config_hash(c)


def test_seeds_references_and_initial_weights():
    tiny = {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "img_size": 32}
    raw = {
        "run_name": "x",
        "seeds": [3, 4],
        "pretrain": {"backbone": tiny},
        "experiments": {"a": {}, "given": {"init_checkpoint": "some.pth"}},
        "models": {
            "a": {"source": "experiment", "experiment": "a", "reference": "a_init"},
            "a_init": {"source": "experiment", "experiment": "a", "checkpoint": "initial"},
            "rand": {"source": "random", "backbone": tiny},
            "rand5": {"source": "random", "backbone": tiny, "seed": 5},
            "colour": {"source": "colour", "backbone": {"patch_size": 8}, "reference": "rand5"},
        },
    }
    data = config.resolve(raw)
    assert config.resolve({"run_name": "x", "seed": 7})["seeds"] == [7]  # null: the base seed alone
    models = data["models"]
    assert config.model_seeds(models["a"], data["seeds"]) == (3, 4) == config.model_seeds(models["rand"], [3, 4])
    assert config.model_seeds(models["rand5"], [3, 4]) is None and config.model_seeds(models["colour"], [3, 4]) is None
    assert [config.run_name("a", 3), config.run_name("colour", None)] == ["a/seed3", "colour"]
    assert config.reference_seed((3, 4), 4) == 4 and config.reference_seed(None, 4) is None
    assert config.reference_seed((3,), None) == 3
    with pytest.raises(KeyError):
        config.reference_seed((3, 4), None)

    def problem(models: dict) -> str:
        with pytest.raises(ConfigError) as caught:
            config.resolve({**raw, "models": {**raw["models"], **models}})
        return str(caught.value)

    assert "models.g.checkpoint: 'initial': experiment 'given' sets init_checkpoint" in problem(
        {"g": {"source": "experiment", "experiment": "given", "checkpoint": "initial"}}
    )
    assert "models.c.reference: 'a' is evaluated with seeds [3, 4], not with no seed of c" in problem(
        {"c": {"source": "colour", "reference": "a"}}
    )
    assert "models.c.reference: 'nope' is not a key of models" in problem({"c": {"source": "colour", "reference": "nope"}})


@pytest.mark.parametrize("name", ["test.yaml", "study.yaml", "config.yaml"])
def test_a_dumped_config_loads_back_to_the_same_config(tmp_path, name):
    # a job record's config snapshot is config.dump of the resolved config: `mmc reproduce` runs
    # the recorded command on it, so it must load to the same hash
    cfg = config.load(REPO / "config" / name)
    text = config.dump(cfg)
    again = config.load(write_config_text(tmp_path, text))
    assert config.config_hash(again) == config.config_hash(cfg)
    assert config.dump(again) == text
    raw = yaml.safe_load(text)
    # absent optional keys are not written as nulls the schema refuses; allowed nulls stay
    assert all("path" not in m for m in raw["models"].values() if m["source"] == "experiment")
    assert "uri" in raw["tracking"] and raw["tracking"]["uri"] is None


def test_without_absent_makes_an_old_snapshot_loadable(tmp_path):
    cfg = config.load(REPO / "config" / "test.yaml")
    old = config.to_dict(cfg)  # what snapshots held before: every field, absent ones as null
    assert old["models"]["mmc"]["path"] is None
    with pytest.raises(ConfigError, match=r"models\.mmc\.path: null has the wrong type"):
        config.load(write_config(tmp_path, old))
    fixed = config.load(write_config(tmp_path, config.without_absent(old)))
    assert config.config_hash(fixed) == config.config_hash(cfg)
