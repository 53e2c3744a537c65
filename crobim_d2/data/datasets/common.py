"""Shared checks of the public-dataset loaders: required paths, and records skipped with a warning."""
import logging
from collections import defaultdict

_README = "datasets/README.md"
logger = logging.getLogger(__name__)


def missing_path_error(what: str, path: str, folder: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found at {path}; put the download there as described in {_README}, or set "
        f"DETECTRON2_DATASETS to the folder that holds {folder}/."
    )


class SkipLog:
    """Counts records a loader drops (missing image, empty expression, ...) and warns once per reason,
    naming the first files, so that one bad file does not stop a training run."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.items: dict[str, list[str]] = defaultdict(list)

    def add(self, reason: str, item: str) -> None:
        self.items[reason].append(item)

    def finish(self, records: list[dict], source: str) -> list[dict]:
        for reason, items in self.items.items():
            logger.warning(
                f"{self.dataset}: skipped {len(items)} expression(s) with {reason}, e.g. {items[:3]}; "
                f"check the download against {_README}."
            )
        if not records:
            raise ValueError(
                f"{self.dataset}: no usable expression in {source} (skipped: "
                f"{ {r: len(v) for r, v in self.items.items()} }); check the folder against {_README}."
            )
        return records
