"""Linear layers through oneDNN on the CPU: product, bias and activation written in one pass.

On the CPU ``F.linear`` copies the bias into the output and accumulates the product onto it, and an activation
after it is one more pass over the output; oneDNN's inner-product primitive (``torch.ops.mkldnn._linear_pointwise``,
the op torch.compile's CPU backend fuses linear layers into) writes product + bias (+ activation) once. The op
has no autograd formula, so ``fused_linear`` runs only where no graph is recorded (inference under ``no_grad`` /
``inference_mode``). It computes in the dtype ``F.linear`` would under the current CPU autocast (precision
policy: ``attention.py``), float32 or, where the CPU runs it natively, bfloat16; anything else keeps ``F.linear``.

float32 products also differ in who computes them: ``F.linear`` runs them on MKL, this op on oneDNN. On the
AVX-512 CPU measured (an AMD EPYC) oneDNN ran them faster than MKL, which does not use all of AVX-512 on
every vendor's CPU; with AVX2 alone neither was consistently faster. So only MID's FFN, whose fused bias and
ReLU over a 19k x 1024 output were measured to pay for the switch on AVX2 too, takes float32 oneDNN
everywhere; every other layer asks with ``float32_needs_avx512``. ``OneDNNLinear`` / ``OneDNNMlp`` carry
this into the image encoders, LGFA and MID (``use_onednn_linears``): fused inference, and in float32
training on AVX-512 an autograd function whose forward and input gradient run on oneDNN (the weight
gradient, a product over all tokens, stays ``torch.mm``). The numbers are in projects/CroBIM/README.md
("Linear layers on the CPU", "Benchmarks").

``MODEL.CROBIM.ONEDNN_LINEAR`` (each layer's ``onednn_policy``, set model-wide by ``set_onednn_policy``)
overrides the rule: "auto" as above, "always" float32 on oneDNN on any CPU (for an AVX2 CPU where
``benchmarks/linear.py`` shows oneDNN faster), "never" ``F.linear`` everywhere.
"""

import torch
from timm.layers import Mlp
from timm.layers.activations import GELU as TimmGELU
from timm.layers.activations import GELUTanh
from torch import nn
from torch.autograd.function import once_differentiable

from ...precision import cpu_capability, cpu_compute_dtype, cpu_has_native_bf16

__all__ = [
    "POLICIES",
    "OneDNNLinear",
    "OneDNNMlp",
    "fused_linear",
    "fused_linear_applies",
    "onednn_training_applies",
    "set_onednn_policy",
    "use_onednn_linears",
]

POLICIES = ("auto", "always", "never")

# oneDNN's post-op name and algorithm for each activation fused_linear can fuse.
ACTIVATIONS = {None: ("none", ""), "relu": ("relu", ""), "gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh")}


def _onednn_linear_built() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


ONEDNN_LINEAR = _onednn_linear_built()


def _avx512() -> bool:
    return cpu_capability() == "AVX512"


def fused_linear_applies(x: torch.Tensor, *, float32_needs_avx512: bool = False, policy: str = "auto") -> bool:
    """Whether ``fused_linear`` may stand in for ``F.linear`` on input x here: a non-empty CPU tensor, no
    autograd graph recorded, torch built with oneDNN, natively supported bfloat16 or float32 (with
    ``float32_needs_avx512``: float32 only on an AVX-512 CPU, unless ``policy`` is "always"); never where
    ``policy`` is "never"."""
    if policy == "never" or not ONEDNN_LINEAR or x.device.type != "cpu" or torch.is_grad_enabled() or not x.numel():
        return False
    dtype = cpu_compute_dtype(x)
    if dtype == torch.float32:
        return policy == "always" or not float32_needs_avx512 or _avx512()
    return dtype == torch.bfloat16 and cpu_has_native_bf16()


