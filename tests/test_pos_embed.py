"""Position embeddings at other grids: each method against a formula written here from its description.

The references are separable resampling matrices built one output sample at a time in numpy
(float64): Keys' cubic convolution (a = -0.75, taps clamped at the border) with the source
coordinate ``(i + 0.5) * step - 0.5`` for torch's plain bicubic; the antialiased filter
(a = -0.5, support widened when shrinking, weights renormalised over the taps inside the image)
for timm's; and the sin-cos formula token by token with ``math``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmc.errors import MMCError
from mmc.models import build_vit, random_backbone
from mmc.models.pos_embed import (
    DEFAULT_METHOD,
    METHODS,
    GridPosEmbed,
    method_for,
    resize_pos_embed,
    sincos_2d,
    sincos_layout,
)


def cubic(x: float, a: float) -> float:
    x = abs(x)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def plain_bicubic_matrix(n_in: int, n_out: int, step: float) -> np.ndarray:
    """Output i samples the input at (i + 0.5) * step - 0.5 with 4 taps, indices clamped to the image."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        s = (i + 0.5) * step - 0.5
        left = math.floor(s)
        for k in range(-1, 3):
            j = min(max(left + k, 0), n_in - 1)
            m[i, j] += cubic(s - left - k, -0.75)
    return m


def antialiased_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The filter stretched by the shrink factor (if any), taps outside the image dropped, renormalised."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - 2 * stretch + 0.5), 0), min(int(centre + 2 * stretch + 0.5), n_in)
        w = np.array([cubic((j - centre + 0.5) / stretch, -0.5) for j in range(lo, hi)])
        m[i, lo:hi] = w / w.sum()
    return m


