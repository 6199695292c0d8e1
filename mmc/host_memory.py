"""Keep freed host memory in the process for reuse, instead of handing it back to the kernel.

A training step on the CPU allocates and frees the same few hundred megabytes every step
(activations, gradients, the loss's K-way distributions). By default glibc serves large blocks
with fresh ``mmap`` calls and unmaps them on ``free``, and trims the top of its heap, so every
step touches new pages: 80,000-140,000 minor page faults per ViT-S/16 step at batch 8, each a trip
into the kernel that zero-fills a page (docs/pretrain.md, "Host memory"). With every block served
from the heap and the heap never trimmed, the next step reuses the same pages: no faults. PyTorch's
CPU performance guide reaches the same end by preloading jemalloc or tcmalloc; ``mallopt`` does
it from inside the process, with the allocator that is already there. The cost: the process keeps
its peak heap until it exits, as PyTorch's CUDA caching allocator keeps device memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NO_TRIM = -1  # mallopt(3): "setting M_TRIM_THRESHOLD to -1 disables trimming completely"
NO_MMAP = 0  # mallopt(3): "setting M_MMAP_MAX to 0 disables the use of mmap(2) for ... large allocation requests"


def keep_freed_memory() -> bool:
    """Make glibc serve every block from its heap and keep freed ones for reuse; True when it took effect.

    Process-wide and permanent. No effect (False) where the C library is not glibc (macOS, musl):
    those allocators keep their own policy.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, NO_MMAP)) and bool(mallopt(M_TRIM_THRESHOLD, NO_TRIM))
