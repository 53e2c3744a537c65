"""Convert an SMLFR ConvNeXt checkpoint (HIT-SIRS/SMLFR: the self-supervised ConvNeXt-B the paper uses) to what
``D2ConvNeXt`` loads through ``MODEL.WEIGHTS``, reporting entries that did not match.

    python projects/CroBIM/tools/convert_smlfr.py convnext_base_1kpretrained_timm_style.pth \
        pretrained/convnext_base_smlfr_d2.pth

SMLFR (built on SparK) pre-trains a sparse ConvNeXt whose parameters carry the official ConvNeXt names
(``downsample_layers.*``, ``stages.{i}.{j}.{dwconv,norm,pwconv1,pwconv2,gamma}``), without the final norm and
the classifier. Its pre-training saves them twice: alone as a plain state dict
(``<model>_1kpretrained_timm_style.pth``), and with the reconstruction decoder under ``module`` with the
prefix ``sparse_encoder.sp_cnn.`` (``<model>_withdecoder_1kpretrained_pcfm_style.pth``). Both convert; the
decoder, densify layers, mask tokens and buffers of the second are reported as not used. The ConvNeXt names
then map as in ``convert_convnext.py`` (timm's ``checkpoint_filter_fn``).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conversion import argument_parser, build_target_backbone, convert, load_official, print_report, save
from timm.models.convnext import checkpoint_filter_fn

ENCODER_PREFIX = "sparse_encoder.sp_cnn."


def smlfr_encoder(checkpoint: dict) -> tuple[dict, list[str]]:
    """The ConvNeXt entries of an SMLFR checkpoint (prefix removed) and the names of the other entries."""
    if any(k.startswith(ENCODER_PREFIX) for k in checkpoint):
        encoder = {k[len(ENCODER_PREFIX):]: v for k, v in checkpoint.items() if k.startswith(ENCODER_PREFIX)}
        rest = sorted(k for k in checkpoint if not k.startswith(ENCODER_PREFIX))
    else:
        encoder, rest = dict(checkpoint), []
    if not any(k.startswith("downsample_layers.") for k in encoder):
        raise ValueError(
            "Not an SMLFR ConvNeXt checkpoint: it has no downsample_layers.* (or "
            f"{ENCODER_PREFIX}downsample_layers.*) entries; pass SMLFR's *_1kpretrained_timm_style.pth or "
            "*_withdecoder_1kpretrained_pcfm_style.pth (official ConvNeXt checkpoints: convert_convnext.py)."
        )
    return encoder, rest


def main(argv: list[str] | None = None) -> dict[str, list[str]]:
    args = argument_parser(
        __doc__.splitlines()[0], "projects/CroBIM/configs/rrsisd/crobim_convnext_b.yaml"
    ).parse_args(argv)
    encoder, pretraining = smlfr_encoder(load_official(args.input))
    backbone = build_target_backbone(args.config_file, ["MODEL.BACKBONE.NAME", "D2ConvNeXt", *args.opts])
    converted, report = convert(encoder, backbone, "convnext", checkpoint_filter_fn)
    report["unused"] = sorted(report["unused"] + pretraining)
    save(args.output, converted, "crobim_d2 convert_smlfr.py")
    print_report(report, len(converted), args.output)
    return report


if __name__ == "__main__":
    main()
