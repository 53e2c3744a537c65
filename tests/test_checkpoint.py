"""Checkpoints (crobim_d2/checkpoint.py) through every entry point: crafted pickles never run, a checkpoint of
another model or a damaged file is a clear error, saves are atomic, and --resume survives a kill mid-save."""
import contextlib
import io
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import OrderedDict

import numpy as np
import pytest
import torch
from _tiny_train_config import CONFIG, TINY_OPTS, tiny_cfg
from detectron2.modeling import build_model
from PIL import Image
from torch import nn

from crobim_d2 import RRSISPredictor
from crobim_d2.checkpoint import (
    CheckpointError,
    CroBIMCheckpointer,
    DamagedCheckpointError,
    atomic_open,
    load_inference_weights,
    read_checkpoint,
)
from crobim_d2.geo import cli

TESTS = os.path.dirname(os.path.abspath(__file__))
TRAIN_NET = os.path.join(os.path.dirname(TESTS), "projects", "CroBIM", "train_net.py")
sys.path.insert(0, os.path.dirname(TRAIN_NET))
import train_net
from test_train_net import TINY, data_root, parse  # noqa: F401  (data_root: a fixture, the tiny synrrsis)


class _RunsCode:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _RunsPython(_RunsCode):
    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def _checkpointer_log():
    """Messages of the checkpointer's logger (Detectron2's logging set-up stops them reaching caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("fvcore.common.checkpoint")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _crafted(path, marker, payload=_RunsCode) -> str:
    """A checkpoint of real-looking weights carrying a payload, as .pkl (model-zoo format) or .pth."""
    weights = OrderedDict(w=np.zeros((2, 2), np.float32))
    if str(path).endswith(".pkl"):
        data = {"model": weights, "__author__": "x", "extra": payload(marker)}
        path.write_bytes(pickle.dumps(data, protocol=2))
    else:
        torch.save({"model": {"w": torch.zeros(2, 2)}, "extra": payload(marker)}, path)
    return str(path)


@pytest.fixture
def tiny_weights(tmp_path):
    """A tiny CroBIM and its checkpoint (as train_net.py writes them)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    CroBIMCheckpointer(model, str(tmp_path)).save("model")
    return model, str(tmp_path / "model.pth")


