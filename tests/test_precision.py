"""The precision policy (crobim_d2/precision.py) for training and inference, with the CPU probe patched."""
import logging
import warnings

import pytest
import torch
from _tiny_train_config import tiny_cfg
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from test_meta_arch import make_inputs

from crobim_d2 import precision
from crobim_d2.engine import AutocastTrainer, build_step_trainer


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set whether the CPU "has" native bfloat16; the policy's once-only reports start afresh."""
    monkeypatch.setattr(precision, "_reported", set())

    def set_native(native: bool) -> None:
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)

    return set_native


@pytest.mark.parametrize("native, expected", [(False, None), (True, torch.bfloat16)])
def test_auto_follows_the_cpu(cpu_bf16, native, expected):
    cpu_bf16(native)
    assert precision.autocast_dtype("cpu") is expected
    assert precision.autocast_dtype("cpu", purpose="training", key="SOLVER.AMP.DTYPE") is expected
    assert precision.autocast_dtype("cpu", "float32") is None


@pytest.mark.parametrize("native, amx, expected", [
    (False, True, "native bfloat16 no"), (True, False, "native bfloat16 yes"),
    (True, True, "native bfloat16 yes (AMX)"),
])
def test_describe_cpu_names_native_bfloat16_and_amx(cpu_bf16, monkeypatch, native, amx, expected):
    cpu_bf16(native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert precision.describe_cpu() == f"{precision.cpu_capability()}, {expected}"


def _step_trainer(native_opts):
    cfg = tiny_cfg("SOLVER.AMP.ENABLED", "True", *native_opts)
    model = build_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    return build_step_trainer(cfg, model, [], optimizer)


@pytest.mark.parametrize("native", [False, True])
def test_training_precision_follows_the_cpu(cpu_bf16, native):
    cpu_bf16(native)
    trainer = _step_trainer([])
    if native:
        assert isinstance(trainer, AutocastTrainer) and trainer.dtype == torch.bfloat16
    else:
        assert type(trainer) is SimpleTrainer  # plain float32 steps


def _feature_dtype(model) -> torch.dtype:
    """The dtype of the backbone's first convolution in an inference forward (bfloat16 under autocast)."""
    seen = []
    conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda _m, _args, out: seen.append(out.dtype))
    try:
        model.eval()
        with torch.no_grad():
            out = model(make_inputs(1, size=64))
    finally:
        handle.remove()
    assert out[0]["ref_seg"].dtype == torch.float32  # probabilities stay float32 either way
    return seen[0]


@pytest.mark.parametrize("native, expected", [(False, torch.float32), (True, torch.bfloat16)])
def test_inference_auto_follows_the_cpu(cpu_bf16, native, expected):
    cpu_bf16(native)
    model = build_model(tiny_cfg("MODEL.CROBIM.INFERENCE_DTYPE", "auto"))
    assert _feature_dtype(model) == expected


def test_auto_is_the_default_and_logs_its_choice_once(cpu_bf16, caplog):
    cpu_bf16(False)
    cfg = tiny_cfg()
    cfg.merge_from_list(["MODEL.CROBIM.INFERENCE_DTYPE", precision.PRECISIONS[0]])
    assert cfg.MODEL.CROBIM.INFERENCE_DTYPE == "auto"
    model = build_model(cfg)
    with caplog.at_level(logging.INFO, logger="crobim_d2.precision"):
        _feature_dtype(model)
        _feature_dtype(model)
    lines = [r.getMessage() for r in caplog.records if r.name == "crobim_d2.precision"]
    assert len(lines) == 1 and "float32" in lines[0] and "no native bfloat16" in lines[0]


def test_explicit_bfloat16_on_a_cpu_without_it_runs_with_a_warning(cpu_bf16):
    cpu_bf16(False)
    model = build_model(tiny_cfg("MODEL.CROBIM.INFERENCE_DTYPE", "bfloat16"))
    with pytest.warns(UserWarning, match=r"MODEL\.CROBIM\.INFERENCE_DTYPE='bfloat16'.*'auto'.*'float32'"):
        assert _feature_dtype(model) == torch.bfloat16
    with pytest.warns(UserWarning, match=r"SOLVER\.AMP\.DTYPE='bfloat16'"):
        trainer = _step_trainer(["SOLVER.AMP.DTYPE", "bfloat16"])
    assert isinstance(trainer, AutocastTrainer) and trainer.dtype == torch.bfloat16


def test_explicit_bfloat16_on_a_native_cpu_is_silent(cpu_bf16):
    cpu_bf16(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.autocast_dtype("cpu", "bfloat16") == torch.bfloat16


def test_unknown_precision_names_the_key():
    with pytest.raises(ValueError, match=r"SOLVER\.AMP\.DTYPE='half'.*auto"):
        precision.autocast_dtype("cpu", "half", key="SOLVER.AMP.DTYPE")
