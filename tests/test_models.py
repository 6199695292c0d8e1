"""Strict checkpoint loading: every source format's exact key layout, built here, no downloads."""

from __future__ import annotations

import argparse
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
from workflow_helpers import write_config

from mmc.errors import MMCError
from mmc.evaluation.features import patch_features
from mmc.files import sha256_file
from mmc.models import LoadedModel, ViTArch, build_vit, detect_format, load_backbone, random_backbone

# 3 heads: the head count of `vit_tiny`, the name the synthetic files record.
ARCH = {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "mlp_ratio": 4.0, "img_size": 32}


def vit_state(seed: int, arch=ARCH) -> dict:
    return {k: v.clone() for k, v in random_backbone(arch, seed).state_dict().items()}


def prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def head_weights(prefix: str) -> dict:
    return {f"{prefix}mlp.0.weight": torch.randn(16, 48), f"{prefix}last_layer.weight_g": torch.randn(32, 1)}


def layouts(teacher: dict, student: dict) -> dict:
    """name -> (file object, expected format from detection, the state the loader must produce)."""
    namespace = argparse.Namespace(arch="vit_tiny", patch_size=8, lr=0.0005)
    decoder = {"decoder_embed.weight": torch.randn(16, 48), "decoder_pos_embed": torch.randn(1, 17, 16)}
    return {
        "mmc": (
            {
                "format": "mmc",
                "format_version": 1,
                "arch": dict(ARCH),
                "teacher": {**prefixed(teacher, "backbone."), **head_weights("dino_head.")},
                "student": {
                    **prefixed(student, "backbone."),
                    **head_weights("dino_head."),
                    "mask_token": torch.zeros(1, 1, 48),
                },
                "epoch": 3,
                "step": 30,
                "config": {"seed": 0},
                "versions": {"torch": torch.__version__},
            },
            "mmc",
            teacher,
        ),
        "dino_full": (
            {
                "student": {**prefixed(student, "module.backbone."), **head_weights("module.head.")},
                "teacher": {**prefixed(teacher, "backbone."), **head_weights("head.")},
                "optimizer": {"state": {}, "param_groups": []},
                "epoch": 100,
                "args": namespace,
                "dino_loss": {"center": torch.zeros(1, 32)},
            },
            "dino",
            teacher,
        ),
        "dino_backbone": (dict(teacher), "timm", teacher),
        "ibot_full": (
            {
                "student": {
                    **prefixed(student, "module.backbone."),
                    "module.backbone.masked_embed": torch.zeros(1, 48),
                    **head_weights("module.head."),
                },
                "teacher": {**prefixed(teacher, "backbone."), **head_weights("head.")},
                "optimizer": {"state": {}, "param_groups": []},
                "epoch": 100,
                "args": namespace,
                "ibot_loss": {"center": torch.zeros(1, 32), "center2": torch.zeros(1, 1, 32)},
            },
            "ibot",
            teacher,
        ),
        "ibot_backbone": (
            {
                "state_dict": {
                    **teacher,
                    "masked_embed": torch.zeros(1, 48),
                    "head.weight": torch.zeros(4, 48),
                }
            },
            "ibot",
            teacher,
        ),
        "mae": ({"model": dict(teacher)}, "mae", teacher),
        "mae_full": (
            {
                "model": {**teacher, **decoder, "mask_token": torch.zeros(1, 1, 16)},
                "args": namespace,
                "epoch": 799,
            },
            "mae",
            teacher,
        ),
        "mocov3": (
            {
                "epoch": 300,
                "arch": "vit_tiny",
                "state_dict": {
                    **prefixed(teacher, "module.base_encoder."),
                    "module.base_encoder.head.0.weight": torch.randn(16, 48),
                    **prefixed(student, "module.momentum_encoder."),
                    "module.predictor.0.weight": torch.randn(16, 16),
                },
                "optimizer": {"state": {}, "param_groups": []},
            },
            "mocov3",
            teacher,
        ),
        "timm": (
            {**teacher, "head.weight": torch.randn(10, 48), "head.bias": torch.zeros(10)},
            "timm",
            teacher,
        ),
    }