def _png(tmp_path) -> str:
    path = str(tmp_path / "scene.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def _predictor(weights, *opts):
    return RRSISPredictor(tiny_cfg("MODEL.WEIGHTS", weights, *opts))


def _eval_only(weights, tmp_path, *opts):
    args = parse("--eval-only", output_dir=tmp_path / "eval", opts=["MODEL.WEIGHTS", weights, *opts])
    return train_net.main(args)


def _crobim_predict(weights, tmp_path, opts=(), flags=()):
    argv = [
        "--config-file", CONFIG, "--weights", weights, "--input", _png(tmp_path), "--expression", "the car",
        "--output-dir", str(tmp_path / "out"), "--device", "cpu", *flags, "--opts", *TINY_OPTS, *opts,
    ]
    return cli.main(argv)


def _run_entry_point(entry, weights, tmp_path, capsys, *opts):
    """Run the entry point with config overrides ``opts``; return the message of the error it stopped with."""
    if entry == "crobim-predict":
        with pytest.raises(SystemExit) as exit_info:
            _crobim_predict(weights, tmp_path, opts)
        assert exit_info.value.code == 2
        return capsys.readouterr().err.split("crobim-predict: error: ")[-1]
    with pytest.raises(CheckpointError) as error:
        _predictor(weights, *opts) if entry == "predictor" else _eval_only(weights, tmp_path, *opts)
    return str(error.value)


ENTRY_POINTS = ["predictor", "eval-only", "crobim-predict"]


def test_payloads_are_live(tmp_path):
    """The crafted files would run code if unpickled plainly: the refusals below are not vacuous."""
    for payload in (_RunsCode, _RunsPython):
        marker = tmp_path / f"{payload.__name__}.ran"
        pickle.loads(pickle.dumps(payload(marker)))
        assert marker.is_file()


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
@pytest.mark.parametrize("payload", [_RunsCode, _RunsPython])
def test_read_checkpoint_refuses_code_before_it_runs(tmp_path, suffix, payload):
    marker = tmp_path / "ran"
    path = _crafted(tmp_path / f"evil{suffix}", marker, payload)
    global_name = r"(posix|os)\.system" if payload is _RunsCode else r"(__builtin__\.|builtins\.)?exec"
    with pytest.raises(CheckpointError, match=rf"{path} asks to load {global_name}.*refused before anything"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.usefixtures("data_root")
@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_refuse_code_in_checkpoints(tmp_path, capsys, entry, suffix):
    marker = tmp_path / "ran"
    path = _crafted(tmp_path / f"evil{suffix}", marker)
    message = _run_entry_point(entry, path, tmp_path, capsys)
    assert f"{path} asks to load" in message and "refused before anything in the file ran" in message
    assert not marker.exists()


def test_model_zoo_pickles_of_numpy_arrays_load(tmp_path):
    """Detectron2's .pkl format (numpy arrays, any pickle protocol, numpy scalars) still loads."""
    weights = OrderedDict(weight=np.arange(6, dtype=np.float32).reshape(2, 3), bias=np.ones(2, np.float32))
    for protocol in (0, 2, 5):
        path = tmp_path / f"zoo{protocol}.pkl"
        path.write_bytes(pickle.dumps({"model": weights, "__author__": "zoo", "s": np.float64(1)}, protocol))
        model = nn.Linear(3, 2)
        load_inference_weights(model, str(path))
        assert torch.equal(model.weight, torch.arange(6.0).reshape(2, 3))
        assert torch.equal(model.bias, torch.ones(2))


def _damage(path: str, kind: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    out = f"{path[:-4]}_{kind}{path[-4:]}"
    contents = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "text": b"model weights: see the README\n",
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    }[kind]
    with open(out, "wb") as f:
        f.write(contents)
    return out


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "random"])
@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_damaged_files_name_the_file_and_the_fix(tmp_path, kind, suffix):
    path = str(tmp_path / f"model{suffix}")
    if suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump({"model": {"w": np.zeros((64, 64), np.float32)}, "__author__": "x"}, f, protocol=2)
    else:
        torch.save({"model": {"w": torch.zeros(64, 64)}}, path)
    damaged = _damage(path, kind)
    expected = rf"{damaged} is not a readable checkpoint: .*copy or download it again"
    with pytest.raises(DamagedCheckpointError, match=expected):
        read_checkpoint(damaged)


