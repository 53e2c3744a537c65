"""The arithmetic of the benchmarks (benchmarks/model.py, benchmarks/gpu_model.py), not their timings."""
import os
import sys

import pytest

from crobim_d2.modeling.layers import linear

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import gpu_model
import model as model_bench


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_interleaved_ratio_is_the_median_of_per_round_ratios(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(model_bench.time, "perf_counter", clock)
    crobim = iter([9.0, 2.0, 5.0, 4.0])  # the first round is the warm-up
    floor = iter([{"backbone": 1.0, "bert": 1.0}, {"backbone": 2.0, "bert": 0.0},
                  {"backbone": 1.5, "bert": 0.5}, {"backbone": 1.0, "bert": 0.0}])

    def crobim_step():
        clock.now += next(crobim)

    result = model_bench.interleaved(crobim_step, lambda: next(floor), repeats=3)
    assert result["ratios"] == [1.0, 2.5, 4.0]
    assert result["ratio"] == 2.5  # the ratio of the medians would be 4.0 / 2.0
    assert result["crobim"] == 4.0 and result["floor"] == 2.0 and result["backbone"] == 1.5
    assert result["crobim_seconds_all_rounds"] == 20.0
    assert "ratio_onednn" not in result  # a floor without the oneDNN backbone


def test_interleaved_also_ratios_against_the_onednn_backbone(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(model_bench.time, "perf_counter", clock)
    crobim = iter([9.0, 3.0, 6.0])
    floor = iter([{"backbone": 1.0, "backbone_onednn": 1.0, "bert": 1.0},
                  {"backbone": 2.0, "backbone_onednn": 1.0, "bert": 1.0},
                  {"backbone": 4.0, "backbone_onednn": 2.0, "bert": 1.0}])

    def crobim_step():
        clock.now += next(crobim)

    result = model_bench.interleaved(crobim_step, lambda: next(floor), repeats=2)
    assert result["ratios"] == [1.0, 6.0 / 5.0]  # the floor is backbone + BERT, not the oneDNN backbone too
    assert result["ratios_onednn"] == [1.5, 2.0] and result["ratio_onednn"] == 1.75
    assert result["floor_onednn"] == 2.5 and result["backbone_onednn"] == 1.5


def test_cpu_line_says_emulated(monkeypatch):
    for k in model_bench.EMULATION_VARIABLES:
        monkeypatch.delenv(k, raising=False)
    assert "emulated" not in model_bench.cpu_line(2)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    line = model_bench.cpu_line(2)
    assert "emulated: ATEN_CPU_CAPABILITY=avx2" in line and line.endswith("2 threads")


def test_choose_batch_fits_a_line_through_the_probes():
    probes = [{"batch": 4, "peak_mib": 10_000.0}, {"batch": 8, "peak_mib": 14_000.0}]  # 1000 MiB per image
    # fixed 6000 MiB + AdamW moments 2 * 1000; 80% of 100_000 MiB leaves 72 images -> 72
    assert gpu_model.choose_batch(probes, param_mib=1000.0, total_mib=100_000.0, max_batch=256) == 72
    assert gpu_model.choose_batch(probes, param_mib=1000.0, total_mib=100_000.0, max_batch=64) == 64
    assert gpu_model.choose_batch(probes, param_mib=1000.0, total_mib=12_000.0, max_batch=256) == 8  # at least 8
    assert gpu_model.choose_batch(probes, param_mib=1000.0, total_mib=None, max_batch=6) == 6  # no GPU


@pytest.mark.parametrize("shares,expected", [([0.6, 0.9], True), ([0.3, 0.4], False), ([], None)])
def test_msda_goal(shares, expected):
    rows = [{"impl": "kernel", "fwd_bwd_copy_share": s} for s in shares]
    report = {"msda": {"rows": rows} if rows else None, "train": [{"dtype": "bfloat16", "images_per_s": 120.0}]}
    assert gpu_model.goals_met(report) == {"msda_fwd_bwd_copy_share": expected, "train_bf16_images_per_s": True}


def test_model_opts_are_key_value_pairs_and_reach_the_model(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["model.py", "--opts", "MODEL.CROBIM.MID_FFN_DIM"])
    with pytest.raises(SystemExit) as exit_info:
        model_bench.main()
    assert exit_info.value.code == 2 and "KEY VALUE pairs" in capsys.readouterr().err
    model, cfg = model_bench.build(model_bench.CONFIGS["swin_b"], opts=["MODEL.CROBIM.MID_FFN_DIM", "256"])
    assert cfg.MODEL.CROBIM.MID_FFN_DIM == 256 and model.mid.layers[0].vis_ffn[0].out_features == 256


def test_flop_count_includes_the_cpu_attention_kernel():
    import types

    import torch
    import torch.nn.functional as F

    q = torch.randn(1, 2, 10, 8, requires_grad=True)
    floor = types.SimpleNamespace(
        backbone=types.SimpleNamespace(forward_features=lambda x: x @ x), images=torch.randn(4, 4),
        bert=lambda input_ids, attention_mask: None, tokens=None, mask=None,
    )
    counts = model_bench.count_gflop(lambda inputs: F.scaled_dot_product_attention(q, q, q), floor, [])
    assert counts["crobim"] * 1e9 == 2 * 2 * (2 * 10 * 10 * 8)  # Q K^T and P V
    assert counts["backbone"] * 1e9 == 2 * 4**3 and counts["bert"] == 0


@pytest.mark.skipif(not linear.ONEDNN_LINEAR, reason="torch built without oneDNN")
def test_flop_count_includes_onednn_linear_layers(monkeypatch):
    """CroBIM's encoders run their linear layers through oneDNN's op on AVX-512 CPUs: the count has them."""
    import types

    import torch

    monkeypatch.setattr(linear, "_avx512", lambda: True)
    layer = linear.OneDNNLinear(8, 5)
    x = torch.randn(3, 7, 8)
    floor = types.SimpleNamespace(
        backbone=types.SimpleNamespace(forward_features=lambda x: x @ x), images=torch.randn(2, 2),
        bert=lambda input_ids, attention_mask: None, tokens=None, mask=None,
    )
    counts = model_bench.count_gflop(lambda inputs: layer(x), floor, [])
    assert counts["crobim"] * 1e9 == 2 * 3 * 7 * 8 * 5


FLUSH_PROBE = """
import sys, torch
sys.path.insert(0, {bench!r})
import model
torch.set_num_threads(2)
if {pool_first}:
    (torch.ones(1 << 20) * 2).sum()  # a parallel operation creates the intra-op pool
print(model.flush_denormals())
"""


@pytest.mark.skipif(not __import__("torch").set_flush_denormal(False), reason="flush-to-zero needs an x86 CPU")
@pytest.mark.parametrize("pool_first,expected", [(False, "all threads"), (True, "calling thread only")])
def test_flush_denormals_reaches_every_thread_or_says_it_did_not(pool_first, expected):
    """Set before the pool exists, every intra-op thread inherits it; set after, the check sees the thread
    that kept denormals (each in a fresh process: the setting is per thread and for the process's life)."""
    import subprocess

    bench = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
    code = FLUSH_PROBE.format(bench=os.path.abspath(bench), pool_first=pool_first)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, OMP_NUM_THREADS="2")).stdout
    assert out.strip().splitlines()[-1] == expected


def test_flush_denormals_says_unsupported_where_torch_cannot_set_it(monkeypatch):
    """Not an x86 CPU: the worker times with denormals kept and says so, instead of stopping."""
    import torch

    monkeypatch.setattr(torch, "set_flush_denormal", lambda on: False)
    assert model_bench.flush_denormals() == "unsupported"
