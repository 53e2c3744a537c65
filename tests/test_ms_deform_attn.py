"""Multi-scale deformable attention: compiled CPU/CUDA kernels vs the grid_sample reference, dispatch, module.

Imports only torch and crobim_d2.modeling.ops, so it runs where detectron2 is absent (the GPU machine).
"""
import os
import shutil
import warnings

import pytest
import torch

from crobim_d2.modeling.ops import (
    MSDeformAttn,
    cuda_compiled,
    extension_info,
    functions,
    ms_deform_attn,
    ms_deform_attn_pytorch,
)

BUILT = extension_info()["built"]
requires_ext = pytest.mark.skipif(not BUILT, reason="crobim_d2._C not built (test_extension_is_built fails)")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (N, Lq, M, D, P, level shapes): odd sizes, one level, many levels, Deformable DETR's D=32.
CASES = [
    (1, 5, 1, 3, 1, [(7, 5)]),
    (2, 9, 2, 8, 3, [(6, 4), (3, 5)]),
    (1, 4, 2, 4, 2, [(9, 7), (5, 4), (3, 2), (2, 1), (1, 1)]),
    (2, 13, 3, 32, 4, [(12, 10), (6, 5), (3, 3), (1, 2)]),
    (1, 3, 1, 37, 2, [(4, 6)]),
]


