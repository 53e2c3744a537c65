"""Check an RRSIS dataset before training: every image and mask decoded once, every expression tokenized.

``crobim-check-dataset NAME_OR_JSONL ...`` prints a report per dataset and exits 1 when a dataset has errors;
``check_datasets_at_start(cfg)`` runs the same check on a run's datasets (``DATASETS.CHECK_AT_START``), so
that an unreadable file stops training before the first iteration rather than in the middle.

Errors: a file that cannot be decoded (missing, truncated, not an image), an image whose size differs from
its record, a mask that cannot be made. Warnings (counted, the run goes on): empty masks (IoU 0 by the peers'
convention), expressions with no known word, expressions cut by ``INPUT.MAX_TOKENS``, polygons clipped to
their image. Every item names the record's ``origin`` (``file:line`` for JSON Lines and phrase lists).
"""
import argparse
import dataclasses
import logging
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.utils import comm
from tqdm import tqdm

from ..config import add_crobim_config
from .datasets import load_rrsis_jsonl
from .images import read_image_rgb
from .masks import check_polygons, load_gt_mask, record_origin
from .tokenization import build_tokenizer, inspect_expression

__all__ = ["DatasetReport", "check_datasets_at_start", "check_records", "load_dataset", "main"]

logger = logging.getLogger(__name__)
# At most this many records named per problem in a report (the counts are always complete).
EXAMPLES = 10
# Decoding threads: PIL and pycocotools decode outside the GIL.
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


@dataclasses.dataclass
class DatasetReport:
    """What ``check_records`` found; each list holds ``"<origin>: <detail>"`` items."""

    name: str
    max_tokens: int
    expressions: int = 0
    images: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    empty_masks: list[str] = dataclasses.field(default_factory=list)
    no_known_word: list[str] = dataclasses.field(default_factory=list)
    truncated: list[str] = dataclasses.field(default_factory=list)
    clipped_polygons: list[str] = dataclasses.field(default_factory=list)

    @property
    def has_warnings(self) -> bool:
        return bool(self.empty_masks or self.no_known_word or self.truncated or self.clipped_polygons)

    def format(self, examples: int = EXAMPLES) -> str:
        lines = [f"{self.name}: {self.expressions} expressions, {self.images} images"]
        for title, items in (
            ("errors (unreadable or inconsistent files)", self.errors),
            ("empty masks", self.empty_masks),
            ("expressions with no known word (every token [UNK] or punctuation)", self.no_known_word),
            (f"expressions cut by INPUT.MAX_TOKENS={self.max_tokens}", self.truncated),
            ("polygon masks clipped to their image", self.clipped_polygons),
        ):
            lines.append(f"  {title}: {len(items)}")
            shown = items if examples <= 0 else items[:examples]
            lines += [f"    {item}" for item in shown]
            if len(shown) < len(items):
                lines.append(f"    ... and {len(items) - len(shown)} more")
        return "\n".join(lines)


def _used_by(origins: list[str]) -> str:
    more = f" and {len(origins) - 3} more" if len(origins) > 3 else ""
    return f"used by {', '.join(origins[:3])}{more}"


def _decode_image(path: str, size: tuple[int, int]) -> str | None:
    """The problem with an image (decoded in full: headers alone pass truncated files), or None."""
    try:
        image = read_image_rgb(path)
    except (OSError, ValueError) as e:
        return str(e)
    if image.shape[:2] != size:
        return f"{path} is {image.shape[0]}x{image.shape[1]} but its records say {size[0]}x{size[1]}"
    return None


def _mask_stats(record: dict[str, Any]) -> tuple[int, bool] | str:
    """``(foreground pixels, polygons clipped)`` of the record's mask, or the problem with it."""
    try:
        area = int(load_gt_mask(record).sum())
    except (OSError, ValueError, KeyError) as e:
        return str(e).strip("\"'")
    segm = record.get("segmentation")
    polygon = isinstance(segm, list) and bool(segm) and isinstance(segm[0], list)
    return area, polygon and check_polygons(segm, int(record["height"]), int(record["width"]))[1] > 0


def _mask_key(record: dict[str, Any]) -> tuple:
    """Records that share a mask (a file, or one annotation's segmentation object) are decoded once."""
    if "mask_file" in record:
        return ("file", record["mask_file"], record.get("mask_threshold", 0),
                record["height"], record["width"])
    return ("segmentation", id(record.get("segmentation")), record["height"], record["width"])


def _run(fn: Callable, items: list, workers: int, progress: bool, desc: str) -> list:
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, disable=not progress, leave=False))