def fused_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then ``activation`` (a key of ``ACTIVATIONS``), as one oneDNN primitive;
    x (..., K) -> (..., N). Only where ``fused_linear_applies(x)``: the caller decides once, and keeps its own
    plain path otherwise."""
    attr, algorithm = ACTIVATIONS[activation]
    dtype = cpu_compute_dtype(x)
    flat = x.reshape(-1, x.shape[-1]).to(dtype).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(
        flat, weight.to(dtype), None if bias is None else bias.to(dtype), attr, [None], algorithm
    )
    return out.view(*x.shape[:-1], weight.shape[0])


def onednn_training_applies(x: torch.Tensor, weight: torch.Tensor, policy: str = "auto") -> bool:
    """Whether ``OneDNNLinear`` runs its autograd function on x: a non-empty float32 CPU input and weight with
    autograd on and no autocast, on an AVX-512 CPU (any CPU where ``policy`` is "always"; none where it is
    "never"), torch built with oneDNN."""
    return (
        policy != "never"
        and ONEDNN_LINEAR
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.numel() > 0
        and x.dtype == weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and (policy == "always" or _avx512())
    )


def _inner_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [None], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    """(M, K) x (N, K) weight + bias -> (M, N): forward and input gradient on oneDNN, the weight gradient
    (a reduction over the M tokens) on ``torch.mm``."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _inner_product(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _inner_product(grad, weight.t().contiguous(), None) if ctx.needs_input_grad[0] else None
        grad_weight = grad.t().mm(x) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) whose CPU forward runs on oneDNN where that is the
    faster path: inference in bfloat16, or in float32 on AVX-512 (``fused_linear``); float32 training on
    AVX-512 (the autograd function above). Elsewhere (CUDA, AVX2-only CPUs, bfloat16 training, float64) it
    is ``nn.Linear``. ``onednn_policy``: one of ``POLICIES`` (``set_onednn_policy``)."""

    onednn_policy = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_linear_applies(x, float32_needs_avx512=True, policy=self.onednn_policy):
            return fused_linear(x, self.weight, self.bias)
        if onednn_training_applies(x, self.weight, self.onednn_policy):
            flat = x.reshape(-1, x.shape[-1])
            return _OneDNNLinearFunction.apply(flat, self.weight, self.bias).view(*x.shape[:-1], -1)
        return super().forward(x)


def _fusable_activation(act: nn.Module) -> str | None:
    """The ``ACTIVATIONS`` key of a timm Mlp's activation module, None where oneDNN cannot fuse it."""
    if type(act) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}[act.approximate]
    return {TimmGELU: "gelu", GELUTanh: "gelu_tanh", nn.ReLU: "relu"}.get(type(act))


class OneDNNMlp(Mlp):
    """timm's ``Mlp`` (fc1, activation, fc2; same state-dict keys) with, in CPU inference, the activation fused
    into fc1's product; its two linear layers are ``OneDNNLinear``. The fused path needs an activation oneDNN
    fuses, no hidden norm and no active dropout. ``onednn_policy``: one of ``POLICIES``."""

    onednn_policy = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activation = _fusable_activation(self.act)
        dropout = self.training and (self.drop1.p > 0 or self.drop2.p > 0)
        if (
            activation is not None
            and isinstance(self.norm, nn.Identity)
            and not dropout
            and fused_linear_applies(x, float32_needs_avx512=True, policy=self.onednn_policy)
        ):
            hidden = fused_linear(x, self.fc1.weight, self.fc1.bias, activation)
            return fused_linear(hidden, self.fc2.weight, self.fc2.bias)
        return super().forward(x)


def use_onednn_linears(module: nn.Module) -> int:
    """Turn every plain ``nn.Linear`` in module into ``OneDNNLinear`` and every timm ``Mlp`` whose layers are
    linear into ``OneDNNMlp``, in place: parameters, buffers and state-dict keys stay as they are, only the
    forward changes. Subclasses are left alone (their forward may differ). Returns how many modules changed."""
    changed = 0
    for sub in module.modules():
        if type(sub) is nn.Linear:
            sub.__class__ = OneDNNLinear
        elif type(sub) is Mlp and isinstance(sub.fc1, nn.Linear) and isinstance(sub.drop1, nn.Dropout):
            sub.__class__ = OneDNNMlp
        else:
            continue
        changed += 1
    return changed


def set_onednn_policy(module: nn.Module, policy: str, key: str = "MODEL.CROBIM.ONEDNN_LINEAR") -> int:
    """Set ``onednn_policy`` on every submodule that has one (``OneDNNLinear``, ``OneDNNMlp``, MID's FFN).
    ``key`` names the config key in the error for an unknown policy. Returns how many were set."""
    if policy not in POLICIES:
        raise ValueError(
            f"{key}={policy!r} is not a policy; use one of {list(POLICIES)}: 'auto' (oneDNN where it was "
            "measured faster), 'always' (float32 on oneDNN on any CPU too) or 'never' (F.linear everywhere)."
        )
    count = 0
    for sub in module.modules():
        if hasattr(sub, "onednn_policy"):
            sub.onednn_policy = policy
            count += 1
    return count