def resample(pos: torch.Tensor, prefix: int, old, new, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    grid = pos[0, prefix:].double().numpy().reshape(old[0], old[1], -1)
    out = np.einsum("ij,jkd,lk->ild", rows, grid, cols).reshape(new[0] * new[1], -1)
    return np.concatenate([pos[0, :prefix].double().numpy(), out])[None]


def sincos_reference(grid_h: int, grid_w: int, dim: int, layout: str) -> np.ndarray:
    quarter = dim // 4
    out = np.zeros((grid_h * grid_w, dim))
    for r in range(grid_h):
        for c in range(grid_w):
            first, second = (c, r) if layout == "mae" else (r, c)
            for k in range(quarter):
                w = 10000.0 ** (-k / quarter)
                token = r * grid_w + c
                out[token, k] = math.sin(first * w)
                out[token, quarter + k] = math.cos(first * w)
                out[token, 2 * quarter + k] = math.sin(second * w)
                out[token, 3 * quarter + k] = math.cos(second * w)
    return out


GRIDS = [((7, 7), (10, 10)), ((7, 7), (4, 4)), ((7, 7), (12, 9)), ((4, 4), (30, 30)), ((5, 5), (5, 8))]


@pytest.fixture(scope="module")
def pos():
    torch.manual_seed(0)
    return {old: torch.randn(1, 1 + old[0] * old[1], 8) for old, _ in GRIDS}


@pytest.mark.parametrize(("old", "new"), GRIDS)
def test_mae_is_plain_bicubic_to_the_new_size(pos, old, new):
    p = pos[old]
    ref = resample(p, 1, old, new, plain_bicubic_matrix(old[0], new[0], old[0] / new[0]),
                   plain_bicubic_matrix(old[1], new[1], old[1] / new[1]))  # fmt: skip
    out = resize_pos_embed(p, old, new, "mae")
    assert out.shape == (1, 1 + new[0] * new[1], 8) and out.dtype == p.dtype
    assert np.abs(out.double().numpy() - ref).max() < 1e-5
    assert torch.equal(out[:, :1], p[:, :1])


@pytest.mark.parametrize(("old", "new"), GRIDS)
def test_dino_samples_with_its_offset_scale_factor(pos, old, new):
    p = pos[old]
    # torch places the samples with the scale factor as given: step = g / (g' + 0.1), not g / g'
    rows = plain_bicubic_matrix(old[0], new[0], old[0] / (new[0] + 0.1))
    cols = plain_bicubic_matrix(old[1], new[1], old[1] / (new[1] + 0.1))
    out = resize_pos_embed(p, old, new, "dino")
    assert out.shape == (1, 1 + new[0] * new[1], 8)
    assert np.abs(out.double().numpy() - resample(p, 1, old, new, rows, cols)).max() < 1e-5
    # ... which is not the size-based resize: the offset moves the samples
    assert (out - resize_pos_embed(p, old, new, "mae")).abs().max() > 1e-3


def test_dino_output_has_exactly_the_new_grid_for_every_size():
    p = torch.randn(1, 1 + 14 * 14, 4)
    for side in range(1, 61):
        assert resize_pos_embed(p, (14, 14), (side, side + 1), "dino").shape[1] == 1 + side * (side + 1)


@pytest.mark.parametrize(("old", "new"), GRIDS)
def test_timm_is_antialiased_bicubic(pos, old, new):
    from timm.layers import resample_abs_pos_embed

    p = pos[old]
    ref = resample(p, 1, old, new, antialiased_bicubic_matrix(old[0], new[0]),
                   antialiased_bicubic_matrix(old[1], new[1]))  # fmt: skip
    out = resize_pos_embed(p, old, new, "timm")
    assert np.abs(out.double().numpy() - ref).max() < 1e-5
    assert torch.equal(out, resample_abs_pos_embed(p, new_size=new, old_size=old, num_prefix_tokens=1))


@pytest.mark.parametrize("layout", ["mae", "mocov3"])
def test_sincos_matches_the_formula_token_by_token(layout):
    for grid in ((1, 1), (3, 3), (4, 6), (6, 4)):
        out = sincos_2d(*grid, 16, layout)
        assert out.dtype == torch.float32 and out.shape == (grid[0] * grid[1], 16)
        assert np.abs(out.double().numpy() - sincos_reference(*grid, 16, layout)).max() < 1e-6
    # the two layouts are the same numbers with the axes swapped (MAE computes in float64, MoCo v3 in float32)
    mae, moco = sincos_2d(3, 3, 16, "mae"), sincos_2d(3, 3, 16, "mocov3")
    assert not torch.allclose(mae, moco, atol=0.1)
    assert torch.allclose(mae[:, :8], moco[:, 8:], atol=1e-6) and torch.allclose(mae[:, 8:], moco[:, :8], atol=1e-6)


@pytest.mark.parametrize("layout", ["mae", "mocov3"])
def test_sincos_rebuilds_the_grid_in_the_stored_layout(layout):
    stored = torch.cat([torch.zeros(1, 1, 16), sincos_2d(4, 4, 16, layout)[None]], dim=1)
    assert sincos_layout(stored[0, 1:], (4, 4)) == layout
    out = resize_pos_embed(stored, (4, 4), (5, 7), "sincos")
    expected = np.concatenate([np.zeros((1, 16)), sincos_reference(5, 7, 16, layout)])[None]
    assert np.abs(out.double().numpy() - expected).max() < 1e-6
    # rebuilding is not stretching: a larger grid extends the positions (token (0, 3) keeps its embedding)
    assert torch.allclose(out[0, 1 + 3], stored[0, 1 + 3], atol=1e-6)


def test_sincos_refuses_learned_embeddings():
    learned = torch.randn(1, 17, 16)
    assert sincos_layout(learned[0, 1:], (4, 4)) is None
    with pytest.raises(MMCError, match="not the fixed ones of MAE or MoCo v3"):
        resize_pos_embed(learned, (4, 4), (6, 6), "sincos")
    with pytest.raises(MMCError, match="not the fixed ones of MAE or MoCo v3"):
        GridPosEmbed(random_backbone({**ARCH}, 0), "sincos")


def test_every_method_keeps_the_training_grid_unchanged(pos):
    p = pos[(7, 7)]
    for method in ("timm", "dino", "mae"):
        assert torch.equal(resize_pos_embed(p, (7, 7), (7, 7), method), p)
    fixed = torch.cat([torch.zeros(1, 1, 8), sincos_2d(7, 7, 8, "mocov3")[None]], dim=1)
    assert torch.equal(resize_pos_embed(fixed, (7, 7), (7, 7), "sincos"), fixed)


def test_no_prefix_tokens_are_resized_as_patches(pos):
    p = pos[(7, 7)][:, 1:]
    out = resize_pos_embed(p, (7, 7), (10, 10), "mae", num_prefix_tokens=0)
    assert torch.equal(out, resize_pos_embed(pos[(7, 7)], (7, 7), (10, 10), "mae")[:, 1:])


def test_auto_is_each_formats_own_method():
    assert {fmt: method_for("auto", fmt) for fmt in DEFAULT_METHOD} == {
        "mmc": "timm", "timm": "timm", "random": "timm", "dino": "dino", "ibot": "dino", "mae": "mae",
        "mocov3": "sincos",
    }  # fmt: skip
    assert all(method_for(m, "dino") == m for m in METHODS)
    with pytest.raises(MMCError, match="expected auto or one of"):
        method_for("bilinear", "mmc")


ARCH = {"patch_size": 8, "embed_dim": 48, "depth": 3, "num_heads": 3, "mlp_ratio": 4.0, "img_size": 32}


def test_grid_pos_embed_computes_each_grid_once():
    vit = random_backbone(ARCH, 1)
    grids = GridPosEmbed(vit, "dino")
    first = grids(6, 8)
    assert grids(6, 8) is first and grids(4, 4).shape == (1, 17, 48)
    assert torch.equal(grids(4, 4), vit.pos_embed.detach())
    assert torch.equal(first, resize_pos_embed(vit.pos_embed.detach(), (4, 4), (6, 8), "dino"))
    # the memoised tensor is an ordinary one even when first asked for under inference_mode
    with torch.inference_mode():
        fresh = GridPosEmbed(vit, "mae")(5, 5)
    assert not fresh.is_inference()


def test_no_embed_class_model_resizes_patches_only():
    vit = build_vit(ARCH, no_embed_class=True).eval()
    out = GridPosEmbed(vit, "mae")(6, 6)
    assert out.shape == (1, 36, 48)


@pytest.mark.parametrize("no_embed_class", [False, True])
def test_the_evaluation_forward_is_timms_forward_with_timms_resize(no_embed_class):
    from mmc.models import block_tokens

    torch.manual_seed(0)
    vit = build_vit(ARCH, no_embed_class=no_embed_class).eval()
    with torch.no_grad():
        vit.pos_embed.normal_()  # large embeddings: any difference in the resize would show
    grids = GridPosEmbed(vit, "timm")
    for size in ((32, 32), (64, 64), (40, 56)):
        x = torch.randn(2, 3, *size)
        for dtype in (None, torch.bfloat16):
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                for index in (0, 2):
                    (expected,) = vit.forward_intermediates(
                        x, indices=[index], norm=True, output_fmt="NLC", intermediates_only=True
                    )
                    assert torch.equal(block_tokens(vit, x, index, grids), expected), (size, dtype, index)


def moco_like(seed: int):
    """A ViT whose position embeddings are MoCo v3's fixed sin-cos (zero for [CLS])."""
    vit = random_backbone(ARCH, seed)
    with torch.no_grad():
        vit.pos_embed[0, 0] = 0
        vit.pos_embed[0, 1:] = sincos_2d(4, 4, 48, "mocov3")
    return vit


def test_features_change_with_the_method_only_off_the_training_grid():
    from mmc.evaluation.features import patch_features

    vit = moco_like(2)
    x_train, x_large = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 48)
    reference = {m: patch_features(vit, x_train, pos_embed=GridPosEmbed(vit, m)) for m in METHODS}
    assert all(torch.equal(f, reference["timm"]) for f in reference.values())
    large = {m: patch_features(vit, x_large, pos_embed=GridPosEmbed(vit, m)) for m in METHODS}
    assert torch.equal(large["timm"], patch_features(vit, x_large))  # None = timm's resize
    for a in METHODS:
        for b in METHODS:
            assert (a == b) == torch.equal(large[a], large[b]), (a, b)
    # sincos runs the model as MoCo v3 would build it for the 8 x 6 grid
    rebuilt = build_vit({**ARCH, "img_size": 64}).eval()
    state = {k: v for k, v in vit.state_dict().items() if k != "pos_embed"}
    state["pos_embed"] = torch.cat([torch.zeros(1, 1, 48), sincos_2d(8, 6, 48, "mocov3")[None]], dim=1)
    rebuilt.patch_embed.grid_size = (8, 6)  # a MoCo v3 ViT built for a 64 x 48 input
    rebuilt.pos_embed = torch.nn.Parameter(state.pop("pos_embed"))
    rebuilt.load_state_dict(state, strict=False)
    assert torch.allclose(large["sincos"], patch_features(rebuilt, x_large), atol=1e-5)


