"""Whether this CPU runs 16-bit matmuls natively, and the warning a run gets when it does not.

PyTorch's CPU matmuls in bfloat16 or float16 go to oneDNN only where the CPU has instructions for
that dtype (on x86: AVX-512 BF16 / AVX512-FP16 or AMX, or the AVX-512 core set that oneDNN emulates
them on). Elsewhere, e.g. an x86 CPU with AVX2 only, they fall back to PyTorch's reference kernel,
which is one to two orders of magnitude slower than float32: a bfloat16 run there is never what
the user wanted. The check is oneDNN's own answer, so it holds for every CPU PyTorch supports.
"""

from __future__ import annotations

_NATIVE_CHECKS = {"bfloat16": "_is_mkldnn_bf16_supported", "float16": "_is_mkldnn_fp16_supported"}


def cpu_runs_natively(precision: str) -> bool:
    """True when matmuls in ``precision`` (float32, bfloat16, float16) run in oneDNN's kernels on
    this CPU; float32 always does."""
    if precision == "float32":
        return True
    import torch

    check = getattr(torch.ops.mkldnn, _NATIVE_CHECKS[precision])
    return bool(check())


def slow_precision_warning(option: str, precision: str, device_type: str, native: bool | None = None) -> str | None:
    """The warning for a run of ``option`` = ``precision`` on ``device_type``, or None when the
    setting runs at full speed there (any precision on an accelerator, float32 everywhere).
    ``native`` overrides the check of this CPU (tests)."""
    if device_type != "cpu" or precision == "float32":
        return None
    if native is None:
        native = cpu_runs_natively(precision)
    if native:
        return None
    return (
        f"{option}: {precision} on a CPU without native {precision} matmuls (oneDNN has no {precision} "
        "kernels for it, e.g. x86 without AVX-512): every matmul runs in PyTorch's reference kernel, many "
        f"times slower than float32; set {option}: float32 for runs on this CPU"
    )
