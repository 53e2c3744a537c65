"""Convert an official ConvNeXt checkpoint (e.g. convnext_base_22k_224.pth) to what ``D2ConvNeXt`` loads
through ``MODEL.WEIGHTS``, reporting entries that did not match (SMLFR's ConvNeXt-B: convert_smlfr.py).

    python projects/CroBIM/tools/convert_convnext.py convnext_base_22k_224.pth pretrained/convnext_base_22k_d2.pth

timm's ``checkpoint_filter_fn`` renames ``downsample_layers.{i}`` to ``stem`` / ``stages.{i}.downsample``,
``stages.{i}.{j}`` to ``stages.{i}.blocks.{j}``, ``dwconv``/``pwconv`` to ``conv_dw``/``mlp.fc``. The classifier
``head`` and the final ``norm`` are not used (the backbone has one new norm per returned stage).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conversion import argument_parser, build_target_backbone, convert, load_official, print_report, save
from timm.models.convnext import checkpoint_filter_fn


def main(argv: list[str] | None = None) -> dict[str, list[str]]:
    args = argument_parser(
        __doc__.splitlines()[0], "projects/CroBIM/configs/rrsisd/crobim_convnext_b.yaml"
    ).parse_args(argv)
    backbone = build_target_backbone(args.config_file, ["MODEL.BACKBONE.NAME", "D2ConvNeXt", *args.opts])
    converted, report = convert(load_official(args.input), backbone, "convnext", checkpoint_filter_fn)
    save(args.output, converted, "crobim_d2 convert_convnext.py")
    print_report(report, len(converted), args.output)
    return report


if __name__ == "__main__":
    main()
