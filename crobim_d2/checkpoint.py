"""Checkpoints that cannot run code, cannot load silently wrong, and are never left half-written.

:class:`CroBIMCheckpointer` is Detectron2's ``DetectionCheckpointer`` with four changes, used by every entry
point (``train_net.py``, :class:`crobim_d2.RRSISPredictor` and what builds on it):

- ``.pkl`` files (Detectron2's model-zoo format) are unpickled with only the globals that format holds (numpy
  arrays and dtypes, ``OrderedDict``); any other global is refused before it is called. Every other file goes
  to ``torch.load(weights_only=True)``.
- An empty, truncated or non-checkpoint file raises :class:`DamagedCheckpointError` naming the file and the
  fix.
- ``strict=True`` (inference and evaluation) makes missing, unexpected or shape-mismatched parameters an error
  that lists them; ``strict=False`` (initialising training) loads what matches and logs the rest.
- Saves go to a temporary file in the same folder that replaces the checkpoint only once complete, and
  ``--resume`` skips a damaged ``last_checkpoint`` for the newest complete checkpoint in the folder.
"""
import contextlib
import glob
import os
import pickle
import re
import struct
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import IO, Any

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = [
    "CheckpointError",
    "CroBIMCheckpointer",
    "DamagedCheckpointError",
    "atomic_open",
    "load_inference_weights",
    "read_checkpoint",
]

LAST_CHECKPOINT = "last_checkpoint"
_PARTIAL = ".partial-"  # infix of temporary files: never ends in .pth, so never taken for a checkpoint
_SHOWN = 5  # keys listed per kind of mismatch

# What pickled numpy arrays reference (numpy < 2 and >= 2 module names; _frombuffer for protocol 5, _codecs
# for bytes in protocol 2) and the OrderedDict of state dicts. Nothing here runs code given data.
_PICKLE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *((f"numpy.{core}.multiarray", n) for core in ("core", "_core") for n in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}


# What unpickling garbage or a cut-off file raises: pickle opcodes and torch's reader act on whatever the
# bytes say (MemoryError: a garbage length asks for a huge buffer; OSError: torch's zip reader).
_UNREADABLE = (
    pickle.UnpicklingError, EOFError, RuntimeError, ValueError, LookupError, TypeError, AttributeError,
    OverflowError, AssertionError, MemoryError, struct.error, OSError,
)


class CheckpointError(ValueError):
    """A checkpoint that must not be loaded: it asks to run code, or it does not match the model."""


class DamagedCheckpointError(CheckpointError):
    """A file that cannot be read as a checkpoint: empty, truncated, or something else."""

    def __init__(self, path: str, reason: str):
        super().__init__(
            f"{path} is not a readable checkpoint: {reason}. It may have been cut short by an interrupted "
            "copy or save, or be another kind of file; copy or download it again, or use another checkpoint "
            "(train_net.py --resume falls back to the newest complete one in its folder)."
        )
        self.path, self.reason = path, reason


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _WeightsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def _refused(path: str, name: str) -> CheckpointError:
    return CheckpointError(
        f"{path} asks to load {name}, which a checkpoint of weights never holds; it was refused before "
        "anything in the file ran (the file may be crafted to run code). Use a checkpoint from a source you "
        "trust: one written by train_net.py or projects/CroBIM/tools/convert_*.py."
    )


