#!/usr/bin/env python
"""Generate the synrrsis benchmark: ``python datasets/prepare_synrrsis.py [--root DIR] [--num-train N] ...``.

Writes ``<root>/synrrsis/{train,val,test}.jsonl`` with ``images/`` and ``masks/`` (JSON Lines format of
``crobim_d2.data.register_rrsis_dataset``). The same arguments always give byte-identical files.
The ``synrrsis_*`` dataset names generate the default dataset by themselves on first use only under the
default root ``./datasets`` (or with ``CROBIM_GENERATE_SYNRRSIS=1``); elsewhere, run this script.
"""
import argparse
import os

from crobim_d2.data.synrrsis import SynRRSISParams, generate_synrrsis


def main() -> None:
    defaults = SynRRSISParams()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"),
                        help="dataset root (default: $DETECTRON2_DATASETS or ./datasets)")
    for split in ("train", "val", "test"):
        parser.add_argument(f"--num-{split}", type=int, default=defaults.num_scenes(split),
                            help=f"{split} scenes, 2-3 expressions each (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args()
    params = SynRRSISParams(image_size=args.image_size, num_train=args.num_train, num_val=args.num_val,
                            num_test=args.num_test, seed=args.seed)
    root = os.path.expanduser(args.root)
    out = os.path.abspath(os.path.join(root, "synrrsis"))
    print(f"Writing synrrsis to {out}", flush=True)
    info = generate_synrrsis(root, params)
    print(f"synrrsis v{info['version']} in {out}: {info['expressions']} expressions, {info['seconds']} s")


if __name__ == "__main__":
    main()
