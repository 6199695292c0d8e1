"""The training step in process: heads on the tokens the losses read, gradient accumulation,
clipping modes, the prototype freeze, MoCo v3's key order and the per-term gradient diagnostics."""

from __future__ import annotations

import copy
import math
import os
import shutil

import pytest
import torch
from PIL import Image
from pretrain_support import TINY_PRETRAIN

from mmc import config, cpu_precision
from mmc.pretrain import diagnostics, gradients, train
from mmc.pretrain.model import build_pair
from mmc.tracking import JobRecorder

# exact accumulation needs what does not depend on how a batch is split: no drop-path (drawn per
# image from one stream), no batch norm in the contrast heads (statistics per micro-batch)
EXACT = {"backbone": {"drop_path": 0.0}, "contrast": {"head_norm": "layer"}}


def make_trainer(tmp_path, overrides: dict | None = None, images: int = 8) -> train.Trainer:
    folder = tmp_path / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        Image.new("RGB", (8, 8), (i * 20 % 256, 0, 0)).save(folder / f"{i}.png")
    pretrain = config.deep_merge(copy.deepcopy(TINY_PRETRAIN), {"data": {"path": str(folder)}})
    pretrain = config.deep_merge(pretrain, overrides or {})
    cfg = config.freeze(config.resolve({"run_name": "t", "device": "cpu", "tracking": {"enabled": False}, "pretrain": pretrain}))
    pcfg = cfg.experiments["mmc"]
    return train.Trainer(cfg, pcfg, tmp_path / "out", tmp_path / "state", torch.device("cpu"), JobRecorder("pretrain", "t", None))


def batch(seed: int, images: int = 8):
    gen = torch.Generator().manual_seed(seed)
    masks = torch.rand(2, images, 16, generator=gen) < 0.35
    masks[0, 1] = False  # a view without any masked token
    return torch.randn(2, images, 3, 32, 32, generator=gen), [], masks


def run_steps(trainer: train.Trainer, steps: int, epoch: int = 0) -> list[dict]:
    rows = []
    for i in range(steps):
        trainer.step = i
        row = trainer._train_step(trainer.student, batch(i), epoch)
        rows.append(trainer._host_values(row))
    return rows


