"""Convert an official Swin Transformer checkpoint (e.g. swin_base_patch4_window12_384_22k.pth) to what
``D2SwinTransformer`` loads through ``MODEL.WEIGHTS``, reporting entries that did not match.

    python projects/CroBIM/tools/convert_swin.py swin_base_patch4_window12_384_22k.pth \
        pretrained/swin_base_patch4_window12_384_22k_d2.pth

Official Swin merges patches at the end of stage i (``layers.{i}.downsample``), timm at the start of stage
i+1; timm's ``checkpoint_filter_fn`` moves them, drops the ``relative_position_index``/``attn_mask`` buffers
and resizes relative position bias tables if the window differs. The classifier ``head`` and the final
``norm`` are not used (the backbone has one new norm per returned stage).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conversion import argument_parser, build_target_backbone, convert, load_official, print_report, save
from timm.models.swin_transformer import checkpoint_filter_fn


def main(argv: list[str] | None = None) -> dict[str, list[str]]:
    args = argument_parser(__doc__.splitlines()[0], "projects/CroBIM/configs/rrsisd/crobim_swin_b.yaml").parse_args(
        argv
    )
    backbone = build_target_backbone(args.config_file, ["MODEL.BACKBONE.NAME", "D2SwinTransformer", *args.opts])
    converted, report = convert(load_official(args.input), backbone, "swin", checkpoint_filter_fn)
    save(args.output, converted, "crobim_d2 convert_swin.py")
    print_report(report, len(converted), args.output)
    return report


if __name__ == "__main__":
    main()
