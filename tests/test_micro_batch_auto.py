"""``optim.micro_batch_size: auto``: the split of the global batch that ``mmc plan`` prints is the one
``mmc pretrain`` runs, derived from the number of processes and the memory to plan for; it is only
a split (the weights equal those of the same integer micro-batch), and too little memory is one line."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest
import torch
from pretrain_support import (
    TINY_PRETRAIN,
    assert_bitwise_equal,
    env,
    load,
    make_image_folder,
    pretrain_config,
    run_pretrain,
)
from workflow_helpers import write_config

from mmc import config
from mmc.errors import MMCError
from mmc.plan import GIB, activation_bytes, largest_fitting_divisor, micro_batch_for, model_params
from mmc.pretrain import train

FAST = {"optim": {"epochs": 1}, "checkpoint": {"every_steps": 1}}  # 16 images / batch 8: two steps


def tiny(overrides: dict | None = None):
    pretrain = config.deep_merge(copy.deepcopy(TINY_PRETRAIN), overrides or {})
    return config.freeze(config.resolve({"run_name": "t", "pretrain": pretrain})).experiments["mmc"]


def memory_for(pcfg, world: int, images: float) -> float:
    """GiB whose default fraction (0.9) holds the static memory and ``images`` images, rounded to 6
    significant digits as YAML will carry it."""
    split = micro_batch_for(pcfg, world, None)
    return float(f"{(split.static_gb + images * split.per_image_gb) / 0.9:.6g}")


# ----------------------------------------------------------------------------- the pure function
def test_largest_fitting_divisor_against_the_closed_form():
    """Against: at most floor((budget - static) / per_image) images fit, and the split must divide n."""
    for n in range(1, 25):
        for static in (0, 3, 10):
            for per_image in (1, 2, 5):
                for budget in range(0, 60, 3):
                    cap = (budget - static) // per_image
                    fitting = [d for d in range(1, n + 1) if n % d == 0 and d <= cap]
                    expected = max(fitting) if fitting else None
                    assert largest_fitting_divisor(n, static, per_image, budget) == expected, (n, static, per_image, budget)
        assert largest_fitting_divisor(n, 10**9, 1, None) == n  # no limit: the whole share
    assert largest_fitting_divisor(12, 100, 10, 175) == 6  # 12 and 7.5 do not fit, 6 does
    assert largest_fitting_divisor(7, 0, 1, 6.9) == 1  # a prime: all or one at a time


def test_micro_batch_for_adds_up_what_the_plan_counts():
    pcfg = tiny({"optim": {"memory_fraction": 0.5}})  # float32, batch 8
    student, teacher = model_params(pcfg)
    act = activation_bytes(pcfg, "float32")
    per_image = act["saved"] + act["outputs"]
    for world, ddp in ((1, 0), (2, 4 * student)):  # DDP's gradient buckets on more than one process
        static = 16 * student + 4 * teacher + ddp  # fp32: weights, gradients, 2 AdamW moments; teacher
        memory = (static + 2.5 * per_image) / 0.5 / GIB  # half of it holds 2 images, not 3
        split = micro_batch_for(pcfg, world, memory)
        assert split.per_process == 8 // world
        assert (split.micro_batch, split.accumulation) == (2, 4 // world)
        assert split.static_gb == pytest.approx(static / GIB) and split.per_image_gb == pytest.approx(per_image / GIB)
        assert split.budget_gb == pytest.approx(0.5 * memory)
        assert split.memory_gb_at_micro_batch == pytest.approx((static + 2 * per_image) / GIB)
    assert micro_batch_for(pcfg, 1, None).micro_batch == 8  # no limit
    assert micro_batch_for(pcfg, 1, 1e-6).micro_batch is None


def test_the_trainer_derives_the_split_for_its_processes_and_device():
    cpu = torch.device("cpu")
    # memory for 1.5 images on one process: one image fits, but not with two processes' DDP buckets
    pcfg = tiny({"optim": {"micro_batch_size": "auto", "memory_gb": memory_for(tiny(), 1, 1.5)}})
    split, _ = train.auto_micro_batch(pcfg, 1, cpu, "experiments.mmc.")
    assert (split.micro_batch, split.accumulation) == (1, 8)
    with pytest.raises(MMCError, match=r"experiments\.mmc\.optim\.micro_batch_size: auto: not even one image fits .* on 2 processes"):
        train.auto_micro_batch(pcfg, 2, cpu, "experiments.mmc.")
    # on the CPU without optim.memory_gb: no limit, the whole share
    assert train.memory_to_plan_for(tiny({"optim": {"micro_batch_size": "auto"}}), cpu) == (None, "no limit (CPU)")
    split, _ = train.auto_micro_batch(tiny({"optim": {"micro_batch_size": "auto"}}), 2, cpu)
    assert (split.micro_batch, split.accumulation) == (4, 1)
    # what auto plans for may change on a resume (other GPUs), as the number of processes may
    assert train._semantic_changes({"optim": {"memory_gb": None, "memory_fraction": 0.9, "micro_batch_size": "auto"}},
                                   {"optim": {"memory_gb": 40.0, "memory_fraction": 0.8, "micro_batch_size": "auto"}}) == []  # fmt: skip
    assert train._semantic_changes({"optim": {"micro_batch_size": "auto"}}, {"optim": {"micro_batch_size": 4}}) == [
        "optim.micro_batch_size"
    ]


# ----------------------------------------------------------------------------- the commands
def mmc(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmc", *args], env=env(), cwd=cwd, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("auto") / "syn", 16)


def test_auto_runs_the_split_mmc_plan_prints_and_equals_that_integer_bit_for_bit(tmp_path, images):
    memory = memory_for(tiny(), 1, 2.5)  # 2 of the 8 images per step fit, 4 do not
    expected = micro_batch_for(tiny({"optim": {"memory_gb": memory}}), 1, memory)
    assert (expected.micro_batch, expected.accumulation) == (2, 4)
    auto_dir, fixed_dir = tmp_path / "auto", tmp_path / "fixed"
    auto_dir.mkdir(), fixed_dir.mkdir()
    auto = config.deep_merge(FAST, {"optim": {"micro_batch_size": "auto", "memory_gb": memory}})
    auto_cfg = write_config(auto_dir, pretrain_config(auto_dir, images, auto, tracking=True))
    fixed = config.deep_merge(FAST, {"optim": {"micro_batch_size": 2}})
    fixed_cfg = write_config(fixed_dir, pretrain_config(fixed_dir, images, fixed))

    plan = mmc("plan", "--config", str(auto_cfg), "--gpus", "1", "--json")
    assert plan.returncode == 0, plan.stderr
    row = json.loads(plan.stdout)["experiments"][0]
    assert (row["micro_batch"], row["accumulation"], row["micro_batch_setting"]) == (2, 4, "auto")
    table = mmc("plan", "--config", str(auto_cfg), "--gpus", "1")
    assert f"| 2 x 4 (auto, optim.memory_gb {memory:g}) |" in table.stdout, table.stdout
    # an integer runs as set; the plan shows it beside what auto would take on the GPU asked for
    assert "| 8 x 1 (set: 2) |" in mmc("plan", "--config", str(fixed_cfg), "--gpus", "1").stdout

    done = run_pretrain(auto_cfg, auto_dir / "out")
    line = "mmc pretrain: optim.micro_batch_size auto: micro-batch 2 x 4 accumulation steps (8 images per process, 1 process)"
    assert line in done.stdout, done.stdout
    assert f"optim.memory_fraction (0.9) x optim.memory_gb ({memory:g} GiB)" in done.stdout
    (record_path,) = (auto_dir / "results" / "tracking" / "jobs").glob("pretrain*.json")
    params = json.loads(record_path.read_text())["params"]
    assert params["optim.micro_batch_size"] == "auto"  # the config as written, and the split as run
    assert (params["derived.micro_batch"], params["derived.accumulation_steps"], params["derived.processes"]) == ("2", "4", "1")
    assert float(params["derived.estimated_memory_gb"]) == pytest.approx(expected.memory_gb_at_micro_batch)
    assert float(params["derived.memory_budget_gb"]) == pytest.approx(0.9 * memory)
    (resume,) = sorted((auto_dir / "state" / "pretrain" / "mmc").glob("step_*.pth"))[-1:]
    assert {k: load(resume)["sampler"][k] for k in ("micro_batch", "accumulation_steps")} == {"micro_batch": 2, "accumulation_steps": 4}

    run_pretrain(fixed_cfg, fixed_dir / "out")
    got, ref = load(auto_dir / "out" / "epoch_0001.pth"), load(fixed_dir / "out" / "epoch_0001.pth")
    assert_bitwise_equal(got["student"], ref["student"])
    assert_bitwise_equal(got["teacher"], ref["teacher"])
    for key in ("cls", "patch"):
        assert torch.equal(got["centers"][key], ref["centers"][key])


def test_too_little_memory_is_one_line_and_exit_2(tmp_path, images):
    memory = memory_for(tiny(), 1, 0.5)  # not even one image
    cfg = write_config(tmp_path, pretrain_config(tmp_path, images, {"optim": {"micro_batch_size": "auto", "memory_gb": memory}},
                                                 dvc={"version_results": False}))  # fmt: skip
    assert mmc("config", "check", str(cfg), cwd=tmp_path).returncode == 0  # auto is valid; the memory is judged at start
    plan = mmc("plan", "--config", str(cfg), "--gpus", "1")
    assert plan.returncode == 0 and f"| does not fit (auto, optim.memory_gb {memory:g}) |" in plan.stdout, plan.stdout
    done = mmc("pretrain", "--config", str(cfg), "--experiment", "mmc", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert re.search(
        r"experiments\.mmc\.optim\.micro_batch_size: auto: not even one image fits experiments\.mmc\.optim\.memory_fraction "
        rf"\(0\.9\) x experiments\.mmc\.optim\.memory_gb \({re.escape(f'{memory:g}')} GiB\) = [0-9.e-]+ GiB per process on 1 "
        r"process: the estimate is [0-9.e-]+ GiB for weights, gradients and optimiser state \+ [0-9.e-]+ GiB per image",
        done.stderr,
    ), done.stderr
    assert not (tmp_path / "out").exists() and not list((tmp_path / "state").rglob("*.pth"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_no_memory_gb_plans_for_the_devices_total_memory():
    device = torch.device("cuda", 0)
    pcfg = tiny({"optim": {"micro_batch_size": "auto"}})
    memory, source = train.memory_to_plan_for(pcfg, device)
    assert memory == torch.cuda.get_device_properties(device).total_memory / GIB and "total memory" in source
    split, _ = train.auto_micro_batch(pcfg, 1, device)
    assert split == micro_batch_for(pcfg, 1, memory) and split.micro_batch == 8  # a tiny model fits whole