def test_student_heads_run_on_the_masked_tokens_and_the_teacher_centre_sum_covers_all_patches():
    raw = {"run_name": "t", "pretrain": config.deep_merge(copy.deepcopy(TINY_PRETRAIN), EXACT)}
    pcfg = config.freeze(config.resolve(raw)).experiments["mmc"]
    torch.manual_seed(0)
    student, teacher = build_pair(pcfg)
    views, _, masks = batch(0, images=3)
    with torch.no_grad():
        s_out, t_out = student(views, masks), teacher(views, masks)
        s_tokens = student.encode(views.flatten(0, 1), masks.flatten(0, 1)).unflatten(0, (2, 3))
        t_tokens = teacher.encode(views.flatten(0, 1)).unflatten(0, (2, 3))
        s_full, t_full = student.dino_head(s_tokens), teacher.dino_head(t_tokens)  # every token
    m = int(masks.sum())
    assert s_out["dino_patch"].shape == (m, 64) and s_out["recon"].shape == (m, 8 * 8 * 3)
    torch.testing.assert_close(s_out["dino_patch"], s_full[:, :, 1:][masks], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s_out["dino_cls"], s_full[:, :, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s_out["recon"], student.recon_head(s_tokens[:, :, 1:])[masks], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t_out["dino_patch"], t_full[:, :, 1:][masks], rtol=1e-5, atol=1e-6)
    # the centre statistic: the sum of the teacher's logits over all 2 x 3 x 16 patch tokens
    expected = t_full[:, :, 1:].double().sum(dim=(0, 1, 2))
    torch.testing.assert_close(t_out["dino_patch_sum"].double(), expected, rtol=1e-5, atol=1e-4)
    # without masks: no masked-token outputs, the same [CLS] outputs and centre statistic
    with torch.no_grad():
        s_clean, t_clean = student(views), teacher(views)
    assert s_clean["recon"].shape == (0, 8 * 8 * 3) and s_clean["dino_patch"].shape == (0, 64)
    assert t_clean["dino_patch"].shape == (0, 64)
    torch.testing.assert_close(t_clean["dino_cls"], t_out["dino_cls"])  # the teacher never sees the masks
    torch.testing.assert_close(t_clean["dino_patch_sum"], t_out["dino_patch_sum"])


@pytest.mark.parametrize("micro", [2, 4])
def test_accumulated_micro_batches_give_the_update_of_one_big_batch(tmp_path, micro):
    whole = make_trainer(tmp_path / "whole", EXACT)
    split = make_trainer(tmp_path / "split", {**EXACT, "optim": {"micro_batch_size": micro}})
    assert (whole.micro_batch, whole.accumulation) == (8, 1)
    assert (split.micro_batch, split.accumulation) == (micro, 8 // micro)
    whole_rows, split_rows = run_steps(whole, 3), run_steps(split, 3)
    for got, ref in zip(split_rows, whole_rows, strict=True):
        for key in ("loss", "mim", "distill_cls", "distill_patch", "contrast", "grad_norm", "teacher_entropy_cls"):
            assert got[key] == pytest.approx(ref[key], rel=1e-5), key
    for name, p in whole.student.named_parameters():  # the last step's (clipped) gradient, then the weights
        q = dict(split.student.named_parameters())[name]
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-7, msg=f"grad {name}")
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    for a, b in zip(split.teacher.parameters(), whole.teacher.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for key in ("cls", "patch"):
        torch.testing.assert_close(split.centers[key], whole.centers[key], rtol=1e-5, atol=1e-7)


def test_a_step_gathers_masked_tokens_without_boolean_indexing(tmp_path):
    """Boolean indexing reads its count back from a GPU (a device synchronisation per use): the step
    computes the masked positions once per micro-batch from the host masks and gathers with them,
    so its only nonzero calls are those, on the host (the other ops run the same way on every device)."""
    from torch.profiler import ProfilerActivity, profile

    trainer = make_trainer(tmp_path, {"optim": {"micro_batch_size": 4}})
    run_steps(trainer, 1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.step = 1
        trainer._train_step(trainer.student, batch(1), 0)
    nonzero = [e for e in prof.events() if e.name == "aten::nonzero"]
    assert len(nonzero) == trainer.accumulation == 2
    for event in nonzero:  # each called from masked_positions on the host, not from an indexing op
        assert event.cpu_parent is None or event.cpu_parent.name not in ("aten::index", "aten::_index_put_impl_")


def test_micro_batch_must_divide_the_per_process_batch(tmp_path):
    with pytest.raises(config.ConfigError, match=r"pretrain\.optim\.micro_batch_size: 3 does not divide pretrain\.optim\.batch_size \(8\): expected a divisor"):
        make_trainer(tmp_path, {"optim": {"micro_batch_size": 3}})
    assert train.micro_batching(16, 2, 4) == (4, 2)
    assert train.micro_batching(16, 2, None) == (8, 1)
    with pytest.raises(train.MMCError, match=r"processes x optim.micro_batch_size \(4 x 8\)"):
        train.micro_batching(16, 4, 8)


def test_per_param_clipping_follows_dinos_formula():
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in ((3, 4), (5,), (2, 2))]
    grads = [torch.randn(p.shape, generator=gen) * scale for p, scale in zip(params, (10.0, 0.1, 3.0), strict=True)]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    total = gradients.clip_(params, 1.5, "per_param")
    assert total.item() == pytest.approx(math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)), rel=1e-6)
    for p, g in zip(params, grads, strict=True):
        norm = float(g.double().norm())
        factor = min(1.0, 1.5 / (norm + 1e-6))  # DINO's clip_gradients: scale only when above
        torch.testing.assert_close(p.grad.double(), g.double() * factor, rtol=1e-6, atol=0)
    # the global mode is torch's clip_grad_norm_
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    reference = [g.clone() for g in grads]
    expected_total = torch.nn.utils.clip_grad_norm_([torch.nn.Parameter(torch.zeros(1))], 1.0)  # warm import
    refs = [torch.nn.Parameter(torch.zeros_like(g)) for g in reference]
    for r, g in zip(refs, reference, strict=True):
        r.grad = g
    expected_total = torch.nn.utils.clip_grad_norm_(refs, 1.5)
    assert gradients.clip_(params, 1.5, "global").item() == pytest.approx(expected_total.item(), rel=1e-6)
    for p, r in zip(params, refs, strict=True):
        torch.testing.assert_close(p.grad, r.grad)


def test_clip_per_param_in_training_changes_the_update(tmp_path):
    per_param = make_trainer(tmp_path / "p", {**EXACT, "optim": {"clip_mode": "per_param", "clip_grad": 0.01}})
    global_ = make_trainer(tmp_path / "g", {**EXACT, "optim": {"clip_grad": 0.01}})
    run_steps(per_param, 1), run_steps(global_, 1)
    for name, p in per_param.student.named_parameters():
        if p.grad is not None:
            assert float(p.grad.norm()) <= 0.01 * (1 + 1e-4), name  # every tensor on its own
    total = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in global_.student.parameters() if p.grad is not None))
    assert total == pytest.approx(0.01, rel=1e-3)  # one norm over all tensors


