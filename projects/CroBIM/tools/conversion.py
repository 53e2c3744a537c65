"""Shared steps of the checkpoint converters: read an official checkpoint, build the target backbone from a
config, check the converted keys against it, report what did not match, and save a Detectron2 checkpoint."""
import argparse
import os
from collections.abc import Callable

import torch
from detectron2.modeling import Backbone, build_backbone

from crobim_d2.inference import load_inference_config

MISMATCH = "The checkpoint does not match the backbone of --config-file/--opts; describe its architecture there"
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def argument_parser(description: str, default_config: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("input", help="official checkpoint (.pth)")
    parser.add_argument("output", help="converted checkpoint for MODEL.WEIGHTS (.pth)")
    parser.add_argument(
        "--config-file",
        default=os.path.join(REPO, default_config),
        help="config whose backbone the weights are for (default: %(default)s)",
    )
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return parser


def build_target_backbone(config_file: str, opts: list[str]) -> Backbone:
    # Only the architecture: MODEL.WEIGHTS of the config is often the file this tool is about to write.
    return build_backbone(load_inference_config(config_file, opts, weights="", device="cpu"))


def load_official(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path} not found; pass the downloaded official .pth file.")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "module"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
    return ckpt


def convert(
    official: dict[str, torch.Tensor],
    backbone: Backbone,
    trunk: str,
    filter_fn: Callable[[dict, torch.nn.Module], dict],
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Map ``official`` to the backbone's keys (``<trunk>.<timm key>``, prefixed ``backbone.``).

    Returns the converted state dict and a report: ``unused`` (checkpoint entries the backbone has no place
    for, e.g. the classifier), ``missing`` (backbone entries the checkpoint lacks; they keep their
    initialization, e.g. the per-stage output norms).
    """
    try:
        timm_sd = filter_fn(dict(official), getattr(backbone, trunk))
    except (RuntimeError, KeyError) as e:
        raise ValueError(f"{MISMATCH} ({type(e).__name__}: {e})") from e
    target = backbone.state_dict()
    converted, unused = {}, []
    for key, value in timm_sd.items():
        name = f"{trunk}.{key}"
        if name not in target:
            unused.append(key)
            continue
        if value.shape != target[name].shape:
            raise ValueError(
                f"{MISMATCH}: {key} has shape {tuple(value.shape)}, the backbone {tuple(target[name].shape)}."
            )
        converted[f"backbone.{name}"] = value
    missing = [k for k in target if f"backbone.{k}" not in converted]
    return converted, {"unused": sorted(unused), "missing": sorted(missing)}


def save(path: str, state_dict: dict[str, torch.Tensor], author: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"model": state_dict, "__author__": author, "matching_heuristics": False}, path)


def print_report(report: dict[str, list[str]], num_converted: int, output: str) -> None:
    print(f"Wrote {num_converted} tensors to {output}.")
    print(f"Checkpoint entries not used ({len(report['unused'])}): {', '.join(report['unused']) or '-'}")
    print(
        f"Backbone entries not in the checkpoint, kept at initialization ({len(report['missing'])}): "
        f"{', '.join(report['missing']) or '-'}"
    )
