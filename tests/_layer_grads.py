"""Forward and backward of interchangeable layers on the same input, for comparing their numbers."""

import torch


def outputs_and_grads(layers, x: torch.Tensor, grad_out: torch.Tensor, autocast: torch.dtype | None = None) -> list:
    """Per layer: (output, input gradient, weight gradient, bias gradient or None), x's gradient reset between
    layers; under CPU ``autocast`` when given (the output as float32, grad_out cast to its dtype)."""
    results = []
    for layer in layers:
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            out = layer(x)
        out.backward(grad_out.to(out.dtype))
        bias = layer.bias.grad if layer.bias is not None else None
        results.append((out.float(), x.grad.clone(), layer.weight.grad, bias))
        x.grad = None
    return results


def assert_same_numbers(want: tuple, got: tuple, **tolerance) -> None:
    """Each entry of got equals want's within tolerance (``torch.testing.assert_close``); None where want's is."""
    for a, b in zip(want, got, strict=True):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(b, a, **tolerance)