@pytest.mark.usefixtures("data_root")
@pytest.mark.parametrize("kind", ["truncated", "empty", "text"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_report_damaged_checkpoints(tiny_weights, tmp_path, capsys, entry, kind):
    damaged = _damage(tiny_weights[1], kind)
    message = _run_entry_point(entry, damaged, tmp_path, capsys)
    assert f"{damaged} is not a readable checkpoint" in message and "Traceback" not in message


def test_non_checkpoint_pickles_are_refused_clearly(tmp_path):
    for name, obj, reason in [
        ("list.pth", [torch.zeros(1)], "it holds a list, not a dict of weights"),
        ("nested.pth", {"model": {"w": {"not": "a tensor"}}}, "its weight 'w' is a dict"),
        ("objects.pkl", {"model": {"w": np.array([1, "a"], dtype=object)}, "__author__": "x"}, "weight 'w'"),
    ]:
        path = tmp_path / name
        if name.endswith(".pkl"):
            path.write_bytes(pickle.dumps(obj))
        else:
            torch.save(obj, path)
        with pytest.raises(DamagedCheckpointError, match=reason):
            read_checkpoint(str(path))


@pytest.mark.usefixtures("data_root")
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_checkpoint_of_another_size_is_refused_with_the_keys(tiny_weights, tmp_path, capsys, entry):
    other_size = ["MODEL.CROBIM.HIDDEN_DIM", "48"]
    message = _run_entry_point(entry, tiny_weights[1], tmp_path, capsys, *other_size)
    assert f"{tiny_weights[1]} does not match the model built from this config" in message
    assert "of another shape: " in message and "(model (" in message and "more)" in message
    assert "missing from the checkpoint" not in message  # reshaped parameters are not listed twice
    assert "another size (e.g. MODEL.CROBIM.HIDDEN_DIM" in message
    assert "MODEL.ALLOW_PARTIAL_WEIGHTS True" in message
    assert "--allow-partial-weights" in message


@pytest.mark.usefixtures("data_root")
def test_partial_load_on_purpose(tiny_weights, tmp_path):
    model, path = tiny_weights
    saved = model.state_dict()
    other_size = ["MODEL.CROBIM.HIDDEN_DIM", "48"]
    loaded = _predictor(path, *other_size, "MODEL.ALLOW_PARTIAL_WEIGHTS", "True").model.state_dict()
    same = [k for k in saved if k in loaded and loaded[k].shape == saved[k].shape]
    assert len(same) < len(saved) and any(k.startswith("backbone.") for k in same)
    assert all(torch.equal(loaded[k], saved[k]) for k in same)
    assert _crobim_predict(path, tmp_path, other_size, ["--allow-partial-weights"]) == 0
    assert (tmp_path / "out" / "predictions.jsonl").is_file()


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    source = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    CroBIMCheckpointer(source, str(tmp_path)).save("two")
    (tmp_path / "config.yaml").write_text("MODEL: {}\n")
    with pytest.raises(CheckpointError) as error:
        target = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
        load_inference_weights(target, str(tmp_path / "two.pth"))
    message = str(error.value)
    assert "2 missing from the checkpoint: 2.weight, 2.bias" in message
    assert "2 not in the model: 1.weight, 1.bias" in message
    cause = "another backbone, text encoder or number of layers (it differs in 2, 1)"
    assert f"{cause}; use the config it was trained with ({tmp_path / 'config.yaml'} beside it)" in message


@pytest.mark.usefixtures("data_root")
def test_training_starts_from_backbone_weights_and_inference_refuses_them(tiny_weights, tmp_path):
    """Converted backbones (projects/CroBIM/tools/convert_*.py) hold only backbone.*: training loads them."""
    saved = tiny_weights[0].state_dict()
    backbone_only = str(tmp_path / "backbone.pth")
    torch.save({"model": {k: v for k, v in saved.items() if k.startswith("backbone.")}}, backbone_only)
    opts = ["MODEL.WEIGHTS", backbone_only, "SEED", "5"]
    cfg = train_net.setup(parse(output_dir=tmp_path / "train", opts=opts))
    trainer = train_net.Trainer(cfg)
    with _checkpointer_log() as records:
        trainer.resume_or_load(resume=False)
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items() if k.startswith("backbone."))
    assert not all(torch.equal(state[k], v) for k, v in saved.items() if k.startswith("mid."))
    assert any("kept at their initialisation: mid (74)" in r.getMessage() for r in records)
    with pytest.raises(CheckpointError, match="holds only backbone weights .* which initialise training"):
        _predictor(backbone_only)


def test_atomic_open_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"complete")
    with pytest.raises(RuntimeError, match="disk full"), atomic_open(str(path)) as f:
        f.write(b"half")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"complete" and os.listdir(tmp_path) == ["model.pth"]


def _linear_checkpoints(folder, names):
    model = nn.Linear(2, 2)
    checkpointer = CroBIMCheckpointer(model, str(folder))
    states = {}
    for name in names:
        nn.init.normal_(model.weight)
        states[name] = _state(model)
        checkpointer.save(name)
        time.sleep(0.01)  # distinct modification times
    return states