HEAD_KEYS = {"mlp.0.weight", "last_layer.weight_g"}
ARCH_STATE_KEYS = set(random_backbone(ARCH, 0).state_dict())
DROPPED = {
    "mmc": {"dino_head." + k for k in HEAD_KEYS},
    "dino_full": {"head." + k for k in HEAD_KEYS},
    "dino_backbone": set(),
    "ibot_full": {"head." + k for k in HEAD_KEYS},
    "ibot_backbone": {"masked_embed", "head.weight"},
    "mae": set(),
    "mae_full": {"decoder_embed.weight", "decoder_pos_embed", "mask_token"},
    "mocov3": {"module.base_encoder.head.0.weight", "module.predictor.0.weight"}
    | {"module.momentum_encoder." + k for k in ARCH_STATE_KEYS},
    "timm": {"head.weight", "head.bias"},
}


@pytest.fixture(scope="module")
def weights():
    return vit_state(1), vit_state(2)


@pytest.mark.parametrize(
    "name",
    ["mmc", "dino_full", "dino_backbone", "ibot_full", "ibot_backbone", "mae", "mae_full", "mocov3", "timm"],
)
def test_each_format_loads_exactly_the_files_tensors(tmp_path, weights, name):
    obj, expected_format, expected_state = layouts(*weights)[name]
    path = tmp_path / f"{name}.pth"
    torch.save(obj, path)
    assert detect_format(obj) == expected_format
    loaded = load_backbone(path, expected_backbone=ARCH)
    assert isinstance(loaded, LoadedModel)
    assert loaded.format == expected_format
    assert loaded.sha256 == sha256_file(path)
    assert loaded.path == str(path)
    assert loaded.arch == ViTArch(**ARCH) and loaded.arch.as_dict() == ARCH
    state = loaded.model.state_dict()
    assert set(state) == set(expected_state)
    for key, tensor in expected_state.items():
        assert torch.equal(state[key], tensor), key
    assert not loaded.model.training
    # what the converter left out is listed: exactly the file's keys that are not backbone weights
    assert set(loaded.dropped_keys) == DROPPED[name]


def test_student_weights_on_request_and_teacher_by_default(tmp_path, weights):
    teacher, student = weights
    for name in ("mmc", "dino_full", "ibot_full"):
        obj, _, _ = layouts(teacher, student)[name]
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        loaded = load_backbone(path, weights="student")
        assert loaded.weights == "student"
        fc2 = "blocks.1.mlp.fc2.weight"
        assert torch.equal(loaded.model.state_dict()[fc2], student[fc2])
        loaded = load_backbone(path)
        assert loaded.weights == "teacher"
        assert torch.equal(loaded.model.state_dict()[fc2], teacher[fc2])


def test_mim_only_mmc_checkpoint_falls_back_to_the_student(tmp_path, weights):
    obj, _, _ = layouts(*weights)["mmc"]
    del obj["teacher"]
    torch.save(obj, tmp_path / "mim.pth")
    loaded = load_backbone(tmp_path / "mim.pth")
    assert loaded.weights.startswith("student")
    assert torch.equal(loaded.model.state_dict()["norm.weight"], weights[1]["norm.weight"])


def test_explicit_format_dino_reads_a_flat_backbone_file(tmp_path, weights):
    torch.save(dict(weights[0]), tmp_path / "dino_deitsmall.pth")
    assert load_backbone(tmp_path / "dino_deitsmall.pth", fmt="dino", expected_backbone=ARCH).format == "dino"


SMALL = {"patch_size": 16, "embed_dim": 384, "depth": 1, "num_heads": 6, "mlp_ratio": 4.0, "img_size": 32}


def test_mocov3_heads_come_from_its_arch_record(tmp_path):
    state = vit_state(0, SMALL)
    torch.save({"arch": "vit_small", "state_dict": prefixed(state, "module.base_encoder.")}, tmp_path / "moco.pth")
    with pytest.raises(MMCError, match=r"num_heads: file 12 vs config 6.*MoCo v3's ViT-S has 12 heads"):
        load_backbone(tmp_path / "moco.pth", expected_backbone=SMALL)
    loaded = load_backbone(tmp_path / "moco.pth", expected_backbone={**SMALL, "num_heads": 12})
    assert loaded.arch.num_heads == 12 and loaded.model.blocks[0].attn.num_heads == 12
    assert load_backbone(tmp_path / "moco.pth").arch.num_heads == 12


