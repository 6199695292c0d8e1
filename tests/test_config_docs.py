"""config/README.md is generated from the schema (mmc config docs) and must match the schema now."""

from __future__ import annotations

import subprocess
import sys

import pytest
from workflow_helpers import REPO

from mmc import config, config_docs, records


def test_config_readme_is_current():
    committed = (REPO / "config" / "README.md").read_text()
    generated = config_docs.current()
    if committed != generated:
        changed = next((i for i, (a, b) in enumerate(zip(committed.splitlines(), generated.splitlines(), strict=False), 1) if a != b),
                       min(len(committed.splitlines()), len(generated.splitlines())) + 1)
        pytest.fail(f"config/README.md is out of date with workflow/schemas/config.schema.yaml (first difference at "
                    f"line {changed}): run `{config_docs.COMMAND}` and commit the result")


def test_every_section_and_every_key_with_a_default_is_described():
    page = config_docs.current()
    defaults = config.to_dict(config.freeze(config.resolve({"run_name": "x"})))
    for section in config.schema()["properties"]:
        assert f"`{section}`" in page, section
    flat = records.flatten_params({k: v for k, v in defaults.items() if k not in ("experiments", "models", "datasets")})
    missing = [key for key in flat if f"`{key}`" not in page]
    assert not missing, missing
    # every section has a description of its own (the catalog's "describe every section")
    schema = config.schema()
    for section, node in schema["properties"].items():
        assert config_docs._resolve(node, schema).get("description"), f"{section}: no description in the schema"


def test_the_command_writes_the_page(tmp_path):
    out = tmp_path / "README.md"
    done = subprocess.run([sys.executable, "-m", "mmc", "config", "docs", "--out", str(out)], capture_output=True,
                          text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == config_docs.current()
    shown = subprocess.run([sys.executable, "-m", "mmc", "config", "docs"], capture_output=True, text=True, cwd=REPO)
    assert shown.stdout == out.read_text()
