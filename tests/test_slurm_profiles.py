"""What the SLURM profiles submit for the paper config, rendered by the installed executor plugin.

tests/slurm_render.py dry-runs the workflow with a profile and hands every job that would be
submitted to the plugin's own sbatch-building functions. The expected numbers are read from the
profile files here, independently of Snakemake: CPUs = cpus_per_gpu x GPUs, memory = per-CPU
memory x CPUs, the time limit, the warning signal, the pretraining launch.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO, paper_config

from mmc.pretrain.launch import launcher, slurm_launcher

PROFILES = REPO / "workflow" / "profiles"
SUBMITTED = {"pretrain", "select", "segment", "similarity", "figures", "explorer"}
LOCAL = {"all", "download", "fetch_checkpoint", "publish", "report", "tables", "version_data"}
GPU_RULES = {"pretrain", "segment", "similarity"}


def render(profile: Path, configfile: Path) -> dict:
    cmd = [sys.executable, str(REPO / "tests" / "slurm_render.py"), "--profile", str(profile),
           "--configfile", str(configfile)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module", params=["slurm", "slurm-multinode"])
def profile(request, tmp_path_factory):
    path = PROFILES / request.param
    configfile = paper_config(tmp_path_factory.mktemp(request.param))
    return request.param, yaml.safe_load((path / "config.yaml").read_text()), render(path, configfile)


def sbatch_options(call: str) -> dict[str, str]:
    """`--opt=v`, `--opt v` and `-t v` of an sbatch line (the plugin writes both spellings)."""
    words, options = shlex.split(call)[1:], {}
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--") and "=" in word:
            key, value = word.split("=", 1)
        elif word.startswith("-") and i + 1 < len(words) and not words[i + 1].startswith("-"):
            key, value = word, words[i + 1]
            i += 1
        else:
            key, value = word, ""
        assert key not in options, f"{key} given twice in {call}"
        options[key] = value
        i += 1
    return options


def expected(settings: dict, rule: str) -> dict:
    """A rule's resources as the profile file states them (its set-resources over default-resources)."""
    return {**settings["default-resources"], **(settings["set-resources"].get(rule) or {})}


def gpus_per_node(options: dict[str, str]) -> int:
    if "--gres" in options:
        return int(re.fullmatch(r"gpu(?::\w+)?:(\d+)", options["--gres"]).group(1))
    return int(options.get("--gpus", "0").split(":")[-1])


def test_every_rule_of_the_paper_config_asks_for_what_the_profile_says(profile):
    name, settings, rendered = profile
    assert set(rendered["local"]) == LOCAL
    jobs = rendered["jobs"]
    assert {job["rule"] for job in jobs} == SUBMITTED
    assert sum(job["rule"] == "pretrain" for job in jobs) == 9  # every experiment of config/config.yaml
    for job in jobs:
        rule, call = job["rule"], job["sbatch"]
        want, options = expected(settings, rule), sbatch_options(call)
        assert options["-t"] == str(want["runtime"]), call
        assert "--requeue" in options, call
        assert "-p" not in options and "-A" not in options, call  # the placeholders stay commented
        nodes = int(options.get("--nodes", "1"))
        if rule in GPU_RULES:
            gpus = gpus_per_node(options)
            assert gpus == (want.get("gpu") or int(want["gres"].split(":")[-1])) >= 1, call
            # the bug this guards against: a default cpus_per_task shadowing cpus_per_gpu
            assert "--cpus-per-task" not in options, call
            cpus = int(options["--cpus-per-gpu"]) * gpus
            assert cpus == want["cpus_per_gpu"] * gpus, call
            assert int(options["--mem-per-cpu"]) * cpus == want["mem_mb_per_cpu"] * want["cpus_per_gpu"] * gpus
            assert "--mem" not in options
        else:
            assert "--gpus" not in options and "--gres" not in options, call
            assert options["--cpus-per-task"] == str(want["cpus_per_task"]), call
            assert options["--ntasks"] == "1" and options["--mem"] == str(want["mem_mb"]), call
        if rule == "pretrain":
            assert options["--signal"] == "TERM@300", call  # job steps, not only the batch shell (B:)
            assert nodes == want["nodes"]
            launch = job["params"]["launcher"]
            if name == "slurm":
                assert nodes == 1 and "--ntasks" not in options and "--ntasks-per-gpu" not in options
                assert launch == f"torchrun --standalone --nproc-per-node={gpus} -m mmc"
            else:
                assert nodes > 1 and options["--ntasks"] == str(nodes) and "--ntasks-per-gpu" not in options
                assert launch.startswith(f"srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --cpus-per-task={cpus} ")
                assert f"torchrun --nnodes={nodes} --nproc-per-node={gpus} " in launch
                assert "--rdzv-backend=c10d --rdzv-endpoint=$(hostname):29500 -m mmc" in launch


