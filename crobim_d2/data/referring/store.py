"""Generated datasets on disk (synrrsis, realrs): built once, atomically and under a file lock, and built
without being asked only under the documented root ``./datasets``, so that a mistyped DETECTRON2_DATASETS
gives an error instead of a new dataset there."""
import fcntl
import glob
import json
import os
import shutil
from collections.abc import Callable

__all__ = ["DEFAULT_ROOT", "build_once", "may_build", "read_info", "refuse_foreign"]

DEFAULT_ROOT = "datasets"


def read_info(path: str) -> dict:
    """The dataset's ``info.json``; ``{}`` when it has none."""
    try:
        with open(os.path.join(path, "info.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def build_once(root: str, name: str, current: Callable[[dict], bool], build: Callable[[str], dict],
               force: bool) -> dict:
    """Build ``<root>/<name>`` with ``build(folder) -> info`` into a temporary folder and move it in place,
    under the lock ``<root>/.<name>.lock`` so that concurrent processes do not clash. Unless ``force``, an
    existing dataset whose info is ``current`` (built by another process while this one waited) is kept.
    Returns the content of ``info.json``."""
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, name)
    with open(os.path.join(root, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = read_info(final)
        if not force and current(info):
            return info
        for stale in glob.glob(os.path.join(root, f".{name}.*-*")):  # left by an interrupted run
            shutil.rmtree(stale, ignore_errors=True)
        tmp = os.path.join(root, f".{name}.tmp-{os.getpid()}")
        info = build(tmp)
        with open(os.path.join(tmp, "info.json"), "w") as f:
            json.dump(info, f, indent=1)
        if os.path.exists(final):
            old = os.path.join(root, f".{name}.old-{os.getpid()}")
            os.rename(final, old)
            shutil.rmtree(old)
        os.rename(tmp, final)
    return info


def refuse_foreign(root: str, name: str, info: dict, prepare: str) -> None:
    """A ``<root>/<name>`` folder without ``info.json`` was not built here: never replace it unasked."""
    path = os.path.join(root, name)
    if not info and os.path.exists(path):
        raise FileNotFoundError(
            f"{os.path.abspath(path)} exists but has no {name} info.json, so it is not a {name} dataset "
            f"made by this generator; move it away, or run python {prepare} --root {root} to replace it."
        )


def may_build(root: str, env: str, what: str) -> bool:
    """Whether to ``what`` ("generate synrrsis") in ``root`` unasked: as ``$env`` says (1 / 0), else only when
    ``root`` is the default ``./datasets``."""
    value = os.environ.get(env, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{env}={value!r}: use 1 ({what} where it is missing) or 0.")
    if value:
        return value == "1"
    return os.path.abspath(root) == os.path.abspath(DEFAULT_ROOT)