def _first(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _read_pickle(path: str) -> Any:
    with open(path, "rb") as f:
        try:
            return _WeightsUnpickler(f, encoding="latin1").load()
        except _RefusedGlobal as e:
            raise _refused(path, e.name) from None
        except _UNREADABLE as e:
            raise DamagedCheckpointError(path, f"not a complete pickle ({type(e).__name__}: {e})") from None


def _read_torch(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError):
        raise
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if refused:
            raise _refused(path, refused.group(1)) from None
        raise DamagedCheckpointError(path, "not a PyTorch checkpoint (not a pickle torch can read)") from None
    except _UNREADABLE as e:
        reason = f"{type(e).__name__}: {str(e).split('. ')[0]}"  # torch's first sentence; the rest is advice
        raise DamagedCheckpointError(path, f"truncated or not a PyTorch checkpoint ({reason})") from None


def _model_zoo_format(data: dict) -> dict:
    """Detectron2's reading of a ``.pkl``: its own model zoo as is, Caffe2's blobs renamed by heuristics."""
    if "model" in data and "__author__" in data:
        return data
    blobs = data.get("blobs", data)
    model = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
    return {"model": model, "__author__": "Caffe2", "matching_heuristics": True}


def read_checkpoint(path: str) -> dict:
    """The checkpoint dict of ``path`` (``{"model": state dict, ...}``), read without running its code.

    Raises :class:`CheckpointError` for a file that asks to import anything else, and
    :class:`DamagedCheckpointError` for one that is empty, truncated or not a checkpoint of weights.
    """
    if os.path.getsize(path) == 0:
        raise DamagedCheckpointError(path, "it is empty (0 bytes)")
    data = _read_pickle(path) if path.endswith(".pkl") else _read_torch(path)
    if not isinstance(data, dict):
        raise DamagedCheckpointError(path, f"it holds a {type(data).__name__}, not a dict of weights")
    if path.endswith(".pkl"):
        data = _model_zoo_format(data)
    elif "model" not in data:
        data = {"model": data}
    state = data["model"]
    if not isinstance(state, Mapping):
        raise DamagedCheckpointError(path, f"its 'model' entry is a {type(state).__name__}, not a state dict")
    for key, value in state.items():
        array = isinstance(value, np.ndarray) and value.dtype != object
        if not isinstance(key, str) or not (isinstance(value, torch.Tensor) or array):
            what = f"its weight {key!r} is a {type(value).__name__}"
            raise DamagedCheckpointError(path, f"{what}, not a tensor or numeric array")
    return data


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Write ``path`` through a temporary file in its folder that replaces it only once written and synced.

    A process killed while writing leaves ``path`` as it was (and a ``.<name>.partial-<pid>`` file that
    :meth:`CroBIMCheckpointer.resume_or_load` removes).
    """
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}{_PARTIAL}{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable; not every filesystem allows it
        fd = os.open(folder or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _by_module(keys: list[str]) -> str:
    return ", ".join(f"{m} ({n})" for m, n in Counter(k.split(".")[0] for k in keys).most_common())


def _likely_cause(path: str, checkpoint_keys: list[str], incompatible) -> str:
    if checkpoint_keys and all(k.startswith("backbone.") for k in checkpoint_keys):
        return (
            "it holds only backbone weights (a converted backbone, projects/CroBIM/tools/convert_*.py), "
            "which initialise training; predict and evaluate with a checkpoint written by train_net.py"
        )
    kinds = []
    if incompatible.missing_keys or incompatible.unexpected_keys:
        kinds.append("another backbone, text encoder or number of layers")
    if incompatible.incorrect_shapes:
        kinds.append(
            "another size (e.g. MODEL.CROBIM.HIDDEN_DIM, MODEL.TEXT_ENCODER.HIDDEN_SIZE or the backbone's "
            "widths)"
        )
    reshaped = [k for k, *_ in incompatible.incorrect_shapes]
    keys = incompatible.missing_keys + incompatible.unexpected_keys + reshaped
    modules = ", ".join(dict.fromkeys(k.split(".")[0] for k in keys))
    config = os.path.join(os.path.dirname(path), "config.yaml")
    beside = f" ({config} beside it)" if os.path.isfile(config) else ""
    return (
        f"it was trained with another config: {' and '.join(kinds)} (it differs in {modules}); use the "
        f"config it was trained with{beside}"
    )


class CroBIMCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with safe reading, clear errors, atomic saves and a resume that skips damage.

    Args:
        strict: refuse a checkpoint whose parameters do not match the model's exactly (inference, evaluation);
            False loads the matching ones and logs the others (initialising training from backbone weights).
    """

    def __init__(self, model: torch.nn.Module, save_dir: str = "", *, strict: bool = False, **kwargs: Any):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict

    def _load_file(self, filename: str) -> dict:
        data = read_checkpoint(filename)
        if data.get("__author__"):
            self.logger.info(f"Reading a file from '{data['__author__']}'")
        return data

    def _load_model(self, checkpoint: dict):
        checkpoint_keys = list(checkpoint["model"])
        incompatible = super()._load_model(checkpoint)
        # fvcore drops shape-mismatched entries before loading, so they come back as missing too.
        reshaped = [k for k, *_ in incompatible.incorrect_shapes]
        skip = set(reshaped)
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k not in skip]
        left = incompatible.missing_keys + reshaped
        if self.strict and (left or incompatible.unexpected_keys):
            raise CheckpointError(self._mismatch_message(checkpoint_keys, incompatible))
        if left or incompatible.unexpected_keys:
            total = len(self.model.state_dict())
            self.logger.info(
                f"Loaded {total - len(left)} of the model's {total} entries from {self._path}; "
                f"kept at their initialisation: {_by_module(left) or 'none'}; unused from the checkpoint: "
                f"{_by_module(incompatible.unexpected_keys) or 'none'}"
            )
        return incompatible

    def _mismatch_message(self, checkpoint_keys: list[str], incompatible) -> str:
        shapes = [f"{k} {tuple(c)} (model {tuple(m)})" for k, c, m in incompatible.incorrect_shapes]
        kinds = [
            (incompatible.missing_keys, "missing from the checkpoint"),
            (incompatible.unexpected_keys, "not in the model"),
            (shapes, "of another shape"),
        ]
        lines = [f"{len(keys)} {what}: {_first(keys)}" for keys, what in kinds if keys]
        return (
            f"{self._path} does not match the model built from this config:\n  " + "\n  ".join(lines) + "\n"
            f"Likely cause: {_likely_cause(self._path, checkpoint_keys, incompatible)}. To load only the "
            "matching parameters on purpose, set MODEL.ALLOW_PARTIAL_WEIGHTS True (crobim-predict: "
            "--allow-partial-weights)."
        )

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict:
        self._path = path
        return super().load(path, *args, **kwargs)

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        with atomic_open(path) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_open(os.path.join(self.save_dir, LAST_CHECKPOINT), "w") as f:
            f.write(last_filename_basename)

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict:
        if resume and self.has_checkpoint():
            return self._resume()
        return self.load(path, checkpointables=[])

    def _remove_partial_files(self) -> None:
        """Remove the temporary files of saves whose process was killed (not those of a running one)."""
        removed = 0
        for leftover in glob.glob(os.path.join(glob.escape(self.save_dir), f".*{_PARTIAL}*")):
            pid = leftover.rsplit(_PARTIAL, 1)[1]
            if pid.isdigit() and not _process_exists(int(pid)):
                os.remove(leftover)
                removed += 1
        if removed:
            self.logger.warning(f"Removed {removed} partial file(s) of killed saves from {self.save_dir}.")

    def _resume(self) -> dict:
        """Load ``last_checkpoint``'s file, or if it is missing or damaged the newest complete checkpoint."""
        if self.save_to_disk:
            self._remove_partial_files()
        named = self.get_checkpoint_file()
        others = sorted(
            (f for f in self.get_all_checkpoint_files() if f != named), key=os.path.getmtime, reverse=True
        )
        problems = []
        for candidate in [named, *others]:
            try:
                if not os.path.isfile(candidate):
                    raise DamagedCheckpointError(candidate, "it does not exist")
                checkpoint = self.load(candidate)
            except DamagedCheckpointError as e:
                problems.append(f"{candidate}: {e.reason}")
                self.logger.warning(f"Cannot resume from {problems[-1]}; trying an older checkpoint.")
                continue
            if problems:
                self.logger.warning(f"Resuming from {candidate}, the newest complete checkpoint there.")
            return checkpoint
        raise CheckpointError(
            f"Cannot resume from {self.save_dir}: {LAST_CHECKPOINT} names {named}, and no checkpoint there "
            f"is complete ({'; '.join(problems)}). Restore a checkpoint into the folder, or delete "
            f"{os.path.join(self.save_dir, LAST_CHECKPOINT)} to start again from MODEL.WEIGHTS."
        )


def load_inference_weights(model: torch.nn.Module, path: str, allow_partial: bool = False) -> dict:
    """Load the checkpoint ``path`` into ``model`` for inference or evaluation; return its other entries.

    Every parameter must match unless ``allow_partial`` (``MODEL.ALLOW_PARTIAL_WEIGHTS``).
    """
    return CroBIMCheckpointer(model, strict=not allow_partial).load(path, checkpointables=[])

