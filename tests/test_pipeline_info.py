"""`mmc pipeline-info` on a real (tiny) Snakemake run with benchmark files."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from workflow_helpers import REPO, write_config

from mmc import config, tracking, versions

SNAKEFILE = """
rule all:
    input:
        "results/b.txt",


rule make_a:
    output:
        "results/a-{n}.txt",
    benchmark:
        "results/benchmarks/make_a/n={n}.jsonl"
    shell:
        "python -c 'sum(range(3_000_000))' && echo {wildcards.n} > {output}"


rule make_b:
    input:
        "results/a-1.txt",
    output:
        "results/b.txt",
    benchmark:
        repeat("results/benchmarks/make_b.tsv", 2)
    shell:
        "cat {input} > {output}"
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def test_pipeline_info_collects_config_versions_rulegraph_and_trace(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    write_config(tmp_path, {"run_name": "info", "results_dir": "results"})
    run = subprocess.run([sys.executable, "-m", "snakemake", "-c1", "--benchmark-extended", "--snakefile", "Snakefile"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    done = subprocess.run([sys.executable, "-m", "mmc", "pipeline-info", "--config", "config.yaml",
                           "--snakefile", "Snakefile"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    info = tmp_path / "results" / "pipeline_info"

    assert (info / "config.yaml").read_text() == config.dump(config.load(tmp_path / "config.yaml"))
    software = yaml.safe_load((info / "software_versions.yaml").read_text())
    for package in ("snakemake", "snakemake-executor-plugin-slurm", "torch", "dvc", "mlflow"):
        assert software["versions"][package] == importlib.metadata.version(package)
    assert software["versions"]["gpus"]  # a model name or "none"
    assert software["python_packages"]["PyYAML"] == yaml.__version__
    assert software["versions"]["git_commit"] == versions.git_state()["commit"]

    dot = (info / "rulegraph.dot").read_text()
    assert dot.startswith("digraph") and all(rule in dot for rule in ("make_a", "make_b", "all"))

    with open(info / "trace.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["rule"], r["repeat"]) for r in rows) == [("make_a", "0"), ("make_b", "0"), ("make_b", "1")]
    make_a = next(r for r in rows if r["rule"] == "make_a")
    assert json.loads(make_a["wildcards"]) == {"n": "1"} and float(make_a["duration_s"]) > 0
    assert make_a["start"].endswith("+00:00")
    first, second = sorted((r for r in rows if r["rule"] == "make_b"), key=lambda r: r["repeat"])
    assert first["start"] <= second["start"]

    index = json.loads((info / "index.json").read_text())
    assert index["report"] == {"path": "results/report.html", "exists": False}
    assert index["tracking"]["store"] == "sqlite:///results/tracking/mlflow.db"
    assert str(tmp_path) not in json.dumps(index)  # it travels with the run folder: no absolute path


def test_missing_snakefile_is_a_note_not_a_failure(tmp_path, monkeypatch):
    write_config(tmp_path, {"run_name": "info", "results_dir": "results"})
    monkeypatch.chdir(tmp_path)
    with tracking.job("tables", config.load("config.yaml"), wildcards={"table": "main"}):
        pass
    done = subprocess.run([sys.executable, "-m", "mmc", "pipeline-info", "--config", "config.yaml",
                           "--snakefile", "nowhere/Snakefile"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "rulegraph: no Snakefile at nowhere/Snakefile" in done.stdout
    index = json.loads((tmp_path / "results" / "pipeline_info" / "index.json").read_text())
    assert "rulegraph" not in index["files"] and index["notes"]["trace"].startswith("no benchmark files")
    with open(tmp_path / "results" / "pipeline_info" / "jobs.csv") as handle:
        (job,) = list(csv.DictReader(handle))
    assert (job["name"], job["status"], job["wildcards"]) == ("tables-table=main", "FINISHED", '{"table": "main"}')
    assert job["git_commit"] == versions.git_state()["commit"] and float(job["duration_s"]) >= 0
