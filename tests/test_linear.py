"""oneDNN linear layers of the image encoders (layers/linear.py): the same numbers as nn.Linear / timm's Mlp
in inference and training, taken only where the rule says, and the backbones built with them."""

import pytest
import torch
import torch.nn.functional as F
from _layer_grads import assert_same_numbers, outputs_and_grads
from timm.layers import Mlp
from timm.layers.activations import GELUTanh
from torch import nn

from crobim_d2.modeling.backbone import D2ConvNeXt, D2SwinTransformer
from crobim_d2.modeling.layers import linear
from crobim_d2.precision import cpu_has_native_bf16

needs_onednn = pytest.mark.skipif(not linear.ONEDNN_LINEAR, reason="torch built without oneDNN")
BF16 = pytest.param("bfloat16", marks=pytest.mark.skipif(not cpu_has_native_bf16(), reason="no native bfloat16"))


@pytest.fixture
def op_calls(monkeypatch):
    """The activation names oneDNN's linear op is called with."""
    calls = []
    op = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(linear.torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a[3]) or op(*a))
    return calls


def plain_and_onednn(make):
    torch.manual_seed(0)
    plain = make()
    fast = make()
    fast.load_state_dict(plain.state_dict())
    assert linear.use_onednn_linears(fast) > 0
    return plain, fast


@needs_onednn
@pytest.mark.parametrize("dtype", ["float32", BF16])
@pytest.mark.parametrize("act", [nn.GELU, GELUTanh, nn.ReLU])
def test_mlp_inference_fuses_the_activation_and_equals_timm(monkeypatch, op_calls, dtype, act):
    monkeypatch.setattr(linear, "_avx512", lambda: True)
    plain, fast = plain_and_onednn(lambda: Mlp(24, 80, act_layer=act).eval())
    assert type(fast) is linear.OneDNNMlp and type(fast.fc1) is linear.OneDNNLinear
    x = torch.randn(2, 37, 24)
    bf16 = dtype == "bfloat16"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        want, got = plain(x), fast(x)
    name = {nn.GELU: "gelu", GELUTanh: "gelu", nn.ReLU: "relu"}[act]
    assert op_calls == [name, "none"]
    assert got.dtype == want.dtype == (torch.bfloat16 if bf16 else torch.float32) and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=(2e-2 if bf16 else 1e-5) * want.abs().max().item())


@needs_onednn
def test_float32_goes_to_onednn_only_on_avx512(monkeypatch, op_calls):
    """float32 encoder layers switch from MKL to oneDNN only where the CPU has AVX-512; bfloat16 inference
    takes oneDNN wherever bfloat16 is native. The capability is forced both ways, so the rule is checked on
    any CPU."""
    plain, fast = plain_and_onednn(lambda: Mlp(8, 16).eval())
    x = torch.randn(5, 8)
    for avx512 in (False, True):
        monkeypatch.setattr(linear, "_avx512", lambda avx512=avx512: avx512)
        op_calls.clear()
        with torch.no_grad():
            torch.testing.assert_close(fast(x), plain(x), rtol=0, atol=1e-5)
        assert op_calls == (["gelu", "none"] if avx512 else [])
        assert not linear.fused_linear_applies(x, float32_needs_avx512=True)  # autograd on
        with torch.no_grad():
            assert linear.fused_linear_applies(x, float32_needs_avx512=True) is avx512
            assert linear.fused_linear_applies(x)  # MID's FFN: float32 on any oneDNN CPU
            assert not linear.fused_linear_applies(x.double(), float32_needs_avx512=True)
            assert not linear.fused_linear_applies(x[:0])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert linear.fused_linear_applies(x, float32_needs_avx512=True) is cpu_has_native_bf16()


