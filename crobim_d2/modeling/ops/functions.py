"""Dispatch of multi-scale deformable attention to the compiled kernels (``crobim_d2._C``).

CUDA tensors run the CUDA kernel, CPU tensors the CPU kernel. When the extension is not built (or was built
without CUDA and the tensors are on a GPU) the op falls back to ``ms_deform_attn_pytorch`` with one warning
saying how to build it.

Precision: the CUDA kernel runs float16/bfloat16 values natively (float accumulation). The CPU kernel runs
float32/float64, and bfloat16 values in forward when no gradient is needed (inference under
``torch.autocast("cpu", torch.bfloat16)``: rows read as bfloat16, float32 accumulation); other
reduced-precision CPU values, and bfloat16 ones that need gradients, are computed in float32. Sampling
locations and attention weights are always kept in float32 (float64 for double values): a bfloat16 location
would be off by a quarter pixel on a 120-pixel level. The output always has the
dtype of ``value``, on every path, so the op is a drop-in under autocast and in a bfloat16 model.
"""
import importlib
import warnings

import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from .reference import check_inputs, ms_deform_attn_pytorch

_C_IMPORT_ERROR: str | None = None
try:
    _C = importlib.import_module("crobim_d2._C")
except ModuleNotFoundError:  # not built: the reference takes over
    _C, _C_IMPORT_ERROR = None, "crobim_d2._C is not built"
except ImportError as e:  # built against another torch (e.g. after a torch upgrade): rebuild
    _C, _C_IMPORT_ERROR = None, f"crobim_d2._C failed to load: {e}"

BUILD_HINT = "run `make install` (or `pip install --no-build-isolation -e .` with FORCE_CUDA=1 for the CUDA kernels)"
_warned = set()

_KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def extension_info() -> dict:
    """Whether ``crobim_d2._C`` is importable and which kernels it holds."""
    return {
        "built": _C is not None,
        "cpu": _C is not None,
        "cuda": _C is not None and bool(_C.with_cuda()),
        "import_error": _C_IMPORT_ERROR,
    }


def cuda_compiled() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return extension_info()["cuda"]


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _kernel_available(device: torch.device) -> bool:
    if _C is None:
        _warn_once(
            "missing",
            f"Multi-scale deformable attention kernels unavailable ({_C_IMPORT_ERROR}); "
            f"using the slower pure-PyTorch reference. To build them, {BUILD_HINT}.",
        )
        return False
    if device.type == "cuda" and not _C.with_cuda():
        _warn_once(
            "cuda",
            "crobim_d2._C was built without CUDA kernels; using the pure-PyTorch reference on the GPU. "
            f"To build them, {BUILD_HINT} on a machine with nvcc.",
        )
        return False
    return device.type in _KERNEL_DTYPES


class MSDeformAttnFunction(Function):
    """Autograd wrapper of the compiled forward and backward kernels (inputs already in kernel dtypes)."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return _C.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output) -> tuple[Tensor | None, ...]:
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_loc, grad_attn = _C.ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            grad_output.contiguous(),
        )
        return grad_value, None, None, grad_loc, grad_attn


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention (Deformable DETR layout); returns ``(N, Lq, M * D)`` in ``value``'s dtype.

    Args:
        value: (N, S, M, D) per-head values of all levels, flattened level after level.
        spatial_shapes: (L, 2) long, (H_l, W_l) of each level.
        level_start_index: (L,) long, offset of each level in S.
        sampling_locations: (N, Lq, M, L, P, 2), normalized (x, y) in [0, 1]; outside reads zeros.
        attention_weights: (N, Lq, M, L, P).
    """
    device = value.device
    if not _kernel_available(device):
        return ms_deform_attn_pytorch(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    for name, t in (("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but value is on {device}; move all inputs to one device")
    kernel_dtype = value.dtype if value.dtype in _KERNEL_DTYPES[device.type] else torch.float32
    if device.type == "cpu" and value.dtype == torch.bfloat16 and not _needs_grad(
        value, sampling_locations, attention_weights
    ):
        kernel_dtype = torch.bfloat16  # forward-only bfloat16 CPU kernel
    index_dtype = torch.float64 if kernel_dtype == torch.float64 else torch.float32
    output = MSDeformAttnFunction.apply(
        value.to(kernel_dtype).contiguous(),
        spatial_shapes.to(device=device, dtype=torch.long).contiguous(),
        level_start_index.to(device=device, dtype=torch.long).contiguous(),
        sampling_locations.to(index_dtype).contiguous(),
        attention_weights.to(index_dtype).contiguous(),
    )
    return output.to(value.dtype)
