"""Depthwise convolutions whose CPU backward runs as forward convolutions.

PyTorch's CPU backward of a depthwise convolution (groups = channels, e.g. ConvNeXt's 7x7) runs far slower
than its forward, which oneDNN computes. Both gradients of a stride-1 "same" depthwise convolution are
themselves depthwise forward convolutions:

- input: the output gradient convolved with the spatially flipped kernel, same padding;
- weight: per (image, channel), the zero-padded input correlated with that channel's output gradient (the
  gradient map as a kernel, the N*C maps as groups), then summed over the images.

``DepthwiseConv2d`` (an ``nn.Conv2d``: same parameters and state-dict keys) takes this backward in CPU
training, in float32 or under bfloat16 autocast (computing in bfloat16, as autocast's convolution does);
everything else (inference, CUDA, other dtypes) is ``nn.Conv2d``. ``use_fast_depthwise``
converts the eligible convolutions of a module in place. The numbers are in projects/CroBIM/README.md
("Linear layers on the CPU").
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ...precision import cpu_compute_dtype

__all__ = ["DepthwiseConv2d", "depthwise_backward_applies", "use_fast_depthwise"]


def depthwise_backward_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``DepthwiseConv2d`` runs its autograd function: autograd on, a float32 CPU input and weight,
    computing in float32 or under bfloat16 CPU autocast."""
    return (
        torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.numel() > 0
        and x.dtype == weight.dtype == torch.float32
        and cpu_compute_dtype(x) in (torch.float32, torch.bfloat16)
    )


class _DepthwiseConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding: int):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        p = ctx.padding
        n, c, h, w = x.shape
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(-1, -2), padding=p, groups=c)
        if ctx.needs_input_grad[1]:
            padded = F.pad(x, (p, p, p, p)).reshape(1, n * c, h + 2 * p, w + 2 * p)
            per_image = F.conv2d(padded, grad.reshape(n * c, 1, h, w), groups=n * c)
            grad_weight = per_image.view(n, c, 1, *weight.shape[-2:]).sum(0, dtype=torch.float32).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None


class DepthwiseConv2d(nn.Conv2d):
    """A stride-1, odd square-kernel, "same"-padded depthwise ``nn.Conv2d`` whose CPU training backward runs as
    two forward convolutions (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if depthwise_backward_applies(x, self.weight):
            dtype = cpu_compute_dtype(x)
            bias = None if self.bias is None else self.bias.to(dtype)
            with torch.autocast("cpu", enabled=False):  # the inputs are cast here, once
                return _DepthwiseConvFunction.apply(x.to(dtype), self.weight.to(dtype), bias, self.padding[0])
        return super().forward(x)


def _eligible(conv: nn.Conv2d) -> bool:
    k = conv.kernel_size
    return (
        conv.groups == conv.in_channels == conv.out_channels
        and k[0] == k[1]
        and k[0] % 2 == 1
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding == (k[0] // 2, k[0] // 2)
        and conv.padding_mode == "zeros"
    )


def use_fast_depthwise(module: nn.Module) -> int:
    """Turn every plain ``nn.Conv2d`` of module that ``DepthwiseConv2d`` computes exactly (depthwise, stride 1,
    dilation 1, odd square kernel, "same" zero padding) into one, in place; parameters and state-dict keys
    stay. Returns how many changed."""
    changed = 0
    for sub in module.modules():
        if type(sub) is nn.Conv2d and _eligible(sub):
            sub.__class__ = DepthwiseConv2d
            changed += 1
    return changed