def make_inputs(n, lq, m, d, p, shapes, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    s, levels = int(sizes.sum()), len(shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64)
    # Locations in [-0.3, 1.3]: a share of the points falls partly or wholly outside the image.
    loc = torch.rand(n, lq, m, levels, p, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    attn = torch.rand(n, lq, m, levels, p, generator=g, dtype=torch.float64)
    attn = attn / attn.sum((-1, -2), keepdim=True)
    to = {"device": device}
    return (
        value.to(dtype=dtype, **to),
        spatial.to(**to),
        starts.to(**to),
        loc.to(dtype=dtype, **to),
        attn.to(dtype=dtype, **to),
    )


def forward_backward(fn, value, spatial, starts, loc, attn, grad_seed=1):
    leaves = [t.detach().clone().requires_grad_(True) for t in (value, loc, attn)]
    out = fn(leaves[0], spatial, starts, leaves[1], leaves[2])
    g = torch.Generator().manual_seed(grad_seed)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    out.backward(grad_out)
    return [out.detach()] + [t.grad for t in leaves]


def assert_matches_reference(inputs, rtol, atol, ref_inputs=None):
    got = forward_backward(ms_deform_attn, *inputs)
    want = forward_backward(ms_deform_attn_pytorch, *(ref_inputs or inputs))
    for name, a, b in zip(("output", "grad_value", "grad_locations", "grad_weights"), got, want):
        assert a.dtype == inputs[0].dtype, name
        torch.testing.assert_close(a.double().cpu(), b.double().cpu(), rtol=rtol, atol=atol, msg=name)


def test_reference_samples_pixel_centers_and_zero_pads():
    value, spatial, starts, _, _ = make_inputs(1, 1, 1, 2, 1, [(3, 4)])
    # Pixel (row 2, col 1) has its center at x = (1 + 0.5) / 4, y = (2 + 0.5) / 3.
    loc = torch.tensor([1.5 / 4, 2.5 / 3], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    attn = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    out = ms_deform_attn_pytorch(value, spatial, starts, loc, attn)
    torch.testing.assert_close(out.view(-1), value[0, 2 * 4 + 1, 0])
    # x = 0 is half a pixel left of the first column's center: its bilinear weight is 0.5, the rest is padding.
    loc = torch.tensor([0.0, 0.5 / 3], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    torch.testing.assert_close(ms_deform_attn_pytorch(value, spatial, starts, loc, attn).view(-1), 0.5 * value[0, 0, 0])
    loc = torch.tensor([1.3, 0.5], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    assert ms_deform_attn_pytorch(value, spatial, starts, loc, attn).abs().max() == 0


def test_extension_is_built():
    assert BUILT, f"{extension_info()['import_error']}; run `make install` to build the kernels"


def test_extension_exposes_cuda_when_nvcc_was_available():
    nvcc = shutil.which("nvcc") or os.path.exists(os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"))
    if not nvcc:
        pytest.skip("no nvcc on this machine: the CPU-only build is expected")
    assert cuda_compiled(), "nvcc is present but crobim_d2._C has no CUDA kernels; rebuild with `make install`"
    assert callable(functions._C.ms_deform_attn_forward_cuda)
    assert callable(functions._C.ms_deform_attn_backward_cuda)


@requires_ext
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPU cores")
def test_cpu_kernels_run_on_torch_threads():
    # at::parallel_for is a header template: an extension compiled without -fopenmp runs it on one thread.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert functions._C.parallel_threads(8) == 2
        torch.set_num_threads(1)
        assert functions._C.parallel_threads(8) == 1
    finally:
        torch.set_num_threads(threads)


@requires_ext
@pytest.mark.parametrize("case", CASES)
def test_cpu_kernel_matches_reference_double(case):
    assert_matches_reference(make_inputs(*case), rtol=1e-9, atol=1e-10)


@requires_ext
@pytest.mark.parametrize("case", CASES)
def test_cpu_kernel_matches_reference_float(case):
    assert_matches_reference(make_inputs(*case, dtype=torch.float32), rtol=1e-4, atol=1e-4)


@requires_ext
def test_cpu_kernel_is_deterministic_across_threads_and_layouts():
    # Backward partitions grad_value by (batch, head): no races, so any thread count gives the same bits.
    value, spatial, starts, loc, attn = make_inputs(2, 40, 4, 32, 4, [(12, 10), (6, 5)], dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = forward_backward(ms_deform_attn, value, spatial, starts, loc, attn)
        torch.set_num_threads(max(2, threads))
        many = forward_backward(ms_deform_attn, value, spatial, starts, loc, attn)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        assert torch.equal(a, b)
    strided = value.transpose(2, 3).contiguous().transpose(2, 3)  # same values, non-contiguous
    assert not strided.is_contiguous()
    torch.testing.assert_close(ms_deform_attn(strided, spatial, starts, loc, attn), one[0])


@requires_ext
def test_cpu_kernel_gradcheck():
    value, spatial, starts, loc, attn = make_inputs(1, 3, 2, 3, 2, [(4, 3), (2, 2)])
    value, loc, attn = (t.requires_grad_(True) for t in (value, loc, attn))
    assert torch.autograd.gradcheck(
        lambda v, sl, aw: ms_deform_attn(v, spatial, starts, sl, aw), (value, loc, attn), eps=1e-6, atol=1e-5
    )


@requires_ext
def test_cpu_reduced_precision_runs_in_float32_and_keeps_dtype():
    inputs = make_inputs(2, 9, 2, 8, 3, [(6, 4), (3, 5)], dtype=torch.float32)
    want = ms_deform_attn(*inputs)
    value = inputs[0].to(torch.bfloat16).requires_grad_(True)
    out = ms_deform_attn(value, *inputs[1:])
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)
    out.sum().backward()
    assert value.grad.dtype == torch.bfloat16


@requires_ext
@pytest.mark.parametrize("case", CASES)
def test_cpu_bfloat16_forward_kernel(case):
    # Inference under CPU autocast: the kernel reads bfloat16 rows itself and accumulates in float32.
    value, spatial, starts, loc, attn = make_inputs(*case, dtype=torch.float32)
    low = value.to(torch.bfloat16)
    want = ms_deform_attn_pytorch(low.double(), spatial, starts, loc.double(), attn.double())
    got = functions._C.ms_deform_attn_forward(low, spatial, starts, loc, attn)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, rtol=2**-8, atol=1e-5)  # one bfloat16 rounding
    with torch.no_grad():  # the dispatcher takes this kernel when no gradient is needed
        assert torch.equal(ms_deform_attn(low, spatial, starts, loc, attn), got)
    with pytest.raises(RuntimeError, match="float32/float64"):
        functions._C.ms_deform_attn_backward(low, spatial, starts, loc, attn, torch.ones_like(got))


def test_module_locations_are_reference_plus_offsets_over_level_size():
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=3)
    nn_init = torch.nn.init
    nn_init.normal_(module.sampling_offsets.weight, std=0.5)
    nn_init.normal_(module.attention_weights.weight)
    value, spatial, starts, _, _ = make_inputs(2, 1, 1, 16, 1, [(8, 6), (4, 3)], dtype=torch.float32)
    flat, query, ref = value.view(2, -1, 16), torch.randn(2, 5, 16), torch.rand(2, 5, 2, 2)
    offsets = module.sampling_offsets(query).view(2, 5, 2, 2, 3, 2)
    weights = module.attention_weights(query).view(2, 5, 2, 6).softmax(-1).view(2, 5, 2, 2, 3)
    size_xy = spatial.flip(-1).float()  # (W_l, H_l)
    loc = ref[:, :, None, :, None, :] + offsets / size_xy[None, None, None, :, None, :]
    want = ms_deform_attn_pytorch(module.value_proj(flat).view(2, -1, 2, 8), spatial, starts, loc, weights)
    torch.testing.assert_close(module(query, ref, flat, spatial, starts), module.output_proj(want))


@pytest.mark.parametrize("impl", ["auto", "pytorch"])
def test_module_shapes_and_autocast(impl):
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3, impl=impl)
    value, spatial, starts, _, _ = make_inputs(2, 1, 1, 32, 1, [(8, 6), (4, 3)], dtype=torch.float32)
    query = torch.randn(2, 7, 32)
    ref = torch.rand(2, 7, 2, 2)
    flat = value.view(2, -1, 32)
    out = attn(query, ref, flat, spatial, starts)
    assert out.shape == (2, 7, 32)
    boxes = attn(query, torch.rand(2, 7, 2, 4), flat, spatial, starts, torch.zeros(2, flat.shape[1], dtype=torch.bool))
    assert boxes.shape == (2, 7, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = attn(query, ref, flat, spatial, starts)
    assert low.shape == out.shape and torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), out, rtol=0.1, atol=0.1)


def test_module_attention_weights_are_a_float32_softmax_under_autocast(monkeypatch):
    """Under bfloat16 autocast the kernel gets float32 attention weights computed from the logits in float32,
    not bfloat16 weights widened again."""
    from crobim_d2.modeling.ops import modules

    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3)
    torch.nn.init.normal_(attn.attention_weights.weight)
    value, spatial, starts, _, _ = make_inputs(1, 1, 1, 32, 1, [(8, 6), (4, 3)], dtype=torch.float32)
    query, ref, flat = torch.randn(1, 7, 32), torch.rand(1, 7, 2, 2), value.view(1, -1, 32)
    seen = []
    kernel = modules.IMPLEMENTATIONS["auto"]
    monkeypatch.setitem(modules.IMPLEMENTATIONS, "auto", lambda *a: seen.append(a[4]) or kernel(*a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn(query, ref, flat, spatial, starts)
        logits = attn.sampling_projections(query)[1]
    assert logits.dtype == torch.bfloat16 and seen[0].dtype == torch.float32
    want = logits.float().view(1, 7, 4, 6).softmax(-1).view(seen[0].shape)
    torch.testing.assert_close(seen[0], want, rtol=0, atol=1e-6)


def test_module_init_follows_deformable_detr():
    attn = MSDeformAttn(d_model=64, n_levels=3, n_heads=8, n_points=4)
    bias = attn.sampling_offsets.bias.view(8, 3, 4, 2)
    # Head 0 points along +x, head 2 along +y; point i at distance i + 1, the same on every level.
    torch.testing.assert_close(bias[0, 1, :, 0], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(bias[2, 0, 3], torch.tensor([0.0, 4.0]), atol=1e-6, rtol=0)
    assert attn.sampling_offsets.weight.abs().max() == 0
    assert attn.attention_weights.weight.abs().max() == 0 and attn.attention_weights.bias.abs().max() == 0
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=30, n_heads=8)
    with pytest.raises(ValueError, match="impl"):
        MSDeformAttn(impl="cuda")


class _RaisingExtension:
    def with_cuda(self):
        return False

    def ms_deform_attn_forward(self, *args):
        raise RuntimeError("kernel called")


def test_dispatch_selects_reference_for_pytorch_impl(monkeypatch):
    monkeypatch.setattr(functions, "_C", _RaisingExtension())
    value, spatial, starts, _, _ = make_inputs(1, 1, 1, 16, 1, [(5, 4)], dtype=torch.float32)
    args = (torch.randn(1, 3, 16), torch.rand(1, 3, 1, 2), value.view(1, -1, 16), spatial, starts)
    assert MSDeformAttn(16, 1, 2, 2, impl="pytorch")(*args).shape == (1, 3, 16)
    with pytest.raises(RuntimeError, match="kernel called"):
        MSDeformAttn(16, 1, 2, 2, impl="auto")(*args)


def test_dispatch_warns_once_without_extension(monkeypatch):
    monkeypatch.setattr(functions, "_C", None)
    monkeypatch.setattr(functions, "_warned", set())
    inputs = make_inputs(1, 4, 2, 4, 2, [(5, 4), (2, 3)])
    with pytest.warns(RuntimeWarning, match="make install"):
        out = ms_deform_attn(*inputs)
    torch.testing.assert_close(out, ms_deform_attn_pytorch(*inputs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ms_deform_attn(*inputs)


def test_bad_inputs_name_the_problem():
    value, spatial, starts, loc, attn = make_inputs(1, 2, 1, 4, 1, [(3, 3), (2, 2)])
    with pytest.raises(ValueError, match="level_start_index"):
        ms_deform_attn(value, spatial, torch.tensor([0, 4]), loc, attn)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, spatial, starts, loc, attn[..., :0])
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn(value[:, :-1], spatial, starts, loc, attn)


@requires_cuda
@requires_ext
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(
    "dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 6e-2)]
)
def test_cuda_kernel_matches_reference(case, dtype, tol):
    assert cuda_compiled(), "crobim_d2._C has no CUDA kernels; rebuild with `make install` on a machine with nvcc"
    inputs = make_inputs(*case, dtype=dtype, device="cuda")
    # The reference sees the same rounded values in float64; locations/weights stay float32 in the kernel.
    ref_inputs = make_inputs(*case, dtype=dtype)
    ref_inputs = [t.double() if t.is_floating_point() else t for t in ref_inputs]
    got = forward_backward(ms_deform_attn, *inputs)
    want = forward_backward(ms_deform_attn_pytorch, *ref_inputs)
    scale = max(1.0, float(want[2].abs().max()))
    for name, a, b in zip(("output", "grad_value", "grad_locations", "grad_weights"), got, want):
        atol = tol * (scale if name == "grad_locations" else 1.0)
        torch.testing.assert_close(a.double().cpu(), b, rtol=tol, atol=atol, msg=name)


@requires_cuda
@requires_ext
def test_cuda_kernel_gradcheck_and_autocast():
    value, spatial, starts, loc, attn = make_inputs(1, 3, 2, 3, 2, [(4, 3), (2, 2)], device="cuda")
    value, loc, attn = (t.requires_grad_(True) for t in (value, loc, attn))
    assert torch.autograd.gradcheck(
        lambda v, sl, aw: ms_deform_attn(v, spatial, starts, sl, aw), (value, loc, attn), eps=1e-6, atol=1e-5
    )
    module = MSDeformAttn(d_model=64, n_levels=2, n_heads=2, n_points=4).cuda()
    flat = torch.randn(2, 12 + 4, 64, device="cuda")
    args = (torch.randn(2, 5, 64, device="cuda"), torch.rand(2, 5, 2, 2, device="cuda"), flat, spatial, starts)
    want = module(*args)
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            out = module(*args)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), want, rtol=5e-2, atol=5e-2)
