"""Shared blocks: the attention module (and its precision policy), position encodings, stage names."""

import pytest
import torch
import torch.nn.functional as F

from crobim_d2.modeling.layers import (
    Attention,
    cell_centres,
    cell_position_encoding,
    fold_heads,
    scaled_dot_product_attention,
    sine_position_encoding,
    stage_indices,
)


def mha_and_attention(dim: int = 32, heads: int = 4) -> tuple[torch.nn.MultiheadAttention, Attention]:
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    attn = Attention(dim, heads).eval()
    attn.load_state_dict(mha.state_dict(), strict=True)  # nn.MultiheadAttention's layout loads
    return mha, attn


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross-with-key-mask"])
def test_attention_loads_and_equals_multihead_attention(cross):
    mha, attn = mha_and_attention()
    query = torch.randn(3, 21, 32)
    key = torch.randn(3, 9, 32) if cross else query
    mask = torch.rand(3, key.shape[1], generator=torch.Generator().manual_seed(1)) > 0.3 if cross else None
    if mask is not None:
        mask[:, 0] = True
    want = mha(query, key, key, key_padding_mask=None if mask is None else ~mask, need_weights=False)[0]
    torch.testing.assert_close(attn(query, key, key, mask), want, rtol=1e-5, atol=1e-6)
    assert sorted(attn.state_dict()) == sorted(
        f"{p}.{t}" for p in ("q", "k", "v", "out") for t in ("weight", "bias")
    )


@pytest.mark.parametrize("with_mask", [False, True])
def test_few_query_attention_equals_projected_attention(with_mask):
    """MID's language queries skip projecting the ~19k keys and values (Attention.few_queries): same result as
    projecting them, whatever the key bias (it cancels in the softmax)."""
    torch.manual_seed(0)
    few = Attention(64, 8, few_queries=True).double()
    full = Attention(64, 8).double()
    with torch.no_grad():
        for name in ("q", "k", "v", "out"):
            getattr(full, name).weight.copy_(getattr(few, name).weight)
        for name in ("q", "v", "out"):
            getattr(full, name).bias.copy_(getattr(few, name).bias)
        full.k.bias.normal_()
    assert few.k.bias is None
    query = torch.randn(2, 5, 64, dtype=torch.double, requires_grad=True)
    key, value = torch.randn(2, 2, 50, 64, dtype=torch.double, requires_grad=True)
    mask = torch.rand(2, 50, generator=torch.Generator().manual_seed(1)) > 0.3 if with_mask else None
    expected = full(query, key, value, mask)
    want = torch.autograd.grad(
        expected.square().sum(), [query, key, value, full.q.weight, full.k.weight, full.v.weight]
    )
    out = few(query, key, value, mask)
    got = torch.autograd.grad(out.square().sum(), [query, key, value, few.q.weight, few.k.weight, few.v.weight])
    assert torch.allclose(out, expected, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(got, want))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_few_query_and_few_key_attention_on_cuda_equal_the_cpu():
    """On CUDA, few_queries runs the attention kernel (the CPU runs two matrix products): same result."""
    torch.manual_seed(0)
    for module, t in ((Attention(64, 8, fp32=True, few_queries=True), 300), (Attention(64, 8, few_keys=True), 6)):
        query, key = torch.randn(2, 300 if t == 6 else 5, 64), torch.randn(2, t, 64)
        mask = torch.ones(2, t, dtype=torch.bool)
        mask[0, t // 2:] = False
        want = module(query, key, key, mask)
        got = module.cuda()(query.cuda(), key.cuda(), key.cuda(), mask.cuda()).cpu()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_fold_heads_is_the_block_diagonal_product():
    """Row (m, t) of fold_heads(x, W) is W applied to x[:, t, m] placed in head m's columns, zeros elsewhere."""
    torch.manual_seed(0)
    x, weight = torch.randn(2, 3, 4, 5, dtype=torch.double), torch.randn(7, 20, dtype=torch.double)
    padded = torch.zeros(2, 4, 3, 20, dtype=torch.double)
    for m in range(4):
        padded[:, m, :, 5 * m:5 * (m + 1)] = x[:, :, m]
    expected = padded.reshape(2, 12, 20) @ weight.t()
    assert torch.allclose(fold_heads(x, weight), expected, atol=1e-12)
    assert fold_heads(x, weight[:1]).shape == (2, 12, 1)


def few_key_pair(tokens_dim: int = 64, heads: int = 8, dropout: float = 0.0) -> tuple[Attention, Attention]:
    torch.manual_seed(0)
    folded = Attention(tokens_dim, heads, dropout, few_keys=True).double()
    projected = Attention(tokens_dim, heads, dropout).double()
    with torch.no_grad():
        for p in folded.parameters():
            p.normal_(std=0.3)
    projected.load_state_dict(folded.state_dict(), strict=True)
    return folded, projected


@pytest.mark.parametrize("with_mask", [False, True])
def test_few_key_attention_equals_projected_attention(with_mask, monkeypatch):
    """MID's visual tokens reading the words fold the query and output projections through the few keys
    (Attention.few_keys): same output and gradients as projecting the queries, without the attention kernel."""
    folded, projected = few_key_pair()
    query = torch.randn(2, 40, 64, dtype=torch.double, requires_grad=True)
    words = torch.randn(2, 6, 64, dtype=torch.double, requires_grad=True)  # 6 * (8 - 1) < 64: folded
    mask = torch.tensor([[1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool) if with_mask else None
    expected = projected(query, words, words, mask)
    want = torch.autograd.grad(expected.square().sum(), [query, words, *projected.parameters()])

    def no_kernel(*args, **kwargs):
        raise AssertionError("the folded form runs no attention kernel")

    monkeypatch.setattr(F, "scaled_dot_product_attention", no_kernel)
    out = folded(query, words, words, mask)
    got = torch.autograd.grad(out.square().sum(), [query, words, *folded.parameters()])
    assert torch.allclose(out, expected, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(got, want))


def test_few_key_attention_projects_when_the_keys_are_many_and_drops_out_in_training():
    folded, projected = few_key_pair(dropout=0.5)
    folded.eval(), projected.eval()
    query, words = torch.randn(1, 30, 64, dtype=torch.double), torch.randn(1, 10, 64, dtype=torch.double)
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(F, "scaled_dot_product_attention", spy)
        out = folded(query, words, words)  # 10 * (8 - 1) >= 64: folding would cost more
    assert calls and torch.allclose(out, projected(query, words, words), atol=1e-12)
    few = words[:, :4]
    folded.train()
    torch.manual_seed(3)
    dropped = folded(query, few, few)
    assert torch.isfinite(dropped).all() and not torch.allclose(dropped, projected(query, few, few))
    folded.eval()
    assert torch.allclose(folded(query, few, few), projected(query, few, few), atol=1e-12)
    with pytest.raises(ValueError, match="few_keys does not combine"):
        Attention(64, 8, few_keys=True, fp32=True)


def test_few_key_attention_under_bf16_autocast_agrees_with_float32():
    folded, projected = few_key_pair()
    folded.float(), projected.float()
    query, words = torch.randn(2, 50, 64), torch.randn(2, 5, 64)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 3:] = False
    want = projected(query, words, words, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = folded(query, words, words, mask)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want, rtol=0, atol=0.03 * want.abs().max().item())


def test_cpu_bfloat16_attention_runs_in_float32():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 16, dtype=torch.bfloat16, requires_grad=True) for n in (30, 7, 7))
    mask = torch.rand(2, 1, 1, 7) > 0.3
    mask[..., 0] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.dtype == torch.bfloat16
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    assert torch.equal(out, expected.to(torch.bfloat16))  # float32 math, one rounding at the end
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))
    q32 = q.detach().float()
    assert torch.equal(
        scaled_dot_product_attention(q32, q32, q32), F.scaled_dot_product_attention(q32, q32, q32)
    )