def check_records(
    name: str, records: list[dict[str, Any]], tokenizer, max_tokens: int,
    workers: int = DEFAULT_WORKERS, progress: bool = False,
) -> DatasetReport:
    """Decode every image and mask of ``records`` once and tokenize every expression (see the module doc)."""
    report = DatasetReport(name, max_tokens, expressions=len(records))
    images: dict[str, list[dict]] = defaultdict(list)
    masks: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        images[r["file_name"]].append(r)
        masks[_mask_key(r)].append(r)
    report.images = len(images)
    image_list = list(images.items())

    def decode(item: tuple[str, list[dict]]) -> str | None:
        return _decode_image(item[0], (int(item[1][0]["height"]), int(item[1][0]["width"])))

    problems = _run(decode, image_list, workers, progress, f"{name}: images")
    for (path, users), problem in zip(image_list, problems):
        if problem:
            report.errors.append(f"{problem} ({_used_by([record_origin(r) for r in users])})")
    mask_list = list(masks.values())
    for users, stats in zip(mask_list, _run(lambda rs: _mask_stats(rs[0]), mask_list, workers, progress,
                                            f"{name}: masks")):
        origins = [record_origin(r) for r in users]
        if isinstance(stats, str):
            report.errors.append(f"{stats} ({_used_by(origins)})")
            continue
        area, clipped = stats
        if area == 0:
            report.empty_masks += [f"{o}: empty mask" for o in origins]
        if clipped:
            report.clipped_polygons += [f"{o}: polygon beyond the image" for o in origins]
    for r in records:
        n, known = inspect_expression(tokenizer, r["sentence"])
        if not known:
            report.no_known_word.append(f"{record_origin(r)}: {r['sentence']!r}")
        if n > max_tokens:
            report.truncated.append(f"{record_origin(r)}: {n} tokens")
    return report


def load_dataset(name_or_path: str, image_root: str | None = None) -> list[dict[str, Any]]:
    """Records of a registered dataset name, or of a JSON Lines file given by its path."""
    if name_or_path in DatasetCatalog.list():
        return DatasetCatalog.get(name_or_path)
    if name_or_path.endswith(".jsonl") or os.path.isfile(name_or_path):
        return load_rrsis_jsonl(name_or_path, image_root)
    raise ValueError(
        f"{name_or_path!r} is neither a registered dataset nor a JSON Lines file. Registered: "
        f"{', '.join(sorted(DatasetCatalog.list()))}."
    )


def check_datasets_at_start(cfg: CfgNode, eval_only: bool = False) -> None:
    """With ``DATASETS.CHECK_AT_START``, check the run's datasets (``DATASETS.TEST`` only with ``eval_only``)
    in the main process; raise ``ValueError`` with the reports when one has errors."""
    if not cfg.DATASETS.CHECK_AT_START:
        return
    if comm.is_main_process():
        names = list(dict.fromkeys([*([] if eval_only else cfg.DATASETS.TRAIN), *cfg.DATASETS.TEST]))
        tokenizer = build_tokenizer(cfg.MODEL.TEXT_ENCODER.WEIGHTS)
        failed = []
        for name in names:
            report = check_records(name, DatasetCatalog.get(name), tokenizer, cfg.INPUT.MAX_TOKENS)
            log = logger.warning if report.errors or report.has_warnings else logger.info
            log(f"Dataset check (DATASETS.CHECK_AT_START):\n{report.format()}")
            if report.errors:
                failed.append(report.name)
        if failed:
            raise ValueError(
                f"Dataset(s) {failed} have unreadable or inconsistent files (listed above); training would "
                "stop when it reached them. Fix or remove those records (crobim-check-dataset NAME lists "
                "every problem), or set DATASETS.CHECK_AT_START False to skip this check."
            )
    comm.synchronize()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crobim-check-dataset",
        description="Decode every image and mask of RRSIS datasets once and tokenize every expression; "
        "report unreadable files (errors: exit status 1), empty masks, expressions with no known word, "
        "expressions cut by INPUT.MAX_TOKENS and clipped polygons, each with its file:line.",
        epilog="Examples: crobim-check-dataset synrrsis_train rrsisd_test; crobim-check-dataset "
        "/data/mydata/train.jsonl --config-file projects/CroBIM/configs/rrsisd/crobim_swin_b.yaml",
    )
    p.add_argument("datasets", nargs="+", metavar="DATASET",
                   help="a registered dataset name (synrrsis_*, rrsisd_*, refsegrs_*, risbench_*) or the "
                   "path of a JSON Lines file (datasets/README.md)")
    p.add_argument("--config-file", help="config whose tokenizer (MODEL.TEXT_ENCODER.WEIGHTS) and "
                   "INPUT.MAX_TOKENS to use (default: crobim-d2's defaults, the bundled bert-base-uncased "
                   "vocabulary and 20 tokens)")
    p.add_argument("--image-root", help="folder that relative paths of a JSON Lines file resolve against "
                   "(default: the file's folder)")
    p.add_argument("--examples", type=int, default=EXAMPLES,
                   help=f"records named per problem (default {EXAMPLES}; 0: all)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help="decoding threads (default %(default)s)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="config overrides KEY VALUE ... (last)")
    return p


def _config(config_file: str | None, opts: list[str]) -> CfgNode:
    cfg = get_cfg()
    add_crobim_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """``crobim-check-dataset``: 0 when no dataset has errors, else 1."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    if args.config_file and not os.path.isfile(args.config_file):
        parser.error(f"--config-file {args.config_file} not found")
    try:
        cfg = _config(args.config_file, list(args.opts))
        tokenizer = build_tokenizer(cfg.MODEL.TEXT_ENCODER.WEIGHTS)
    except (KeyError, ValueError, AssertionError, FileNotFoundError) as e:
        parser.error(f"cannot use the config ({e})")
    failed = False
    for name in args.datasets:
        try:
            records = load_dataset(name, args.image_root)
        except (OSError, ValueError, KeyError) as e:
            print(f"{name}: cannot load: {e}\n", flush=True)
            failed = True
            continue
        report = check_records(name, records, tokenizer, cfg.INPUT.MAX_TOKENS, args.workers,
                               progress=sys.stderr.isatty())
        print(report.format(args.examples) + "\n", flush=True)
        failed |= bool(report.errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
