"""Position embeddings for a patch grid other than the training grid, as each source's code does.

A ViT learns (or fixes) one embedding per patch of its training grid; evaluating at another
resolution needs embeddings for another grid. The sources do this differently, and the features
depend on it (docs/evaluation.md, "Position embeddings at other resolutions"):

- ``timm``: timm's ``resample_abs_pos_embed`` (bicubic to the new size, ``antialias=True``), what a
  timm ``VisionTransformer`` with ``dynamic_img_size`` does on every forward;
- ``dino``: DINO's and iBOT's ``interpolate_pos_encoding``: bicubic, no antialias, called with a
  *scale factor* ``(g' + 0.1) / g`` rather than a size, which torch (>= 1.6) uses as is to place the
  samples: the result is slightly shifted against a size-based resize;
- ``mae``: MAE's ``interpolate_pos_embed`` (its fine-tuning and linear-probing code): bicubic to the
  new size, no antialias, ``align_corners=False``;
- ``sincos``: the fixed 2-D sin-cos embeddings rebuilt for the new grid (MoCo v3's ViT builds them for
  its grid; MAE's pretraining encoder too), in the channel layout of the stored ones (MAE and
  MoCo v3 order the two axes differently; the layout is read off the file's own embeddings).

Prefix tokens ([CLS]) keep their embedding. At the training grid every method returns the stored
embeddings unchanged. All functions are pure except :class:`GridPosEmbed`, which memoises one
model's embeddings per grid so that each grid is computed once, not per image.
"""

from __future__ import annotations

from typing import Any

from mmc.errors import MMCError

METHODS = ("timm", "dino", "mae", "sincos")
# `evaluation.pos_embed_resize: auto`: what each format's own code does at another resolution.
DEFAULT_METHOD = {
    "mmc": "timm",  # our ViT is timm's, pretrained with dynamic_img_size (local crops are resampled by timm)
    "timm": "timm",
    "random": "timm",
    "dino": "dino",
    "ibot": "dino",  # iBOT's interpolate_pos_encoding is DINO's
    "mae": "mae",  # MAE evaluates through models_vit + interpolate_pos_embed, not its fixed-embedding encoder
    "mocov3": "sincos",  # MoCo v3's ViT rebuilds fixed sin-cos embeddings for the grid it is built for
}
SINCOS_LAYOUTS = ("mae", "mocov3")
SINCOS_TEMPERATURE = 10000.0


def method_for(setting: str, fmt: str) -> str:
    """The method for ``evaluation.pos_embed_resize`` = ``setting`` and a model of format ``fmt``."""
    if setting == "auto":
        if fmt not in DEFAULT_METHOD:
            raise MMCError(f"no default position-embedding resize for format {fmt!r} (have {sorted(DEFAULT_METHOD)})")
        return DEFAULT_METHOD[fmt]
    if setting not in METHODS:
        raise MMCError(f"evaluation.pos_embed_resize {setting!r}: expected auto or one of {list(METHODS)}")
    return setting


# ----------------------------------------------------------------------------- sin-cos
def sincos_2d(grid_h: int, grid_w: int, dim: int, layout: str):
    """Fixed 2-D sin-cos embeddings of a ``grid_h`` x ``grid_w`` grid, (grid_h * grid_w, dim) float32,
    tokens in row-major order.

    Each axis takes half of the channels as ``[sin(p w_k), cos(p w_k)]``, ``w_k = 10000^(-k / (dim/4))``,
    k < dim/4, p the token's column or row index. ``mae`` puts the column first (its meshgrid puts the
    width first), ``mocov3`` the row first (its meshgrid's first output varies along the height).
    MoCo v3 computes in float32, MAE in float64 (numpy) and stores float32: so do we.
    """
    import torch

    if layout not in SINCOS_LAYOUTS:
        raise MMCError(f"unknown sin-cos layout {layout!r}: expected one of {list(SINCOS_LAYOUTS)}")
    if dim % 4:
        raise MMCError(f"2-D sin-cos position embeddings need a width divisible by 4, got {dim}")
    quarter = dim // 4
    dtype = torch.float64 if layout == "mae" else torch.float32
    omega = 1.0 / (SINCOS_TEMPERATURE ** (torch.arange(quarter, dtype=dtype) / quarter))
    rows = torch.arange(grid_h, dtype=dtype).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, dtype=dtype).repeat(grid_h)

    def encode(position):
        angle = position[:, None] * omega[None, :]
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    first, second = (cols, rows) if layout == "mae" else (rows, cols)
    return torch.cat([encode(first), encode(second)], dim=1).float()


def sincos_layout(patch_pos, grid: tuple[int, int], atol: float = 1e-4) -> str | None:
    """``mae`` or ``mocov3`` when ``patch_pos`` (grid_h * grid_w, D) are those fixed embeddings, else None
    (learned embeddings)."""
    import torch

    dim = patch_pos.shape[-1]
    if dim % 4 or patch_pos.shape[0] != grid[0] * grid[1]:
        return None
    stored = patch_pos.detach().float().cpu()
    for layout in SINCOS_LAYOUTS:
        if torch.allclose(stored, sincos_2d(grid[0], grid[1], dim, layout), rtol=0.0, atol=atol):
            return layout
    return None