def test_a_mocov3_file_without_arch_gets_the_heads_the_config_says(tmp_path, caplog):
    state = vit_state(0, SMALL)
    torch.save({"state_dict": prefixed(state, "module.base_encoder.")}, tmp_path / "moco_noarch.pth")
    x = torch.randn(1, 3, 32, 32)
    # a genuinely 6-head model stays a 6-head model (never pushed to MoCo v3's 12) ...
    six = load_backbone(tmp_path / "moco_noarch.pth", expected_backbone=SMALL)
    assert six.arch.num_heads == 6 and six.model.blocks[0].attn.num_heads == 6
    assert torch.equal(patch_features(six.model, x), patch_features(random_backbone(SMALL, 0), x))
    assert "usually has 12" in caplog.text  # ... but the unusual choice is said
    # ... and a 12-head one is 12 when the config says so
    twelve = load_backbone(tmp_path / "moco_noarch.pth", expected_backbone={**SMALL, "num_heads": 12})
    assert twelve.model.blocks[0].attn.num_heads == 12
    # with nothing to go by, 6 or 12 would be a guess: refused, saying how to tell
    with pytest.raises(MMCError, match=r"moco_noarch.pth: cannot tell the number of attention heads.*records no `arch`"
                       r".*arch: vit_small.*give the model's backbone.num_heads"):  # fmt: skip
        load_backbone(tmp_path / "moco_noarch.pth")


def test_files_without_a_head_count_follow_the_config_else_the_standard_sizes(tmp_path):
    torch.save(vit_state(0, SMALL), tmp_path / "flat.pth")
    assert load_backbone(tmp_path / "flat.pth").arch.num_heads == 6  # DeiT/timm ViT-S
    assert load_backbone(tmp_path / "flat.pth", expected_backbone={**SMALL, "num_heads": 12}).arch.num_heads == 12
    odd = {**SMALL, "embed_dim": 40, "num_heads": 5}
    torch.save(vit_state(0, odd), tmp_path / "odd_width.pth")
    with pytest.raises(MMCError, match="width 40 is not a standard ViT size"):
        load_backbone(tmp_path / "odd_width.pth")
    assert load_backbone(tmp_path / "odd_width.pth", expected_backbone=odd).arch.num_heads == 5


def test_a_mocov3_model_entry_must_write_its_head_count(tmp_path):
    from mmc import config
    from mmc.errors import ConfigError

    entry = {"source": "file", "path": "m.pth", "format": "mocov3", "backbone": {"embed_dim": 384}}
    write_config(tmp_path / "c.yaml", {"run_name": "t", "models": {"moco": entry}})
    with pytest.raises(ConfigError, match=r"models.moco.backbone.num_heads: not written: expected the number of heads of this mocov3 model"):
        config.load(tmp_path / "c.yaml")
    entry["backbone"]["num_heads"] = 6
    write_config(tmp_path / "c.yaml", {"run_name": "t", "models": {"moco": entry}})
    assert config.load(tmp_path / "c.yaml").models["moco"].backbone.num_heads == 6


def test_heads_change_the_model_so_they_must_be_right():
    six = random_backbone(SMALL, 0)
    twelve = build_vit({**SMALL, "num_heads": 12})
    twelve.load_state_dict(six.state_dict(), strict=True)  # loads without error ...
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(
        patch_features(six, x), patch_features(twelve.eval(), x), atol=1e-3
    )  # ... differs