@needs_onednn
def test_mlp_keeps_timm_where_the_fused_path_does_not_apply(monkeypatch, op_calls):
    """Active dropout (training mode under no_grad), a hidden norm, or an activation oneDNN cannot fuse: the
    Mlp runs timm's own forward (its linear layers may still be oneDNN ones)."""
    monkeypatch.setattr(linear, "_avx512", lambda: True)
    x = torch.randn(6, 8)
    dropped = linear.OneDNNMlp(8, 16, drop=0.5)
    assert linear.use_onednn_linears(dropped) == 2  # its two nn.Linear; it is already an OneDNNMlp
    with torch.no_grad():
        kept = dropped.eval()(x)
        op_calls.clear()
        out = dropped.train()(x)
        assert op_calls == ["none", "none"] and not torch.allclose(out, kept)
        for mlp in (Mlp(8, 16, norm_layer=nn.LayerNorm), Mlp(8, 16, act_layer=nn.SiLU)):
            linear.use_onednn_linears(mlp.eval())
            op_calls.clear()
            out = mlp(x)
            assert op_calls == ["none", "none"]  # two unfused layers
            hidden = mlp.act(F.linear(x, mlp.fc1.weight, mlp.fc1.bias))
            want = F.linear(mlp.norm(hidden), mlp.fc2.weight, mlp.fc2.bias)
            torch.testing.assert_close(out, want, rtol=0, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("frozen", [False, True], ids=["trained-weight", "frozen-weight"])
def test_float32_training_gives_the_gradients_of_nn_linear(monkeypatch, op_calls, bias, frozen):
    monkeypatch.setattr(linear, "_avx512", lambda: True)
    plain, fast = plain_and_onednn(lambda: nn.Linear(12, 20, bias=bias))
    for layer in (plain, fast):
        layer.weight.requires_grad_(not frozen)
    x = torch.randn(3, 7, 12, requires_grad=True)
    grad_out = torch.randn(3, 7, 20)
    want, got = outputs_and_grads((plain, fast), x, grad_out)
    assert op_calls == ["none", "none"]  # forward and input gradient
    assert (want[2] is None) is frozen and (want[3] is None) is not bias
    assert_same_numbers(want, got, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_training_keeps_nn_linear_under_autocast_and_without_avx512(monkeypatch, op_calls):
    layer = linear.OneDNNLinear(8, 4)
    x = torch.randn(5, 8)
    monkeypatch.setattr(linear, "_avx512", lambda: False)
    layer(x).sum().backward()
    monkeypatch.setattr(linear, "_avx512", lambda: True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().sum().backward()
    assert op_calls == [] and out.dtype == torch.bfloat16
    assert not linear.onednn_training_applies(x.double(), layer.weight.double())


def test_use_onednn_linears_keeps_state_dict_and_leaves_subclasses():
    class Custom(nn.Linear):
        """A subclass whose forward may differ: use_onednn_linears must leave it alone."""

    model = nn.Sequential(nn.Linear(4, 4), Custom(4, 4), Mlp(4, 8), Mlp(4, 8, use_conv=True))
    keys = list(model.state_dict())
    assert linear.use_onednn_linears(model) == 4  # the Linear, the linear Mlp and its two layers
    assert list(model.state_dict()) == keys
    assert [type(m).__name__ for m in model] == ["OneDNNLinear", "Custom", "OneDNNMlp", "Mlp"]
    assert isinstance(model[0], nn.Linear) and isinstance(model[2], Mlp)
    assert linear.use_onednn_linears(model) == 0  # idempotent


@needs_onednn
@pytest.mark.parametrize("make", [
    lambda: D2SwinTransformer(img_size=64, embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4),
                              window_size=4, drop_path_rate=0.0),
    lambda: D2ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), drop_path_rate=0.0),
], ids=["swin", "convnext"])
def test_backbones_on_onednn_equal_timm_layers_in_inference_and_training(monkeypatch, op_calls, make):
    """The paper's backbones build with the oneDNN layers; against the same weights on timm's plain layers
    (the classes swapped back) they give the same features and the same gradients."""
    monkeypatch.setattr(linear, "_avx512", lambda: True)
    torch.manual_seed(0)
    fast = make()
    assert any(type(m) is linear.OneDNNMlp for m in fast.modules())
    plain = make()
    plain.load_state_dict(fast.state_dict())
    for m in plain.modules():
        if type(m) is linear.OneDNNLinear:
            m.__class__ = nn.Linear
        elif type(m) is linear.OneDNNMlp:
            m.__class__ = Mlp
    x = torch.randn(2, 3, 64, 64)
    fast.eval(), plain.eval()
    with torch.no_grad():
        want, got = plain(x), fast(x)
    assert "gelu" in op_calls
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-4)
    fast.train(), plain.train()
    op_calls.clear()
    for model in (plain, fast):
        sum(o.square().mean() for o in model(x).values()).backward()
    assert op_calls and "gelu" not in op_calls  # training: unfused autograd function
    grads = dict(plain.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_layers_are_nn_linear_and_timm_mlp(op_calls):
    plain, fast = plain_and_onednn(lambda: Mlp(16, 32))
    plain, fast = plain.cuda(), fast.cuda()
    x = torch.randn(4, 9, 16, device="cuda", requires_grad=True)
    for model in (plain, fast):
        model(x).square().sum().backward()
    assert op_calls == []
    torch.testing.assert_close(fast.fc1.weight.grad, plain.fc1.weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), plain.eval()(x))
    assert op_calls == []


@needs_onednn
def test_gradient_checkpointing_recomputes_through_the_onednn_function(monkeypatch, op_calls):
    """USE_CHECKPOINT re-runs the forward in backward; the oneDNN function gives the same gradients there."""
    monkeypatch.setattr(linear, "_avx512", lambda: True)

    def make(use_checkpoint):
        torch.manual_seed(0)
        return D2SwinTransformer(img_size=64, embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4),
                                 window_size=4, drop_path_rate=0.0, use_checkpoint=use_checkpoint)

    x = torch.randn(1, 3, 64, 64)
    grads, calls = [], []
    for use_checkpoint in (False, True):
        model = make(use_checkpoint)
        op_calls.clear()
        sum(o.square().mean() for o in model(x).values()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        calls.append(len(op_calls))
    assert calls[1] > calls[0] > 0  # the recomputed forwards call it again
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@needs_onednn
def test_policy_always_and_never_override_the_rule(monkeypatch, op_calls):
    from crobim_d2.modeling.mid import FFN

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), FFN(8, 16, 0.0))
    linear.use_onednn_linears(model)
    assert linear.set_onednn_policy(model, "always") == 4  # the Linear, the FFN and its two layers
    monkeypatch.setattr(linear, "_avx512", lambda: False)  # the rule: float32 stays on MKL here
    x = torch.randn(5, 8, requires_grad=True)
    model(x).sum().backward()  # "always": the autograd function in training
    assert op_calls and set(op_calls) == {"none"}
    linear.set_onednn_policy(model, "never")
    monkeypatch.setattr(linear, "_avx512", lambda: True)  # the rule would take oneDNN everywhere here
    op_calls.clear()
    with torch.no_grad():
        model.eval()(x)
    model(x).sum().backward()
    assert op_calls == []  # "never": F.linear, MID's FFN included
    with pytest.raises(ValueError, match=r"MODEL\.CROBIM\.ONEDNN_LINEAR='mkl'.*'never'"):
        linear.set_onednn_policy(model, "mkl")
