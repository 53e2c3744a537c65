"""load_inference_config: the one config loader of the inference entry points, and its checks."""

import pytest
import torch
from _tiny_train_config import CONFIG, TINY_OPTS

from crobim_d2.inference import ConfigError, load_inference_config


def test_loads_merges_overrides_and_freezes(tmp_path):
    cfg = load_inference_config(CONFIG, [*TINY_OPTS, "INPUT.MAX_TOKENS", "7"], weights="", device="cpu")
    assert cfg.is_frozen() and cfg.INPUT.IMAGE_SIZE == 64 and cfg.INPUT.MAX_TOKENS == 7
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.META_ARCHITECTURE == "CroBIM"


def test_device_defaults_to_what_the_machine_has(tmp_path):
    config = tmp_path / "gpu.yaml"
    config.write_text(f'_BASE_: "{CONFIG}"\nMODEL:\n  DEVICE: "cuda"\n')
    cfg = load_inference_config(str(config), TINY_OPTS)
    assert cfg.MODEL.DEVICE == ("cuda" if torch.cuda.is_available() else "cpu")
    assert load_inference_config(str(config), [*TINY_OPTS, "MODEL.DEVICE", "cpu"]).MODEL.DEVICE == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_a_clear_error():
    with pytest.raises(ConfigError, match="MODEL.DEVICE='cuda' but this machine has no usable CUDA device"):
        load_inference_config(CONFIG, TINY_OPTS, device="cuda")


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="Config file not found"):
        load_inference_config(str(tmp_path / "none.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  NOT_A_KEY: 1\n")
    with pytest.raises(ConfigError, match="Cannot use config .*NOT_A_KEY"):
        load_inference_config(str(bad))
    with pytest.raises(ConfigError, match="Cannot use config .*INPUT.NOT_A_KEY"):
        load_inference_config(CONFIG, ["INPUT.NOT_A_KEY", "1"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_inference_config(CONFIG, ["INPUT.IMAGE_SIZE"])
    with pytest.raises(ConfigError, match="MODEL.WEIGHTS=.*does not exist"):
        load_inference_config(CONFIG, weights=str(tmp_path / "missing.pth"))
