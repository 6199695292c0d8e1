"""Student and teacher networks: a timm VisionTransformer plus the heads of the active losses.

Names of parameters are the checkpoint contract (docs/architecture.md): ``backbone.*`` (timm ViT),
``mask_token``, ``recon_head.*``, ``dino_head.*``, ``projector.*``, ``predictor.*``. A head exists only
when its loss has a non-zero weight; the teacher (EMA of the student) has no mask token, no
reconstruction head and no predictor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmc.models.vit import ViTArch, build_vit
from mmc.pretrain.masking import masked_positions, take_masked


def arch_of(pcfg) -> dict:
    """The checkpoint's ``arch`` dict of a pretraining config (one definition: :class:`ViTArch`)."""
    return ViTArch.from_config(pcfg.backbone).as_dict()


class DINOHead(nn.Module):
    """3-layer MLP -> L2-normalised bottleneck -> K prototypes with unit-norm rows (DINO's weight-norm, g = 1)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised bottleneck features (..., bottleneck_dim)."""
        return F.normalize(self.mlp(x), dim=-1, eps=1e-6)

    def prototype_weight(self) -> torch.Tensor:
        return F.normalize(self.last.weight, dim=1, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.bottleneck(x), self.prototype_weight())


def _norm(kind: str, dim: int, affine: bool = True) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(dim, affine=affine)
    if kind == "layer":
        return nn.LayerNorm(dim, elementwise_affine=affine)
    return nn.Identity()


