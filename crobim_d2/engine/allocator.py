"""Keep freed memory in the process on CPU (glibc ``mallopt``), config key ``CPU_MALLOC_REUSE``.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns it
to the OS on ``free``. A CroBIM forward at 480x480 allocates many such buffers (MID's 19k-token FFN
activations are ~80 MiB per image), so every step touches hundreds of thousands of new pages: measured here,
a Swin-B batch-2 training step took ~720k minor page faults and ~3.2 s of kernel time out of ~14.7 s.
With mmap off (``M_MMAP_MAX = 0``) and trimming off (``M_TRIM_THRESHOLD`` huge) large blocks come from the
heap and stay there after ``free``, so the next step reuses already-mapped pages (~38k faults, ~10.5 s).
The cost: the process keeps its peak heap until it exits, as a caching allocator (PyTorch's own on CUDA,
jemalloc, tcmalloc) does.

The setting is process-wide and applies to allocations made after it, so entry points apply it:
``train_net.py`` in each process (``default_setup``), ``crobim-predict`` and ``demo.py`` when ``MODEL.DEVICE``
is the CPU (``RRSISPredictor``, a library class, leaves it to the program). It is a no-op, with a
log line, where the C library is not glibc (or an allocator such as jemalloc is preloaded in its place, which
already reuses memory).
"""

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

# From glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# Largest value M_TRIM_THRESHOLD takes (an int): freed heap memory is never handed back.
NEVER_TRIM = 2**31 - 1

_applied = False


def _libc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def reuse_freed_memory() -> bool:
    """Make glibc keep large freed blocks for reuse (see the module docstring). True if it is in effect.

    Idempotent; safe to call from every process of a multi-process run.
    """
    global _applied
    if _applied:
        return True
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        logger.info("CPU_MALLOC_REUSE: the C library is not glibc; leaving its allocator as it is.")
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
    if not ok:
        logger.warning("CPU_MALLOC_REUSE: glibc mallopt refused the setting; CPU steps will be slower.")
        return False
    _applied = True
    logger.info("CPU_MALLOC_REUSE: glibc keeps freed memory for reuse (no mmap per large tensor).")
    return True


def apply_cpu_malloc_reuse(cfg) -> bool:
    """Apply ``reuse_freed_memory`` if ``cfg.CPU_MALLOC_REUSE`` is on and the model runs on the CPU."""
    if not cfg.CPU_MALLOC_REUSE or not str(cfg.MODEL.DEVICE).startswith("cpu"):
        return False
    return reuse_freed_memory()