def test_attention_rejects_a_width_that_heads_do_not_divide():
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        Attention(32, 3)


def test_cell_centres_and_encodings():
    centres = cell_centres(2, 4, torch.device("cpu"))
    assert centres.shape == (8, 2)
    assert torch.equal(centres[1], torch.tensor([0.375, 0.25]))  # row 0, column 1: (x, y)
    assert torch.equal(centres[4], torch.tensor([0.125, 0.75]))  # row 1, column 0
    enc = sine_position_encoding(2, 4, 16, torch.device("cpu"))
    assert enc.shape == (8, 16) and sine_position_encoding(2, 4, 16, torch.device("cpu")) is enc  # cached
    assert torch.equal(enc[0, 8:], enc[4, 8:]) and not torch.equal(enc[0, :8], enc[4, :8])  # x half, y half
    cell = cell_position_encoding(2, 2, 10, torch.zeros((), dtype=torch.bfloat16))
    assert cell.shape == (4, 10) and cell.dtype == torch.bfloat16 and cell[:, 8:].abs().sum() == 0  # padded
    assert len({tuple(row.tolist()) for row in cell}) == 4  # every token of the cell is told apart


def test_stage_indices_names_the_key():
    names = ["res2", "res3", "res4", "res5"]
    assert stage_indices(["res5", "res3"], names, "MODEL.CROBIM.CAPM_SCALES") == [1, 3]
    with pytest.raises(ValueError, match=r"MODEL\.CROBIM\.ADC_STAGES names \['p6'\]"):
        stage_indices(["p6"], names, "MODEL.CROBIM.ADC_STAGES")