def test_freeze_last_layer_keeps_the_prototypes_during_the_first_epochs(tmp_path):
    trainer = make_trainer(tmp_path, {**EXACT, "distill": {"freeze_last_layer_epochs": 1}})
    prototypes = trainer.student.dino_head.last.weight
    before = prototypes.detach().clone()
    trainer.step = 0
    trainer._train_step(trainer.student, batch(0), epoch=0)
    assert torch.equal(prototypes, before)  # no gradient and no weight decay in epoch 0
    other = trainer.student.dino_head.mlp[0].weight.detach().clone()
    trainer._train_step(trainer.student, batch(1), epoch=1)
    assert not torch.equal(prototypes, before) and not torch.equal(trainer.student.dino_head.mlp[0].weight, other)


def test_keys_after_ema_moves_the_teacher_before_it_is_used(tmp_path):
    """MoCo v3's order: at step s the teacher is EMA'd towards the student as it is at the start of
    step s (momentum of step s); DINO's order EMA's it after the optimiser step."""
    moco = make_trainer(tmp_path / "m", {**EXACT, "contrast": {"keys_after_ema": True}, "optim": {"ema_momentum": [0.5, 0.5]}})
    dino = make_trainer(tmp_path / "d", {**EXACT, "optim": {"ema_momentum": [0.5, 0.5]}})
    name = "backbone.blocks.0.mlp.fc1.weight"
    s0 = dict(moco.student.named_parameters())[name].detach().clone()
    run_steps(moco, 1), run_steps(dino, 1)
    s1 = dict(moco.student.named_parameters())[name].detach().clone()
    t_moco, t_dino = dict(moco.teacher.named_parameters())[name], dict(dino.teacher.named_parameters())[name]
    torch.testing.assert_close(t_moco, s0)  # 0.5 * s0 + 0.5 * s0: the step's start, not its result
    torch.testing.assert_close(t_dino, 0.5 * s0 + 0.5 * dict(dino.student.named_parameters())[name].detach())
    moco.step = 1
    moco._train_step(moco.student, batch(1), 0)
    torch.testing.assert_close(dict(moco.teacher.named_parameters())[name], 0.5 * s0 + 0.5 * s1)


def test_term_gradients_add_up_to_the_backbone_gradient(tmp_path):
    trainer = make_trainer(tmp_path, {**EXACT, "diagnostics": {"every_steps": 1}, "optim": {"clip_grad": None}})
    captured = {}
    original = trainer._term_gradients

    def capture(losses, into):
        original(losses, into)
        captured.update({k: [g.clone() for g in v] for k, v in into.items()})

    trainer._term_gradients = capture
    trainer.step = 0
    row = trainer._host_values(trainer._train_step(trainer.student, batch(0), 0))
    assert set(captured) == {"mim", "distill_cls", "distill_patch", "contrast"}
    params = [p for p in trainer.student.backbone.parameters()]
    total = [sum(captured[k][i] for k in captured) for i in range(len(params))]
    for p, t in zip(params, total, strict=True):
        torch.testing.assert_close(t, p.grad, rtol=1e-4, atol=1e-7)  # linearity: the terms add to the total
    for name, grads in captured.items():
        norm = math.sqrt(sum(float(g.double().square().sum()) for g in grads))
        assert row[f"backbone_grad_norm_{name}"] == pytest.approx(norm, rel=1e-5)
    assert 0 < row["teacher_entropy_cls"] <= math.log(64) + 1e-6
    assert 0 < row["teacher_entropy_patch"] <= math.log(64) + 1e-6
    assert row["center_norm_cls"] > 0 and row["center_norm_patch"] > 0


@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
def test_the_trainer_warns_before_a_low_precision_run_on_a_cpu_without_its_matmuls(tmp_path, capsys, precision):
    """A bfloat16 run on a CPU whose oneDNN has no bfloat16 kernels (x86 with AVX2 only) runs every
    matmul in the reference kernel: the trainer says so, naming the option, before the first step;
    float32, and bfloat16 on a CPU that has the kernels, start silently."""
    make_trainer(tmp_path, {"precision": precision})
    err = capsys.readouterr().err
    warned = "pretrain.precision: bfloat16 on a CPU without native bfloat16 matmuls" in err
    assert warned == (precision == "bfloat16" and not cpu_precision.cpu_runs_natively("bfloat16"))
    assert ("set pretrain.precision: float32" in err) == warned