# ----------------------------------------------------------------------------- resizing
def _split(pos_embed, num_prefix_tokens: int, grid: tuple[int, int]):
    """(1, P + h*w, D) -> prefix (1, P, D) and the grid as an image (1, D, h, w)."""
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    expected = grid[0] * grid[1]
    if patches.shape[1] != expected:
        raise MMCError(
            f"pos_embed has {patches.shape[1]} patch tokens, not {expected} for a {grid[0]}x{grid[1]} grid"
        )
    return prefix, patches.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)


def _join(prefix, image, dtype):
    import torch

    patches = image.permute(0, 2, 3, 1).reshape(1, -1, image.shape[1]).to(dtype)
    return torch.cat([prefix, patches], dim=1)


def resize_pos_embed(
    pos_embed,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    method: str,
    num_prefix_tokens: int = 1,
    layout: str | None = None,
):
    """``pos_embed`` (1, P + gh*gw, D) of an ``old_grid`` ViT -> the embeddings for ``new_grid``.

    ``num_prefix_tokens`` leading tokens (0 for ``no_embed_class`` models) are kept as they are.
    ``layout`` (``sincos`` only) is the sin-cos channel order; read from ``pos_embed`` when None.
    """
    import torch
    import torch.nn.functional as F

    old_grid, new_grid = tuple(map(int, old_grid)), tuple(map(int, new_grid))
    if method not in METHODS:
        raise MMCError(f"unknown position-embedding resize {method!r}: expected one of {list(METHODS)}")
    if method == "sincos":
        prefix, _ = _split(pos_embed, num_prefix_tokens, old_grid)
        if layout is None:
            layout = sincos_layout(pos_embed[0, num_prefix_tokens:], old_grid)
            if layout is None:
                raise MMCError(not_sincos_message())
        if old_grid == new_grid:
            return pos_embed
        patches = sincos_2d(*new_grid, pos_embed.shape[-1], layout).to(pos_embed.device, pos_embed.dtype)
        return torch.cat([prefix, patches[None]], dim=1)
    if old_grid == new_grid:
        return pos_embed
    if method == "timm":
        from timm.layers import resample_abs_pos_embed

        # exactly the call of timm's VisionTransformer._pos_embed with dynamic_img_size
        return resample_abs_pos_embed(
            pos_embed, new_size=new_grid, old_size=old_grid, num_prefix_tokens=num_prefix_tokens
        )
    prefix, image = _split(pos_embed, num_prefix_tokens, old_grid)
    image = image.float()
    if method == "mae":
        out = F.interpolate(image, size=new_grid, mode="bicubic", align_corners=False)
    else:  # dino: the +0.1 keeps floor(g * scale) at g' despite rounding; torch samples with the scale as given
        scale = ((new_grid[0] + 0.1) / old_grid[0], (new_grid[1] + 0.1) / old_grid[1])
        out = F.interpolate(image, scale_factor=scale, mode="bicubic", recompute_scale_factor=False)
        if tuple(out.shape[-2:]) != new_grid:  # DINO asserts the same
            raise MMCError(f"DINO's interpolation gave a {tuple(out.shape[-2:])} grid, not {new_grid}")
    return _join(prefix, out, pos_embed.dtype)


def not_sincos_message() -> str:
    return (
        "evaluation.pos_embed_resize: sincos rebuilds fixed 2-D sin-cos position embeddings, but this model's "
        "are not the fixed ones of MAE or MoCo v3 (learned embeddings?): use timm, dino or mae"
    )


class GridPosEmbed:
    """The position embeddings of one ViT for any patch grid by one method, each grid computed once.

    Calling it with ``(grid_h, grid_w)`` returns what to add to the tokens (the ViT's own
    ``pos_embed`` at its training grid). The model's weights are read when a grid is first asked for;
    they must not change afterwards (evaluation).
    """

    def __init__(self, vit: Any, method: str):
        if method not in METHODS:
            raise MMCError(f"unknown position-embedding resize {method!r}: expected one of {list(METHODS)}")
        self.vit = vit
        self.method = method
        self.num_prefix_tokens = 0 if vit.no_embed_class else vit.num_prefix_tokens
        self.grid = tuple(int(g) for g in vit.patch_embed.grid_size)
        self.layout = None
        if method == "sincos":
            self.layout = sincos_layout(vit.pos_embed[0, self.num_prefix_tokens :], self.grid)
            if self.layout is None:
                raise MMCError(not_sincos_message())
        self._by_grid: dict = {}

    def __call__(self, grid_h: int, grid_w: int):
        import torch

        stored = self.vit.pos_embed
        key = (int(grid_h), int(grid_w), stored.device, stored.dtype)
        if key not in self._by_grid:
            # a plain tensor (not an inference tensor) in float32 whatever the caller's autocast
            with torch.inference_mode(False), torch.no_grad(), torch.autocast(stored.device.type, enabled=False):
                self._by_grid[key] = resize_pos_embed(
                    stored.detach(), self.grid, key[:2], self.method, self.num_prefix_tokens, self.layout
                )
        return self._by_grid[key]


def pos_embed_for(loaded: Any, setting: str) -> GridPosEmbed:
    """The :class:`GridPosEmbed` of a :class:`~mmc.models.LoadedModel` for ``evaluation.pos_embed_resize``."""
    method = method_for(setting, loaded.format)
    try:
        return GridPosEmbed(loaded.model, method)
    except MMCError as e:
        where = loaded.path if loaded.path is not None else f"the {loaded.format} model ({loaded.weights})"
        chosen = f" (auto is {method} for format {loaded.format})" if setting == "auto" else ""
        raise MMCError(f"{where}: {e}{chosen}") from None