def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    states = _linear_checkpoints(tmp_path, ["model_0000001", "model_0000003", "model_0000005"])
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000005.pth"
    _damage(str(tmp_path / "model_0000005.pth"), "truncated")
    os.replace(tmp_path / "model_0000005_truncated.pth", tmp_path / "model_0000005.pth")
    (tmp_path / ".model_0000007.pth.partial-999999999").write_bytes(b"left by a killed save")
    model = nn.Linear(2, 2)
    with _checkpointer_log() as records:
        CroBIMCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(model.weight, states["model_0000003"]["weight"])
    messages = " ".join(r.getMessage() for r in records)
    assert f"Cannot resume from {tmp_path / 'model_0000005.pth'}: truncated" in messages
    assert f"Resuming from {tmp_path / 'model_0000003.pth'}, the newest complete checkpoint" in messages
    assert not (tmp_path / ".model_0000007.pth.partial-999999999").exists()


def test_resume_without_a_complete_checkpoint_stops_clearly(tmp_path):
    _linear_checkpoints(tmp_path, ["model_0000001"])
    (tmp_path / "model_0000001.pth").write_bytes(b"")
    expected = r"Cannot resume from .*no checkpoint there is complete .*it is empty"
    with pytest.raises(CheckpointError, match=expected):
        CroBIMCheckpointer(nn.Linear(2, 2), str(tmp_path)).resume_or_load("", resume=True)


# Runs train_net.py as a script with torch.save writing half of its N-th checkpoint and then hanging, so that
# the kill lands inside a save every time.
_BLOCKING_SAVE = r"""
import io, os, runpy, sys, time
import torch
sys.path.insert(0, sys.argv[1])
from test_train_net import register_tiny
root, block_at, signal_file, script, *argv = sys.argv[2:]
register_tiny(root)
real_save, saves = torch.save, []
def blocking_save(obj, f, *args, **kwargs):
    saves.append(f)
    if len(saves) == int(block_at):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: buf.tell() // 2])
        f.flush()
        open(signal_file, "w").close()
        time.sleep(600)
    real_save(obj, f, *args, **kwargs)
torch.save = blocking_save
sys.argv = [script, *argv]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
def test_kill_during_a_checkpoint_save_then_resume(tmp_path, request):
    """SIGKILL train_net.py while it writes its second checkpoint; --resume continues from the first."""
    root = request.getfixturevalue("data_root")
    out = tmp_path / "train"
    signal_file = tmp_path / "saving"
    args = ["--config-file", CONFIG, *TINY, "OUTPUT_DIR", str(out)]
    pythonpath = os.pathsep.join([os.path.dirname(TESTS), os.environ.get("PYTHONPATH", "")])
    with open(tmp_path / "killed_run.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BLOCKING_SAVE, TESTS, root, "2", str(signal_file), TRAIN_NET, *args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": pythonpath},
        )
        deadline = time.monotonic() + 240
        while not signal_file.exists():
            assert proc.poll() is None, (tmp_path / "killed_run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "train_net.py did not reach its second checkpoint save"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    # Killed while writing model_0000003.pth: only a partial file, the last checkpoint is still iteration 1's.
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (out / "model_0000003.pth").exists()
    assert [p for p in os.listdir(out) if ".partial-" in p] == [f".model_0000003.pth.partial-{proc.pid}"]
    assert read_checkpoint(str(out / "model_0000001.pth"))["iteration"] == 1

    results = train_net.main(parse("--resume", output_dir=out))
    assert set(results["rrsis"]) >= {"mIoU", "oIoU"}
    assert "Starting training from iteration 2" in (out / "log.txt").read_text()
    assert read_checkpoint(str(out / "model_final.pth"))["iteration"] == 3
    assert not [p for p in os.listdir(out) if ".partial-" in p]
    load_inference_weights(build_model(tiny_cfg()), str(out / "model_final.pth"))  # complete and matching


def test_checkpoint_bytes_round_trip_through_torch_save(tmp_path):
    """What CroBIMCheckpointer.save writes is what torch.save would: loadable by plain torch.load."""
    model = nn.Linear(3, 1)
    CroBIMCheckpointer(model, str(tmp_path), extra=nn.Linear(1, 1)).save("m", iteration=7)
    plain = torch.load(io.BytesIO((tmp_path / "m.pth").read_bytes()), weights_only=True)
    assert plain["iteration"] == 7 and torch.equal(plain["model"]["weight"], model.weight)
    assert set(plain) == {"model", "extra", "iteration"}