def test_the_slow_precision_warning_only_for_16_bit_on_a_cpu_without_its_matmuls():
    warning = cpu_precision.slow_precision_warning
    assert warning("evaluation.precision", "bfloat16", "cpu", native=False).startswith(
        "evaluation.precision: bfloat16 on a CPU without native bfloat16 matmuls"
    )
    assert "float16 kernels" in warning("pretrain.precision", "float16", "cpu", native=False)
    assert warning("pretrain.precision", "bfloat16", "cpu", native=True) is None
    assert warning("pretrain.precision", "bfloat16", "cuda", native=False) is None
    assert warning("pretrain.precision", "float32", "cpu", native=False) is None
    assert cpu_precision.cpu_runs_natively("float32")


def test_entropy_against_the_formula():
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 0.0]])
    expected = [math.log(2), -sum(p * math.log(p) for p in (0.1, 0.2, 0.3, 0.4)), 0.0]
    torch.testing.assert_close(diagnostics.entropy(probs), torch.tensor(expected), rtol=1e-6, atol=1e-7)
    assert diagnostics.entropy(torch.full((7,), 1 / 7)).item() == pytest.approx(math.log(7), rel=1e-6)


def test_collapse_watch_warns_once_per_near_uniform_episode():
    watch = diagnostics.CollapseWatch(num_prototypes=100, tolerance=0.02, span_steps=20)
    near = 0.99 * math.log(100)
    assert watch.observe("cls", 0, near) is None
    assert watch.observe("cls", 10, near) is None
    message = watch.observe("cls", 20, near)
    assert message and "from step 0 to step 20" in message and "2%" in message
    assert watch.observe("cls", 30, near) is None  # reported once
    assert watch.observe("cls", 40, 0.9 * math.log(100)) is None  # the episode ends
    assert watch.observe("cls", 50, near) is None and watch.observe("cls", 60, near) is None
    assert watch.observe("cls", 70, near) is not None  # a new episode of 20 steps
    assert watch.observe("patch", 70, near) is None  # each distribution has its own episode
    assert diagnostics.CollapseWatch(100, 0.02, 0).observe("cls", 10**6, near) is None  # span 0: never


@pytest.mark.slow  # compiles the tiny model's blocks with inductor (20 s on 2 cores, cold)
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile on CPU needs a C++ compiler (.ci/run installs g++)")
def test_compiled_blocks_train_like_eager(tmp_path):
    """``compile: true`` compiles each transformer block of student and teacher (regional
    compilation): the same losses as eager within float32 reordering, every block compiled once per
    variant (grad / no-grad), no graph break, and the diagnostics' retained-graph backward works."""
    import torch._dynamo

    overrides = {"backbone": {"drop_path": 0.0}, "diagnostics": {"every_steps": 1}}
    eager = make_trainer(tmp_path / "eager", overrides)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = make_trainer(tmp_path / "compiled", {**overrides, "compile": True})
    assert all(getattr(b, "_compiled_call_impl", None) is not None for n in (compiled.student, compiled.teacher) for b in n.backbone.blocks)
    assert list(compiled.student.state_dict()) == list(eager.student.state_dict())  # the checkpoint's names
    got = run_steps(compiled, 2)
    want = run_steps(eager, 2)
    for g, w in zip(got, want, strict=True):
        for key in ("loss", "mim", "distill", "contrast", "backbone_grad_norm_mim"):
            assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-6), key
    counters = torch._dynamo.utils.counters
    assert not counters["graph_break"], dict(counters["graph_break"])
    # the blocks share their code: one graph for the student's (training) and one for the teacher's (no grad)
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])


def test_every_block_stays_compiled_with_a_drop_path_rate_of_its_own():
    """Stochastic depth gives each of 12 blocks its own drop-path rate, a constant the compiled code
    specialises on: 12 versions of the block's code for the student, and 1 for the teacher (no grad),
    more than dynamo's default limit of 8 versions, past which it would run the rest eagerly.
    Traced with the ``eager`` backend (dynamo's capture, no code generation)."""
    import torch._dynamo

    from mmc.pretrain.model import compile_blocks

    pretrain = config.deep_merge(copy.deepcopy(TINY_PRETRAIN), {"backbone": {"depth": 12, "drop_path": 0.1}})
    cfg = config.freeze(config.resolve({"run_name": "t", "device": "cpu", "tracking": {"enabled": False}, "pretrain": pretrain}))
    student, teacher = build_pair(cfg.experiments["mmc"])
    rates = {round(float(getattr(b.drop_path1, "drop_prob", 0.0)), 9) for b in student.backbone.blocks}
    assert len(rates) == 12
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for network in (student, teacher):
        compile_blocks(network, backend="eager")
    views, _, masks = batch(0)
    out = student(views, masks)
    sum(v.float().sum() for v in out.values()).backward()
    with torch.no_grad():
        teacher(views, masks)
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 12 + 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
