from __future__ import annotations

import dataclasses
import subprocess
import textwrap

import pytest
import yaml

from mmc import config
from mmc.errors import ConfigError
from tests.conftest import MMC, REPO


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name", ["test.yaml", "config.yaml"])
def test_shipped_configs_validate(name):
    cfg = config.load(REPO / "config" / name)
    assert cfg.run_name
    assert set(cfg.experiments) and all(e in cfg.experiments for m in cfg.models.values() if m.source == "experiment" for e in [m.experiment])


def test_defaults_come_from_the_schema(tmp_path):
    cfg = config.load(write(tmp_path, "run_name: x\n"))
    schema = config.schema()
    optim = schema["$defs"]["pretrain"]["properties"]["optim"]["properties"]
    assert cfg.experiments["mmc"].optim.epochs == optim["epochs"]["default"]
    assert cfg.experiments["mmc"].distill.mode == "patch"
    assert cfg.evaluation.thresholds[0] == 0.0 and cfg.evaluation.thresholds[-1] == 0.95
    assert len(cfg.evaluation.thresholds) == 20
    assert cfg.evaluation.prompt == "center" and cfg.evaluation.upsample == "nearest"


def test_objects_are_frozen_and_typed(tmp_path):
    cfg = config.load(write(tmp_path, "run_name: x\npretrain: {loss: {w_mim: 2}}\n"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run_name = "y"
    assert isinstance(cfg.experiments["mmc"].loss.w_mim, float)  # `2` in YAML, a float field
    assert isinstance(cfg.evaluation.thresholds, tuple)
    with pytest.raises(TypeError):
        cfg.models["new"] = 1


def test_experiments_deep_merge_over_pretrain(tmp_path):
    cfg = config.load(
        write(
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
        ("run_name: x\nevaluation: {resolution: 100}\nmodels: {r: {source: random}}\n", "evaluation.resolution: 100 is not a multiple"),
    ],
)
def test_bad_configs_name_the_key_the_value_and_the_expectation(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        config.load(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_selection_split_must_not_be_an_evaluation_split(tmp_path):
    path = write(
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
    with pytest.raises(ConfigError, match="cannot read the config file"):
        config.load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(write(tmp_path, "run_name: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a YAML mapping"):
        config.load(write(tmp_path, "- a\n- b\n"))


def test_cli_show_prints_the_resolved_config_and_errors(tmp_path):
    shown = subprocess.run([*MMC, "config", "show", str(REPO / "config" / "test.yaml")], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    resolved = yaml.safe_load(shown.stdout)
    assert resolved["experiments"]["mim_only"]["loss"] == {"w_mim": 1.0, "w_distill": 0.0, "w_contrast": 0.0}
    assert resolved["tracking"]["experiment"] == "mmc-repro"  # a default filled in
    bad = subprocess.run([*MMC, "config", "show", str(write(tmp_path, "run_name: x\nseed: one\n"))], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "seed: \"one\" has the wrong type: expected integer" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_config_hash_is_stable_and_sensitive(tmp_path):
    a = config.load(write(tmp_path, "run_name: x\n"))
    b = config.load(write(tmp_path, "run_name: x\nseed: 0\n"))  # the default, written out
    c = config.load(write(tmp_path, "run_name: x\nseed: 1\n"))
    assert config.config_hash(a) == config.config_hash(b) != config.config_hash(c)


@pytest.mark.parametrize("name", ["test.yaml", "config.yaml"])
def test_a_dumped_config_loads_back_to_the_same_config(tmp_path, name):
    # a job record's config snapshot is config.dump of the resolved config: `mmc reproduce` runs
    # the recorded command on it, so it must load to the same hash
    cfg = config.load(REPO / "config" / name)
    text = config.dump(cfg)
    again = config.load(write(tmp_path, text))
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
        config.load(write(tmp_path, yaml.safe_dump(old)))
    fixed = config.load(write(tmp_path, yaml.safe_dump(config.without_absent(old))))
    assert config.config_hash(fixed) == config.config_hash(cfg)
