"""Depthwise convolutions with a backward of forward convolutions (layers/conv.py): nn.Conv2d's gradients,
taken only in CPU training (float32 or bfloat16 autocast), and only for the convolutions it computes
exactly."""

import pytest
import torch
from _layer_grads import assert_same_numbers, outputs_and_grads
from torch import nn

from crobim_d2.modeling.backbone import D2ConvNeXt
from crobim_d2.modeling.layers import conv as conv_module
from crobim_d2.modeling.layers.conv import DepthwiseConv2d, use_fast_depthwise


@pytest.fixture
def function_calls(monkeypatch):
    calls = []
    apply = conv_module._DepthwiseConvFunction.apply
    monkeypatch.setattr(conv_module._DepthwiseConvFunction, "apply", lambda *a: calls.append(1) or apply(*a))
    return calls


@pytest.mark.parametrize("kernel", [3, 7])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("frozen", [False, True], ids=["trained-weight", "frozen-weight"])
def test_gradients_equal_nn_conv2d(function_calls, kernel, bias, frozen):
    torch.manual_seed(0)
    plain = nn.Conv2d(6, 6, kernel, padding=kernel // 2, groups=6, bias=bias)
    fast = nn.Conv2d(6, 6, kernel, padding=kernel // 2, groups=6, bias=bias)
    fast.load_state_dict(plain.state_dict())
    assert use_fast_depthwise(fast) == 1 and type(fast) is DepthwiseConv2d
    for layer in (plain, fast):
        layer.weight.requires_grad_(not frozen)
    x = torch.randn(3, 6, 11, 9, requires_grad=True)
    grad_out = torch.randn(3, 11, 9, 6).permute(0, 3, 1, 2)  # a channels-last gradient, as ConvNeXt's
    want, got = outputs_and_grads((plain, fast), x, grad_out)
    assert function_calls == [1]
    assert (want[2] is None) is frozen and (want[3] is None) is not bias
    assert_same_numbers(want, got, rtol=1e-5, atol=1e-5)


def test_only_exact_convolutions_are_converted_and_the_state_dict_stays():
    model = nn.Sequential(
        nn.Conv2d(4, 4, 7, padding=3, groups=4),  # ConvNeXt's: converted
        nn.Conv2d(4, 4, 3, padding=1, groups=4, stride=2),
        nn.Conv2d(4, 4, 3, padding=2, groups=4, dilation=2),
        nn.Conv2d(4, 8, 3, padding=1, groups=4),  # channel multiplier 2
        nn.Conv2d(4, 4, 3, padding=1),  # dense
        nn.Conv2d(4, 4, 4, padding=2, groups=4),  # even kernel
        nn.Conv2d(4, 4, 3, padding=0, groups=4),  # not "same"
        nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"),
    )
    keys = list(model.state_dict())
    assert use_fast_depthwise(model) == 1
    assert [type(m) for m in model] == [DepthwiseConv2d] + [nn.Conv2d] * 7
    assert list(model.state_dict()) == keys and use_fast_depthwise(model) == 0


def test_inference_and_other_dtypes_keep_nn_conv2d(function_calls):
    layer = nn.Conv2d(4, 4, 7, padding=3, groups=4)
    use_fast_depthwise(layer)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        layer(x)
    layer.double()(x.double()).sum().backward()
    assert function_calls == []
    layer.float()(x).sum().backward()
    assert function_calls == [1]


def test_bfloat16_autocast_gradients_agree_with_autocast_conv2d(function_calls):
    """Under bfloat16 CPU autocast it computes in bfloat16, as autocast's convolution does, and returns
    float32 gradients for the float32 parameters."""
    torch.manual_seed(0)
    plain = nn.Conv2d(8, 8, 7, padding=3, groups=8)
    fast = nn.Conv2d(8, 8, 7, padding=3, groups=8)
    fast.load_state_dict(plain.state_dict())
    use_fast_depthwise(fast)
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    grad_out = torch.randn(2, 8, 12, 12)
    want, got = outputs_and_grads((plain, fast), x, grad_out, autocast=torch.bfloat16)
    assert function_calls == [1] and got[2].dtype == got[3].dtype == torch.float32
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=3e-2 * a.abs().max().item())


def test_convnext_backbone_uses_it_and_trains_to_the_same_gradients():
    torch.manual_seed(0)
    fast = D2ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), drop_path_rate=0.0)
    assert sum(type(m) is DepthwiseConv2d for m in fast.modules()) == 4  # one per block
    plain = D2ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), drop_path_rate=0.0)
    plain.load_state_dict(fast.state_dict())
    for m in plain.modules():
        if type(m) is DepthwiseConv2d:
            m.__class__ = nn.Conv2d
    x = torch.randn(2, 3, 64, 64)
    for model in (plain, fast):
        sum(o.square().mean() for o in model(x).values()).backward()
    grads = dict(plain.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