def test_loaded_models_get_their_formats_method(tmp_path):
    from mmc.evaluation.features import settings_of
    from mmc.models import load_backbone, pos_embed_for

    class Evaluation:
        resolution, keep_aspect, layer, precision, pos_embed_resize = 64, False, -1, "float32", "auto"
        resize, feature_dtype = "pil", "float16"

    learned, fixed = random_backbone(ARCH, 3).state_dict(), moco_like(3).state_dict()
    files = {
        "dino": {"teacher": {f"backbone.{k}": v for k, v in learned.items()}, "student": {}, "dino_loss": {}},
        "mae": {"model": learned},
        "mocov3": {"state_dict": {f"module.base_encoder.{k}": v for k, v in fixed.items()}},
        "timm": learned,
    }
    for fmt, obj in files.items():
        torch.save(obj, tmp_path / f"{fmt}.pth")
        loaded = load_backbone(tmp_path / f"{fmt}.pth", expected_backbone=ARCH)
        assert loaded.format == fmt
        assert settings_of(Evaluation, loaded)["pos_embed_resize"] == DEFAULT_METHOD[fmt]
        assert pos_embed_for(loaded, "auto").method == DEFAULT_METHOD[fmt]
    # a MoCo v3 file whose embeddings are learned (not MoCo v3's own): sincos is refused, naming the file
    torch.save({"state_dict": {f"module.base_encoder.{k}": v for k, v in learned.items()}}, tmp_path / "m.pth")
    loaded = load_backbone(tmp_path / "m.pth", expected_backbone=ARCH)
    with pytest.raises(MMCError, match=r"m.pth: .*not the fixed ones.*\(auto is sincos for format mocov3\)"):
        pos_embed_for(loaded, "auto")
    assert pos_embed_for(loaded, "dino").method == "dino"
