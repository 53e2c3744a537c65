"""Linear layers fused by oneDNN for CPU inference: product, bias and ReLU written in one pass.

On the CPU ``F.linear`` copies the bias into the output and accumulates the product onto it, and a ReLU after
it is one more pass over the output; oneDNN's inner-product primitive (``torch.ops.mkldnn._linear_pointwise``,
the op torch.compile's CPU backend fuses linear layers into) writes product + bias (+ ReLU) once. For MID's
FFN over the ~19k tokens of V_ms the output is a 19k x 1024 matrix, so the passes saved are large ones. The op
has no autograd formula, so it is used only where no graph is recorded (inference under ``no_grad`` /
``inference_mode``); training keeps ``F.linear``. It computes in the dtype ``F.linear`` would under the
current CPU autocast (precision policy: ``attention.py``), float32 or, where the CPU runs it natively,
bfloat16; anything else keeps ``F.linear``.
"""

import torch

from ...precision import cpu_has_native_bf16

__all__ = ["fused_linear", "fused_linear_applies"]


def _onednn_linear_built() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


ONEDNN_LINEAR = _onednn_linear_built()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def fused_linear_applies(x: torch.Tensor) -> bool:
    """Whether ``fused_linear`` may stand in for ``F.linear`` on input x here: a non-empty CPU tensor, no
    autograd graph recorded, torch built with oneDNN, float32 or natively supported bfloat16."""
    if not ONEDNN_LINEAR or x.device.type != "cpu" or torch.is_grad_enabled() or x.numel() == 0:
        return False
    dtype = _compute_dtype(x)
    return dtype == torch.float32 or (dtype == torch.bfloat16 and cpu_has_native_bf16())


def fused_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool = False
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then ReLU if ``relu``, as one oneDNN primitive; x (..., K) -> (..., N).
    Only where ``fused_linear_applies(x)``: the caller decides once, and keeps its own plain path otherwise."""
    dtype = _compute_dtype(x)
    flat = x.reshape(-1, x.shape[-1]).to(dtype).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(
        flat, weight.to(dtype), None if bias is None else bias.to(dtype), "relu" if relu else "none", [None], ""
    )
    return out.view(*x.shape[:-1], weight.shape[0])
