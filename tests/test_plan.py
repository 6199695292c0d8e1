"""`mmc plan`: the arithmetic against hand computations, the memory formula against the bytes torch
saves for backward in a real MMC forward, the command line, the docs, and the SLURM profile's runtime."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from workflow_helpers import MMC, REPO

from mmc import config
from mmc.config import deep_merge
from mmc.plan import GPUS, activation_bytes, model_params, plan_config, plan_experiment, static_bytes
from mmc.pretrain.flops import step_flops

PAPER = REPO / "config" / "config.yaml"
IMAGENET_TRAIN = 1281167  # images in ImageNet-1k's train split
# A small ViT with every head, sized so that a CPU forward takes well under a second.
SMALL = {
    "backbone": {"patch_size": 16, "embed_dim": 192, "depth": 2, "num_heads": 3, "img_size": 112},
    "data": {"global_crop_size": 112, "local_crop_size": 48},
    "distill": {"out_dim": 1024, "hidden_dim": 512},
    "contrast": {"hidden_dim": 512},
}


def paper_with(pretrain: dict):
    raw = config.load_raw(PAPER)
    raw["pretrain"] = deep_merge(raw["pretrain"], pretrain)
    return config.freeze(config.resolve(raw, where="test"))


# ----------------------------------------------------------------------------- arithmetic
def test_plan_arithmetic_by_hand():
    cfg = paper_with({})
    pcfg = cfg.experiments["mmc_vits16"]  # batch 1024, 100 epochs, bfloat16
    per_image = step_flops(pcfg, 1024)["step"] / 1024
    plan = plan_experiment("e", pcfg, images=10_000, gpus=4, peak_tflops=100.0, mfu=0.5, memory_gb=40, loader_rate=250.0)
    steps = 9 * 100  # 10 000 // 1024 = 9 full batches per epoch (the last, incomplete one is dropped)
    assert plan.steps == steps
    assert plan.total_flop == pytest.approx(per_image * 9 * 1024 * 100)
    seconds_on_one_gpu = per_image * 9 * 1024 * 100 / (100e12 * 0.5)
    assert plan.gpu_hours == pytest.approx(seconds_on_one_gpu / 3600)
    assert plan.wall_hours == pytest.approx(seconds_on_one_gpu / 3600 / 4)
    assert plan.images_per_s_per_gpu == pytest.approx(50e12 / per_image)
    assert plan.loader_cores_per_gpu == math.ceil(50e12 / per_image / 250)
    # memory: 16 B per student parameter (weights, gradients, 2 AdamW moments), 4 more for the DDP
    # buckets (4 GPUs), 4 per teacher parameter, 2 per parameter of both for the bf16 copies
    student, teacher = model_params(pcfg)
    fixed = 16 * student + 4 * student + 4 * teacher + 2 * (student + teacher)
    assert static_bytes(student, teacher, "bfloat16", 4) == fixed
    assert static_bytes(student, teacher, "float32", 1) == 16 * student + 4 * teacher
    act = activation_bytes(pcfg, "bfloat16")
    per_sample = act["saved"] + act["outputs"]
    assert plan.batch_per_gpu == 256
    assert plan.memory_gb_at_batch == pytest.approx((fixed + 256 * per_sample) / 2**30)
    # 40 GB x 0.9 holds the largest divisor m of 256 with fixed + m x per_sample below it
    fits = [m for m in (256, 128, 64, 32, 16, 8, 4, 2, 1) if fixed + m * per_sample <= 0.9 * 40 * 2**30]
    assert (plan.micro_batch, plan.accumulation) == (fits[0], 256 // fits[0])


def test_activation_formula_of_a_vit_block_by_hand():
    """One block of ViT-S/16 at 224 px: 197 tokens x 384 x (8 + 2 x (7 + 2 x 4)) + 4 x 6 heads x 197."""
    pcfg = paper_with({"loss": {"w_distill": 0.0, "w_contrast": 0.0, "w_mim": 1.0}}).experiments["mmc_vits16"]
    one = activation_bytes(pcfg, "bfloat16")["saved"]
    deeper = paper_with(
        {"backbone": {"depth": 13}, "loss": {"w_distill": 0.0, "w_contrast": 0.0, "w_mim": 1.0}}
    ).experiments["mmc_vits16"]
    block = 197 * 384 * (8 + 2 * (7 + 2 * 4)) + 4 * 6 * 197
    assert activation_bytes(deeper, "bfloat16")["saved"] - one == 2 * block  # two global views


def test_parameter_counts_equal_the_model():
    from mmc.pretrain.model import build_pair

    cfg = paper_with(SMALL)
    for name in ("mmc_vits16", "vits16_mim", "vits16_contrast", "vits16_distill"):
        pcfg = cfg.experiments[name]
        student, teacher = build_pair(pcfg)
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        assert model_params(pcfg) == (count(student), count(teacher)), name


def saved_bytes_per_image(pcfg, amp: bool) -> tuple[float, float, float]:
    """(bytes torch saves for backward, bytes of the heads' outputs, masked fraction of its patches)
    per image: the slope from 1 to 2 images.

    The forward and loss of one training step as mmc.pretrain.train runs it, on the CPU; tensors are
    counted once per storage, parameters (and their autocast copies, a per-step constant that the
    slope cancels) excluded. The heads run on the masked patches, so the second image's masked
    fraction (a random draw) is returned for the estimate to use.
    """
    from mmc.pretrain.losses import mmc_loss, patchify
    from mmc.pretrain.masking import view_masks
    from mmc.pretrain.model import build_pair

    torch.manual_seed(0)
    student, teacher = build_pair(pcfg)
    size, patch = pcfg.data.global_crop_size, pcfg.backbone.patch_size
    params = {p.untyped_storage().data_ptr() for m in (student, teacher) if m is not None for p in m.parameters()}

    def measure(batch: int) -> tuple[int, int]:
        views = torch.randn(2, batch, 3, size, size)
        locals_ = [torch.randn(batch, 3, pcfg.data.local_crop_size, pcfg.data.local_crop_size)] * pcfg.data.local_crops
        generator = torch.Generator().manual_seed(0)
        m = pcfg.mask
        masks = torch.stack(
            [view_masks(2, (size // patch,) * 2, tuple(m.ratio), m.min_block_patches, tuple(m.aspect_ratio), generator) for _ in range(batch)],
            dim=1,
        )
        targets = patchify(views.flatten(0, 1), patch).unflatten(0, views.shape[:2])[masks]  # masked patches
        centers = {"cls": torch.zeros(pcfg.distill.out_dim), "patch": torch.zeros(pcfg.distill.out_dim)}
        storages: dict[int, int] = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            s_out = student(views, masks, locals_ or None)
            t_out = None
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(views, masks)
            mmc_loss(s_out, t_out, targets, masks, centers, 0.04, pcfg)
        kept = ("recon", "dino_cls", "dino_patch", "dino_local")  # split outputs share a storage
        outputs = {v.untyped_storage().data_ptr(): v.untyped_storage().nbytes()
                   for out in (s_out, t_out) if out for k, v in out.items() if k in kept}  # fmt: skip
        return sum(storages.values()), sum(outputs.values()), masks[:, -1].float().mean().item()

    (s1, o1, _), (s2, o2, masked) = measure(1), measure(2)
    return s2 - s1, o2 - o1, masked


@pytest.mark.parametrize(
    "experiment, extra",
    [("mmc_vits16", {}), ("vits16_cls_to_patch", {}), ("vits16_mim", {}), ("vits16_contrast", {}),
     ("mmc_vits16", {"data": {"local_crops": 2}})],
)  # fmt: skip
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_activation_estimate_against_what_torch_saves(experiment, extra, precision):
    torch.set_num_threads(1)
    pcfg = paper_with(deep_merge(SMALL, extra)).experiments[experiment]
    saved, outputs, masked = saved_bytes_per_image(pcfg, amp=precision == "bfloat16")
    estimate = activation_bytes(pcfg, precision, masked_fraction=masked)
    assert estimate["saved"] == pytest.approx(saved, rel=0.1), (estimate["saved"], saved)
    assert estimate["outputs"] == pytest.approx(outputs, rel=0.05, abs=1e3), (estimate["outputs"], outputs)


# ----------------------------------------------------------------------------- command line
def mmc(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([*MMC, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_table_and_json_for_the_paper_config():
    args = ["plan", "--config", str(PAPER), "--images", str(IMAGENET_TRAIN), "--gpus", "8", "--gpu", "h100"]
    table = mmc(*args)
    assert table.returncode == 0, table.stderr
    assert "ESTIMATES" in table.stdout and "8 x h100 at 40% MFU" in table.stdout
    experiments = config.load(PAPER).experiments
    rows = [line for line in table.stdout.splitlines() if line.startswith("| ") and not line.startswith("| experiment")]
    assert [r.split("|")[1].strip() for r in rows] == list(experiments)
    data = json.loads(mmc(*args, "--json").stdout)
    assert data["assumptions"]["gpus"] == 8 and data["assumptions"]["images_per_epoch"] == IMAGENET_TRAIN
    expected = plan_config(config.load(PAPER), images=IMAGENET_TRAIN, gpus=8, gpu="h100", mfu=0.4)
    assert [row["wall_hours"] for row in data["experiments"]] == pytest.approx([p.wall_hours for p in expected])


def test_cli_errors_are_one_line(tmp_path):
    missing = mmc("plan", "--config", str(PAPER), cwd=tmp_path)  # no data/imagenet/train here
    assert missing.returncode == 2 and "data/imagenet/train" in missing.stderr
    assert "mmc data prepare imagenet" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    v100 = mmc("plan", "--config", str(PAPER), "--images", "1000", "--gpu", "v100")
    assert v100.returncode == 2 and "no bfloat16 tensor cores" in v100.stderr
    odd = mmc("plan", "--config", str(PAPER), "--images", "1000", "--gpus", "3")
    assert odd.returncode == 2 and "not divisible by --gpus 3" in odd.stderr


def test_cli_counts_the_images_and_measures_the_loader(tmp_path):
    from pretrain_support import make_image_folder, pretrain_config
    from workflow_helpers import write_config

    images = make_image_folder(tmp_path / "syn", 12)
    cfg = write_config(tmp_path, pretrain_config(tmp_path, images, {"data": {"num_workers": 0}}))
    done = mmc("plan", "--config", str(cfg), "--measure-loader", str(images), "--measure-seconds", "1", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["assumptions"]["images_per_epoch"] == 12
    rate = data["assumptions"]["loader_images_per_s_per_core"]
    row = data["experiments"][0]
    assert rate > 0 and row["loader_cores_per_gpu"] == math.ceil(row["images_per_s_per_gpu"] / rate)


# ----------------------------------------------------------------------------- agreements
def test_slurm_profiles_runtime_covers_the_plan_with_margin():
    """The pretrain walltime of the profiles is >= 1.5 x the plan's longest paper experiment on their node."""
    for profile in ("slurm", "slurm-multinode"):
        settings = yaml.safe_load((REPO / "workflow" / "profiles" / profile / "config.yaml").read_text())
        pretrain = settings["set-resources"]["pretrain"]
        gpus = pretrain.get("gpu") or int(pretrain["gres"].split(":")[-1]) * pretrain["nodes"]
        plans = plan_config(config.load(PAPER), images=IMAGENET_TRAIN, gpus=gpus, gpu="a100", mfu=0.4)
        longest = max(p.wall_hours for p in plans)
        assert pretrain["runtime"] >= 1.5 * longest * 60, (profile, longest)
        assert all(p.micro_batch == p.batch_per_gpu for p in plans), "the paper batch does not fit on the profile's node"
    assert GPUS["a100"]["memory_gb"] == 80


@pytest.mark.parametrize("doc", ["docs/cluster.md", "README.md"])
def test_docs_show_the_current_plan_of_the_paper_config(doc):
    """The `$ mmc plan ...` block of the docs is the output of the command it shows."""
    block = re.search(r"```\n\$ (mmc plan [^\n]+)\n(.*?)```", (REPO / doc).read_text(), re.S)
    assert block, f"{doc} has no `$ mmc plan ...` block"
    done = mmc(*block.group(1).split()[1:])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == block.group(2).strip(), f"rerun the command and paste its output into {doc}"
