"""MutualInteractionDecoder: cascaded bidirectional attention + MSDeformAttn -> res2 logits (Eq. 14-17)."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

from crobim_d2 import add_crobim_config
from crobim_d2.modeling.layers import linear
from crobim_d2.modeling.mid import MutualInteractionDecoder
from crobim_d2.precision import cpu_has_native_bf16

CHANNELS = [8, 16, 32, 64]


def inputs(n: int = 2, sizes=(16, 8, 4, 2), tokens: int = 12, valid: int = 7):
    feats = [torch.randn(n, c, s, s) for c, s in zip(CHANNELS, sizes)]
    lang = torch.randn(n, tokens, 24)
    mask = torch.zeros(n, tokens, dtype=torch.long)
    mask[:, :valid] = 1
    return feats, lang, mask


def build(**kwargs) -> MutualInteractionDecoder:
    torch.manual_seed(0)
    args = {
        "in_channels": CHANNELS,
        "text_dim": 24,
        "hidden_dim": 32,
        "num_layers": 2,
        "num_heads": 4,
        "ffn_dim": 48,
        "msda_impl": "pytorch",
    }
    return MutualInteractionDecoder(**{**args, **kwargs})


@pytest.mark.parametrize("attention", ["cascaded", "unidirectional", "parallel"])
def test_every_attention_scheme_gives_res2_logits_and_trains_every_parameter(attention):
    mid = build(attention=attention)
    feats, lang, mask = inputs()
    logits = mid(feats, lang, mask)
    assert logits.shape == (2, 1, 16, 16) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    assert [n for n, p in mid.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_schemes_differ_in_which_language_the_vision_reads():
    feats, lang, mask = inputs()
    out = {a: build(attention=a, num_layers=1)(feats, lang, mask) for a in ("cascaded", "parallel")}
    # Same seed, same parameters: with one layer the only difference is the language the vision reads.
    assert not torch.allclose(out["cascaded"], out["parallel"], atol=1e-5)
    assert not hasattr(build(attention="unidirectional").layers[0], "lang_cross")


@pytest.mark.parametrize("attention", ["cascaded", "unidirectional", "parallel"])
def test_padded_words_do_not_change_the_logits(attention):
    mid = build(attention=attention).eval()
    feats, lang, mask = inputs()
    logits = mid(feats, lang, mask)
    lang2 = lang.clone()
    lang2[:, 7:] = torch.randn_like(lang2[:, 7:])
    assert torch.allclose(mid(feats, lang2, mask), logits, atol=1e-5)
    lang2[:, 3] += 1.0
    assert not torch.allclose(mid(feats, lang2, mask), logits, atol=1e-4)


def test_every_level_reaches_the_logits():
    mid = build().eval()
    feats, lang, mask = inputs()
    logits = mid(feats, lang, mask)
    for i in range(4):
        changed = list(feats)
        changed[i] = torch.randn_like(feats[i])
        assert not torch.allclose(mid(changed, lang, mask), logits, atol=1e-4)


def test_compiled_op_dispatch_matches_the_reference():
    feats, lang, mask = inputs()
    ref = build(msda_impl="pytorch").eval()(feats, lang, mask)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", RuntimeWarning
        )  # the reference stands in while the kernel is not built
        auto = build(msda_impl="auto").eval()(feats, lang, mask)
    assert torch.allclose(auto, ref, atol=1e-4)


def test_bf16_autocast_runs_and_agrees_with_float32():
    mid = build().eval()
    feats, lang, mask = inputs()
    ref = mid(feats, lang, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mid(feats, lang, mask)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert ((out.float() > 0) == (ref > 0)).float().mean() > 0.9


def test_from_config_and_validation():
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.MODEL.CROBIM.HIDDEN_DIM = 64
    cfg.MODEL.CROBIM.MID_NUM_LAYERS = 1
    cfg.MODEL.CROBIM.MID_ATTENTION = "parallel"
    mid = MutualInteractionDecoder(cfg, CHANNELS, 24)
    assert len(mid.layers) == 1 and mid.layers[0].attention == "parallel"
    assert mid.layers[0].msda.n_points == cfg.MODEL.CROBIM.MID_NUM_POINTS
    cfg.MODEL.CROBIM.MID_ATTENTION = "bidirectional"
    with pytest.raises(ValueError, match="MID_ATTENTION.*cascaded"):
        MutualInteractionDecoder(cfg, CHANNELS, 24)


def test_folded_prediction_equals_conv_resample_and_dot_product():
    mid = build().eval()
    shapes = [torch.Size((4, 4)), torch.Size((2, 2))]
    fused = torch.randn(2, 20, 32)
    cls = torch.randn(2, 32)
    levels = [
        fused[:, :16].transpose(1, 2).reshape(2, 32, 4, 4),
        fused[:, 16:].transpose(1, 2).reshape(2, 32, 2, 2),
    ]
    summed = levels[0] + torch.nn.functional.interpolate(levels[1], size=(4, 4), mode="bilinear")
    v_out = torch.einsum("ndhw,ed->nehw", summed, mid.mask_embed.weight) + mid.mask_embed.bias[:, None, None]
    l_out = mid.cls_embed(cls) / 32**0.5
    expected = torch.einsum("nehw,ne->nhw", v_out, l_out)[:, None]
    assert torch.allclose(mid.predict(fused, cls, shapes), expected, atol=1e-5)


def test_softmaxes_stay_float32_under_bf16_autocast(monkeypatch):
    softmax = torch.Tensor.softmax
    dtypes = []

    def spy(self, *args, **kwargs):
        out = softmax(self, *args, **kwargs)
        dtypes.append(out.dtype)  # softmax(dtype=float32) computes in float32 from reduced-precision scores
        return out

    monkeypatch.setattr(torch.Tensor, "softmax", spy)
    layer = build().layers[0]
    vis, words = torch.randn(1, 50, 32), torch.randn(1, 3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer.lang_cross(words, vis, vis)  # 50 visual keys
        out = layer.vis_cross(vis, words, words)  # 3 words
    # The long softmax is float32 on every device (layers/attention.py); the visual tokens' softmax over the
    # words is float32 inside the folded form, with the result in bfloat16 for what follows.
    assert dtypes == [torch.float32, torch.float32] and out.dtype == torch.bfloat16
    unfolded = layer.vis_cross.few_keys
    layer.vis_cross.few_keys = False
    expected = layer.vis_cross(vis, words, words)
    layer.vis_cross.few_keys = unfolded
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=0.05 * expected.abs().max().item())


def test_fused_ffn_and_projections_equal_the_plain_layers():
    """FFN (in-place ReLU on a flat hidden layer), Proj_v through a transposed view and MSDeformAttn's one
    product for offsets and weights compute what the plain nn.Linear chains do, gradients included."""
    from crobim_d2.modeling.mid import FFN, project_tokens

    torch.manual_seed(0)
    ffn = FFN(32, 48, 0.0).double()
    x = torch.randn(2, 7, 32, dtype=torch.double, requires_grad=True)
    plain = ffn[3](ffn[2](ffn[1](ffn[0](x))))
    (grad_plain,) = torch.autograd.grad(plain.square().sum(), x)
    out = ffn(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    assert torch.allclose(out, plain, atol=1e-12) and torch.allclose(grad, grad_plain, atol=1e-12)

    mid = build().double()
    feature = torch.randn(2, CHANNELS[1], 3, 5, dtype=torch.double)
    for f in (feature, feature.contiguous(memory_format=torch.channels_last)):
        want = mid.input_proj[1](f.flatten(2).transpose(1, 2).contiguous())
        assert torch.allclose(project_tokens(mid.input_proj[1], f), want, atol=1e-12)


@pytest.mark.skipif(not linear.ONEDNN_LINEAR, reason="torch built without oneDNN")
@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=pytest.mark.skipif(
    not cpu_has_native_bf16(), reason="this CPU has no native bfloat16"))])
def test_ffn_inference_through_onednn_equals_the_plain_layers(monkeypatch, dtype):
    """In CPU inference the FFN runs oneDNN's fused linear(+ReLU) primitive and gives what Linear, ReLU,
    Linear give, in the dtype F.linear gives under the same autocast; with autograd on it does not run."""
    from crobim_d2.modeling.mid import FFN

    torch.manual_seed(0)
    ffn = FFN(32, 96, 0.1).eval()
    x = torch.randn(2, 300, 32)
    calls = []
    fused = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(linear.torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a[3]) or fused(*a))
    bf16 = dtype == "bfloat16"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        with torch.no_grad():
            out = ffn(x)
            plain = ffn[3](ffn[1](ffn[0](x)))
        assert calls == ["relu", "none"]
        assert out.dtype == plain.dtype == (torch.bfloat16 if bf16 else torch.float32) and out.shape == x.shape
        torch.testing.assert_close(out, plain, rtol=0, atol=(2e-2 if bf16 else 1e-5) * plain.abs().max().item())
        with_grad = ffn(x)  # autograd on: the plain path
    assert calls == ["relu", "none"] and with_grad.requires_grad

    ffn.train()  # training mode with dropout under no_grad: dropout must still apply, so the plain path
    with torch.no_grad():
        dropped = ffn(x)
    assert calls == ["relu", "none"] and not torch.allclose(dropped.float(), out.float(), atol=1e-3)


def test_ffn_keeps_the_plain_layers_where_onednn_does_not_apply(monkeypatch):
    """Without the oneDNN op (or for float64 / empty inputs / under autograd) the FFN is F.linear, ReLU,
    F.linear."""
    from crobim_d2.modeling.mid import FFN

    torch.manual_seed(0)
    ffn = FFN(4, 5, 0.0).eval()
    x = torch.randn(3, 2, 4)
    with torch.no_grad():
        assert not linear.fused_linear_applies(x.double()) and not linear.fused_linear_applies(x[:0])
        double = ffn.double()
        torch.testing.assert_close(double(x.double()),
                                   F.linear(F.linear(x.double(), double[0].weight, double[0].bias).relu(),
                                            double[3].weight, double[3].bias))
        ffn.float()
        monkeypatch.setattr(linear, "ONEDNN_LINEAR", False)
        assert not linear.fused_linear_applies(x)
        torch.testing.assert_close(ffn(x), ffn[3](ffn[0](x).relu()))
    monkeypatch.setattr(linear, "ONEDNN_LINEAR", True)
    assert not linear.fused_linear_applies(x)  # autograd on