def test_pretraining_gets_a_core_per_loader_worker_and_one_for_the_trainer(profile):
    from mmc import config

    cfg = config.load(REPO / "config" / "config.yaml")
    _, settings, _ = profile
    per_gpu = expected(settings, "pretrain")["cpus_per_gpu"]
    for name, experiment in cfg.experiments.items():
        assert per_gpu >= experiment.data.num_workers + 1, name


def test_the_two_profiles_differ_only_in_the_pretraining_launch():
    single, multi = (yaml.safe_load((PROFILES / p / "config.yaml").read_text()) for p in ("slurm", "slurm-multinode"))
    assert {k: v for k, v in single.items() if k not in ("set-resources", "jobs")} == {
        k: v for k, v in multi.items() if k not in ("set-resources", "jobs")
    }
    rules = {**single["set-resources"], "pretrain": None}
    assert rules == {**multi["set-resources"], "pretrain": None}
    layout = ("nodes", "gpu", "gres", "tasks", "tasks_per_gpu", "mpi")
    strip = lambda r: {k: v for k, v in r.items() if k not in layout}  # noqa: E731
    assert strip(single["set-resources"]["pretrain"]) == strip(multi["set-resources"]["pretrain"])


def test_the_partition_and_account_placeholders_work_once_uncommented(tmp_path):
    text = (PROFILES / "slurm" / "config.yaml").read_text()
    lines = re.findall(r"^\s*# (slurm_partition|slurm_account): .*$", text, flags=re.M)
    assert lines.count("slurm_partition") >= 4 and lines.count("slurm_account") == 1
    uncommented = re.sub(r"^(\s*)# (slurm_partition|slurm_account): ", r"\1\2: ", text, flags=re.M)
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_text(uncommented)
    for job in render(tmp_path / "profile", paper_config(tmp_path))["jobs"]:
        options = sbatch_options(job["sbatch"])
        assert options["-A"] == "myproject", job["sbatch"]
        assert options["-p"] == ("gpu" if job["rule"] in GPU_RULES else "cpu"), job["sbatch"]


# ----------------------------------------------------------------------------- the launcher
def test_launcher_one_process_torchrun_or_srun_per_node():
    assert launcher().shell == "mmc"
    assert launcher(gpus_per_node=1).shell == "mmc"
    assert launcher(gpus_per_node=8).shell == "torchrun --standalone --nproc-per-node=8 -m mmc"
    multi = launcher(nodes=3, gpus_per_node=4, cpus_per_node=48, multinode=True, rdzv_host="n1", rdzv_id="7")
    assert multi.srun == ("srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--cpus-per-task=48", "--kill-on-bad-exit=1")
    assert multi.program == (
        "torchrun", "--nnodes=3", "--nproc-per-node=4", "--rdzv-id=7", "--rdzv-backend=c10d",
        "--rdzv-endpoint=n1:29500", "-m", "mmc",
    )  # fmt: skip
    with pytest.raises(ValueError, match="multi-node"):
        launcher(nodes=2, gpus_per_node=4)


def test_launcher_from_slurm_resources():
    assert slurm_launcher({"gpu": 0}).shell == "mmc"
    assert slurm_launcher({"nodes": 1, "gpu": 4, "cpus_per_task": 0, "cpus_per_gpu": 12}).program[:3] == (
        "torchrun", "--standalone", "--nproc-per-node=4",
    )  # fmt: skip
    multi = slurm_launcher({"nodes": 2, "gres": "gpu:a100:4", "mpi": "srun", "cpus_per_task": 0, "cpus_per_gpu": 8})
    assert "--cpus-per-task=32" in multi.srun and "--nproc-per-node=4" in multi.program
    assert "--cpus-per-task=6" in slurm_launcher({"nodes": 2, "gres": "gpu:2", "mpi": "srun", "cpus_per_task": 6}).srun
    with pytest.raises(ValueError, match="mpi"):
        slurm_launcher({"nodes": 2, "gres": "gpu:4"})
