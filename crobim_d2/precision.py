"""The autocast precision of a device, decided in one place from what the device runs natively.

Every path that runs the model under autocast asks ``autocast_dtype``: training (``SOLVER.AMP``), inference
(``MODEL.CROBIM.INFERENCE_DTYPE``, hence ``RRSISPredictor``, ``crobim-predict`` and the evaluation loop),
the demo and the benchmarks. ``"auto"`` picks:

- CPU: bfloat16 where the CPU runs it natively (oneDNN's bfloat16 support: AVX512-BF16 / AMX class CPUs),
  else float32. On CPUs without it (AVX2-only laptops and many cloud machines) bfloat16 is emulated and one
  to two orders of magnitude slower than float32, so it must never be the default there.
- CUDA, inference: bfloat16 where the GPU supports it, else float32.
- CUDA, training: float16 with loss scaling (Detectron2's ``AMPTrainer``).

An explicit ``"bfloat16"`` (or ``"float16"``) is honoured everywhere; on a CPU without native bfloat16 it
runs with a warning that says how to choose a fast precision. Only torch is imported here.
"""
import logging
import warnings

import torch

__all__ = [
    "PRECISIONS",
    "autocast_dtype",
    "cpu_capability",
    "cpu_compute_dtype",
    "cpu_has_native_bf16",
    "describe_cpu",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_EXPLICIT = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
_reported: set[tuple] = set()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (the probe tests patch)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_capability() -> str:
    """PyTorch's CPU kernel capability, e.g. "AVX2" or "AVX512"."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a CPU matrix product or convolution on x computes in here: the CPU autocast dtype where
    autocast is on, else x's own."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def cpu_has_amx() -> bool:
    """Whether bfloat16 matrix products run on AMX tiles (oneDNN uses them where native bfloat16 is on)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe() and cpu_has_native_bf16())


def describe_cpu() -> str:
    """One line for benchmark tables and logs: capability and native bfloat16 (on AMX or not)."""
    native = "yes" + (" (AMX)" if cpu_has_amx() else "") if cpu_has_native_bf16() else "no"
    return f"{cpu_capability()}, native bfloat16 {native}"


def _name(dtype: torch.dtype | None) -> str:
    return "float32" if dtype is None else str(dtype).replace("torch.", "")


def _report(key: str, device: str, requested: str, dtype: torch.dtype | None, why: str) -> None:
    entry = (key, device, requested, dtype)
    if entry not in _reported:
        _reported.add(entry)
        logger.info(f"{key}={requested!r} on {device}: {_name(dtype)} ({why}).")


def autocast_dtype(
    device: str | torch.device,
    requested: str = "auto",
    purpose: str = "inference",
    key: str = "MODEL.CROBIM.INFERENCE_DTYPE",
) -> torch.dtype | None:
    """The dtype to autocast to on ``device`` (None: plain float32, no autocast).

    ``requested``: one of ``PRECISIONS``. ``purpose``: "inference" or "training" (they differ on CUDA only).
    ``key`` names the config key in messages. The choice is logged once per key, device and outcome.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"{key}={requested!r} is not a precision; use one of {list(PRECISIONS)}.")
    if purpose not in ("inference", "training"):
        raise ValueError(f"purpose={purpose!r}; use 'inference' or 'training'.")
    kind = torch.device(device).type
    if requested != "auto":
        dtype = _EXPLICIT[requested]
        if kind == "cpu" and dtype is not None and not cpu_has_native_bf16():
            entry = ("slow", key, requested)
            if entry not in _reported:
                _reported.add(entry)
                warnings.warn(
                    f"{key}={requested!r}: this CPU ({cpu_capability()}) has no native bfloat16, so {requested} "
                    f"runs emulated, one to two orders of magnitude slower than float32. Set {key} to 'auto' "
                    "(the fastest precision this CPU runs natively) or 'float32'.",
                    stacklevel=2,
                )
        _report(key, kind, requested, dtype, "as configured")
        return dtype
    if kind == "cpu":
        if cpu_has_native_bf16():
            dtype, why = torch.bfloat16, f"the CPU ({cpu_capability()}) runs bfloat16 natively"
        else:
            dtype, why = None, f"the CPU ({cpu_capability()}) has no native bfloat16; emulated bfloat16 is far slower"
    elif kind == "cuda":
        if purpose == "training":
            dtype, why = torch.float16, "CUDA mixed precision with loss scaling"
        elif torch.cuda.is_bf16_supported():
            dtype, why = torch.bfloat16, "the GPU supports bfloat16"
        else:
            dtype, why = None, "the GPU has no bfloat16"
    else:
        dtype, why = None, f"no autocast policy for device type {kind!r}"
    _report(key, kind, requested, dtype, why)
    return dtype