def mlp(num_layers: int, in_dim: int, hidden_dim: int, out_dim: int, norm: str) -> nn.Sequential:
    """MoCo v3's MLP: Linear-Norm-ReLU blocks, the last output normalised without affine parameters."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d_in = in_dim if i == 0 else hidden_dim
        d_out = out_dim if i == num_layers - 1 else hidden_dim
        layers.append(nn.Linear(d_in, d_out, bias=norm == "none"))
        if i < num_layers - 1:
            layers += [_norm(norm, d_out), nn.ReLU(inplace=True)]
        else:
            layers.append(_norm(norm, d_out, affine=False))
    return nn.Sequential(*layers)


class MMCNetwork(nn.Module):
    """One network of the pair. ``forward`` returns the outputs the losses need, shaped (views, B, ...)."""

    def __init__(self, pcfg, *, student: bool):
        super().__init__()
        b, w = pcfg.backbone, pcfg.loss
        self.is_student = student
        self.patch_size = int(b.patch_size)
        self.distill_mode = pcfg.distill.mode
        self.backbone = build_vit(b, drop_path=b.drop_path if student else 0.0)
        dim = b.embed_dim
        if student:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, dim))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
            if w.w_mim > 0:
                self.recon_head = nn.Linear(dim, b.patch_size * b.patch_size * 3)
        if w.w_distill > 0:
            d = pcfg.distill
            self.dino_head = DINOHead(dim, d.out_dim, d.hidden_dim, d.bottleneck_dim)
        if w.w_contrast > 0:
            c = pcfg.contrast
            self.projector = mlp(3, dim, c.hidden_dim, c.dim, c.head_norm)
            if student:
                self.predictor = mlp(2, c.dim, c.hidden_dim, c.dim, c.head_norm)

    def encode(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens after the final norm, (B, 1+N, D); masked patch embeddings replaced before pos_embed."""
        vit = self.backbone
        x = vit.patch_embed(images)  # (B, H, W, D): dynamic_img_size keeps the grid
        if mask is not None:
            b, h, w, _ = x.shape
            x = torch.where(mask.reshape(b, h, w, 1), self.mask_token.to(x.dtype), x)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        return vit.norm(x)

    def forward(
        self,
        global_views: torch.Tensor,
        masks: torch.Tensor | None = None,
        local_views: list[torch.Tensor] | None = None,
        positions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The outputs the losses use, and only those (docs/pretrain.md, "What a step computes").

        global_views: (V, B, 3, H, W); masks: (V, B, N) bool; local_views: [(B, 3, h, w)] (student).
        The student replaces the masked patches by ``mask_token``; the teacher sees clean views and
        uses ``masks`` only to select its patch outputs at the student's masked positions.
        ``positions``: ``masked_positions(masks)``, when the caller has them (the training step
        computes them on the host); otherwise computed here.

        Student: "recon" (M, P) and, in ``patch`` mode, "dino_patch" (M, K) at the masked tokens
        (M = masks.sum(), in the order of ``masks.nonzero()``), "dino_cls" (V, B, K), "dino_local"
        (L, B, K), "query" (V, B, d); in ``cls_to_patch`` mode "dino_patch" is every patch (V, B, N, K).
        Teacher: "dino_cls", "dino_patch" (M, K) (``patch`` mode), "dino_patch_sum" (K,) float32: the
        sum of its logits over **all** V*B*N patch tokens (for the centre), and "key" (V, B, d).
        """
        views, batch = global_views.shape[:2]
        flat_masks = masks.flatten(0, 1) if masks is not None and self.is_student else None
        tokens = self.encode(global_views.flatten(0, 1), flat_masks).unflatten(0, (views, batch))
        if masks is None:  # nothing masked: no masked-token outputs
            positions = torch.zeros(0, dtype=torch.long, device=tokens.device)
        elif positions is None:
            positions = masked_positions(masks)
        out: dict[str, torch.Tensor] = {}
        # the student's masked patch tokens, gathered once for the MIM and distillation heads
        masked_patches = take_masked(tokens[:, :, 1:], positions, 3) if self.is_student else None
        if hasattr(self, "recon_head"):
            out["recon"] = self.recon_head(masked_patches)
        if hasattr(self, "dino_head"):
            out.update(self._dino(tokens, positions, masked_patches, local_views))
        if hasattr(self, "projector"):
            projected = self.projector(tokens[:, :, 0].flatten(0, 1))
            if hasattr(self, "predictor"):
                out["query"] = self.predictor(projected).unflatten(0, (views, batch))
            else:
                out["key"] = projected.unflatten(0, (views, batch))
        return out

    def _dino(
        self, tokens: torch.Tensor, positions: torch.Tensor, masked_patches: torch.Tensor | None, local_views
    ) -> dict[str, torch.Tensor]:
        """The shared head on the tokens a distillation loss reads, in one call (one matmul per layer).

        The teacher selects at ``positions`` after its bottleneck; the student's ``masked_patches``
        are its patch tokens at those positions.
        """
        head, (views, batch) = self.dino_head, tokens.shape[:2]
        cls, patches = tokens[:, :, 0].flatten(0, 1), tokens[:, :, 1:]
        if not self.is_student:
            if self.distill_mode != "patch":
                return {"dino_cls": head(cls).unflatten(0, (views, batch))}
            # the centre is the mean of the teacher's output over all its patch tokens: the last
            # layer is linear, so it is the prototypes applied to the float32 sum of the normalised
            # bottleneck features; the K-way logits are only needed at the masked tokens
            features = head.bottleneck(tokens)  # (V, B, 1+N, bottleneck): every token
            patch_features = features[:, :, 1:]
            weight = head.prototype_weight()
            masked = take_masked(patch_features, positions, 3)
            logits = F.linear(torch.cat([features[:, :, 0].flatten(0, 1), masked]), weight)
            with torch.autocast(tokens.device.type, enabled=False):
                patch_sum = F.linear(patch_features.sum(dim=(0, 1, 2), dtype=torch.float32), weight.float())
            dino_cls, dino_patch = logits.split([cls.shape[0], masked.shape[0]])
            return {"dino_cls": dino_cls.unflatten(0, (views, batch)), "dino_patch": dino_patch, "dino_patch_sum": patch_sum}
        parts = [cls]
        if self.distill_mode == "patch":
            parts.append(masked_patches)
        else:
            parts.append(patches.flatten(0, 2))
        if local_views:
            parts.append(torch.stack([self.encode(v)[:, 0] for v in local_views]).flatten(0, 1))
        sizes = [p.shape[0] for p in parts]
        logits = head(torch.cat(parts)).split(sizes)
        out = {"dino_cls": logits[0].unflatten(0, (views, batch))}
        out["dino_patch"] = logits[1] if self.distill_mode == "patch" else logits[1].unflatten(0, patches.shape[:3])
        if local_views:
            out["dino_local"] = logits[2].unflatten(0, (len(local_views), batch))
        return out


def build_pair(pcfg) -> tuple[MMCNetwork, MMCNetwork | None]:
    """Student, and its teacher initialised to the same weights (None when only L_mim is on)."""
    student = MMCNetwork(pcfg, student=True)
    if pcfg.loss.w_distill == 0 and pcfg.loss.w_contrast == 0:
        return student, None
    teacher = MMCNetwork(pcfg, student=False)
    ema_update(teacher, student, momentum=0.0)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher = momentum * teacher + (1 - momentum) * student, for every teacher parameter."""
    student_params = dict(student.named_parameters())
    names = [name for name, _ in teacher.named_parameters()]
    targets = [p for _, p in teacher.named_parameters()]
    sources = [student_params[name].detach() for name in names]
    if momentum == 0.0:
        torch._foreach_copy_(targets, sources)
    else:  # one fused pass over all parameters instead of two kernels per tensor
        torch._foreach_lerp_(targets, sources, 1.0 - momentum)


def param_groups(model: nn.Module) -> list[dict]:
    """AdamW groups: no weight decay on norms, biases and tokens (1-d tensors, cls/pos/mask tokens)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_token = name.endswith(("cls_token", "pos_embed", "reg_token", "mask_token"))
        (no_decay if p.ndim <= 1 or is_token else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


def compile_blocks(network: nn.Module, backend: str = "inductor") -> None:
    """Regional compilation: ``torch.compile`` each transformer block of ``network`` in place.

    The blocks are where the non-matmul time is (layer norms, GELU, softmax, residual adds,
    autocast's casts), and the compiler fuses it. Compiling the whole network instead breaks its
    graph at the data-dependent masked-token gathers and recompiles whenever the number of masked
    tokens changes; a block always sees (images, 1 + N, D). Each block's drop-path rate is a
    constant the compiled code specialises on (stochastic depth gives every block its own), so
    dynamo keeps one compiled version per block and variant (with or without grad, autocast on
    or off, a second input size such as local crops): its recompile limit is raised to cover them.
    Donated buffers (an inductor memory saving) are switched off: the per-term gradient
    diagnostics run one backward per loss term over the same graph (``retain_graph``).
    ``backend``: torch.compile's (the tests trace with ``eager``, which skips code generation).
    """
    import torch._dynamo
    import torch._functorch.config

    blocks = list(network.backbone.blocks)
    needed = 4 * len(blocks) + 8
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, needed)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4 * needed)
    torch._functorch.config.donated_buffer = False
    for block in blocks:
        block.compile(backend=backend)


def use_fused_attention(module: nn.Module, enabled: bool) -> None:
    """Switch timm's attention layers between PyTorch's fused kernel and the explicit q @ k^T, softmax, @ v.

    Same maths, different kernels: on CPU under 16-bit autocast the explicit form runs ViT-S's
    attention (forward and backward) several times faster than PyTorch's CPU flash-attention
    kernel (measured: docs/pretrain.md); on CUDA the fused kernel is the fast one.
    """
    for layer in module.modules():
        if hasattr(layer, "fused_attn"):
            layer.fused_attn = enabled