def test_missing_and_unexpected_keys_are_listed(tmp_path, weights):
    state = dict(weights[0])
    del state["blocks.1.norm1.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(MMCError, match=r"missing keys \['blocks.1.norm1.weight'\]"):
        load_backbone(tmp_path / "missing.pth", expected_backbone=ARCH)
    torch.save({**weights[0], "blocks.0.ls1.gamma": torch.ones(48)}, tmp_path / "extra.pth")
    with pytest.raises(MMCError, match=r"unexpected keys \['blocks.0.ls1.gamma'\]"):
        load_backbone(tmp_path / "extra.pth", expected_backbone=ARCH)


def test_wrong_architecture_is_refused(tmp_path, weights):
    torch.save(dict(weights[0]), tmp_path / "w.pth")
    with pytest.raises(MMCError, match=r"wrong architecture.*depth: file 2 vs config 3"):
        load_backbone(tmp_path / "w.pth", expected_backbone={**ARCH, "depth": 3})
    with pytest.raises(MMCError, match=r"embed_dim: file 48 vs config 96"):
        load_backbone(tmp_path / "w.pth", expected_backbone={**ARCH, "embed_dim": 96})


def test_truncated_corrupt_and_absent_files(tmp_path, weights):
    torch.save(dict(weights[0]), tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(MMCError, match=r"truncated.pth: not a readable checkpoint"):
        load_backbone(tmp_path / "truncated.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint at all" * 50)
    with pytest.raises(MMCError, match=r"corrupt.pth: not a readable checkpoint"):
        load_backbone(tmp_path / "corrupt.pth")
    with pytest.raises(MMCError, match=r"absent.pth: checkpoint file not found"):
        load_backbone(tmp_path / "absent.pth")


def test_a_file_without_vit_weights_in_the_expected_place(tmp_path, weights):
    obj, _, _ = layouts(*weights)["mmc"]
    obj["teacher"] = {k.replace("backbone.", "encoder."): v for k, v in obj["teacher"].items()}
    torch.save(obj, tmp_path / "renamed.pth")
    with pytest.raises(MMCError, match=r"renamed.pth: the weights lack 'patch_embed.proj.weight'"):
        load_backbone(tmp_path / "renamed.pth")


def test_unknown_format(tmp_path):
    torch.save({"weights": {"layer.weight": torch.zeros(2)}, "epoch": 1}, tmp_path / "odd.pth")
    with pytest.raises(
        MMCError, match=r"odd.pth: unknown checkpoint format: top-level keys \['epoch', 'weights'\]"
    ):
        load_backbone(tmp_path / "odd.pth")
    with pytest.raises(MMCError, match="unknown checkpoint format 'deit'"):
        load_backbone(tmp_path / "odd.pth", fmt="deit")


def test_pickles_outside_the_allow_list_are_refused(tmp_path, weights):
    torch.save({**weights[0], "where": pathlib.PurePosixPath("/data")}, tmp_path / "evil.pth")
    with pytest.raises(MMCError, match=r"refused to load.*pathlib.PurePosixPath.*argparse.Namespace"):
        load_backbone(tmp_path / "evil.pth")


def test_features_equal_forward_features_after_the_final_norm():
    model = random_backbone(ARCH, 3)
    x = torch.randn(2, 3, 40, 56)  # not the training size: position embeddings are resampled
    feats = patch_features(model, x)
    with torch.inference_mode():
        tokens = model.forward_features(x)[:, model.num_prefix_tokens :]
    assert feats.shape == (2, 5, 7, 48)
    assert torch.allclose(feats, F.normalize(tokens, dim=-1).reshape(2, 5, 7, 48), atol=1e-6)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2, 5, 7), atol=1e-5)


def reference_features(state: dict, x: torch.Tensor, heads: int, blocks: int) -> torch.Tensor:
    """A ViT forward written from the weights alone (training resolution, no resampling)."""
    p = state["patch_embed.proj.weight"].shape[-1]
    tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=p)
    b, d, gh, gw = tokens.shape
    tokens = tokens.flatten(2).transpose(1, 2)
    tokens = torch.cat([state["cls_token"].expand(b, -1, -1), tokens], dim=1) + state["pos_embed"]

    def ln(t, name):
        return F.layer_norm(t, (d,), state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-6)

    for i in range(blocks):
        pre = f"blocks.{i}."
        h = ln(tokens, pre + "norm1")
        qkv = (h @ state[pre + "attn.qkv.weight"].T + state[pre + "attn.qkv.bias"]).reshape(
            b, -1, 3, heads, d // heads
        )
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        h = (attn @ v).transpose(1, 2).reshape(b, -1, d)
        tokens = tokens + h @ state[pre + "attn.proj.weight"].T + state[pre + "attn.proj.bias"]
        h = ln(tokens, pre + "norm2")
        h = F.gelu(h @ state[pre + "mlp.fc1.weight"].T + state[pre + "mlp.fc1.bias"])
        tokens = tokens + h @ state[pre + "mlp.fc2.weight"].T + state[pre + "mlp.fc2.bias"]
    out = ln(tokens, "norm")[:, 1:]
    return F.normalize(out, dim=-1).reshape(b, gh, gw, d)


def test_features_match_an_independent_reference_at_every_layer():
    model = random_backbone(ARCH, 4)
    state = model.state_dict()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(patch_features(model, x), reference_features(state, x, 3, 2), atol=1e-5)
        assert torch.allclose(
            patch_features(model, x, layer=0), reference_features(state, x, 3, 1), atol=1e-5
        )
        assert torch.allclose(
            patch_features(model, x, layer=-2), reference_features(state, x, 3, 1), atol=1e-5
        )
    with pytest.raises(MMCError, match="layer 2 is out of range"):
        patch_features(model, x, layer=2)


def test_bfloat16_features_are_close_to_float32():
    model = random_backbone(ARCH, 5)
    x = torch.randn(1, 3, 32, 32)
    cos = (patch_features(model, x) * patch_features(model, x, precision="bfloat16")).sum(-1)
    assert cos.min() > 0.98
