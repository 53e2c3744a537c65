import hashlib
import json
import os
import runpy
import sys
import threading
from collections import Counter

import numpy as np
import pytest

from crobim_d2.data import load_gt_mask
from crobim_d2.data.datasets.builtin import _load_synrrsis
from crobim_d2.data.synrrsis import (
    CATEGORIES,
    SYNRRSIS_VERSION,
    SynRRSISParams,
    ensure_synrrsis,
    generate_scene,
    generate_synrrsis,
    refers_to,
    render,
    scene_expressions,
)
from crobim_d2.data.synrrsis import generate as generate_module
from crobim_d2.data.synrrsis.expressions import TEMPLATE_WEIGHTS

SMALL = SynRRSISParams(num_train=6, num_val=3, num_test=3, seed=1)


def _digest(folder):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name != "info.json":  # holds the generation time
                h.update(name.encode())
                with open(os.path.join(dirpath, name), "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def test_generation_is_byte_identical(tmp_path):
    a = generate_synrrsis(str(tmp_path / "a"), SMALL)
    b = generate_synrrsis(str(tmp_path / "b"), SMALL)
    assert a["expressions"] == b["expressions"] and a["params"]["num_train"] == 6
    assert _digest(tmp_path / "a" / "synrrsis") == _digest(tmp_path / "b" / "synrrsis")
    c = generate_synrrsis(str(tmp_path / "c"), SynRRSISParams(num_train=6, num_val=3, num_test=3, seed=2))
    assert _digest(tmp_path / "c" / "synrrsis") != _digest(tmp_path / "a" / "synrrsis")
    assert c["version"] == a["version"]


def test_expressions_single_out_their_target_and_are_unique():
    templates = Counter()
    for i in range(80):
        rng = np.random.default_rng([0, 0, i])
        scene = generate_scene(rng, 256)
        counts = Counter(o.category for o in scene.objects)
        assert len(scene.objects) >= 4 and all(o.area > 0.005 * 256 * 256 for o in scene.objects)
        exprs = scene_expressions(scene, rng, 3)
        assert len(exprs) >= 2
        assert len({text for _, _, text in exprs}) == len(exprs)  # unique per scene
        for target, spec, text in exprs:
            assert refers_to(spec, scene) == [target] and render(spec) == text
            assert counts[scene.objects[target].category] >= 2  # a same-category distractor exists
            templates[spec["template"]] += 1
    assert set(templates) == set(TEMPLATE_WEIGHTS)


def test_text_is_needed():
    """Even knowing the best single object of each scene, a text-blind answer is right for under half."""
    best = total = 0
    for i in range(100):
        rng = np.random.default_rng([0, 0, i])
        targets = Counter(t for t, _, _ in scene_expressions(generate_scene(rng, 256), rng, 3))
        best += max(targets.values())
        total += sum(targets.values())
    assert best / total < 0.5


def test_records_masks_and_attributes(tmp_path):
    root = str(tmp_path)
    generate_synrrsis(root, SMALL)
    records = _load_synrrsis(root, "val")
    assert len(records) >= 6
    for r in records:
        mask = load_gt_mask(r)
        assert mask.shape == (256, 256) and mask.sum() > 0 and (r["height"], r["width"]) == (256, 256)
        assert r["category"] in CATEGORIES and {"color", "size", "position", "template"} <= set(r)
    # the mask is the object's mask in the regenerated scene
    rng = np.random.default_rng([SMALL.seed, 1, records[0]["image_id"]])
    scene = generate_scene(rng, 256)
    assert (scene.objects[records[0]["object_id"]].mask == load_gt_mask(records[0])).all()


def test_ensure_generates_once_under_concurrency(tmp_path, monkeypatch):
    calls = []
    write_split = generate_module.write_split
    monkeypatch.setattr(generate_module, "write_split", lambda *a: calls.append(a[1]) or write_split(*a))
    (tmp_path / ".synrrsis.tmp-99999999" / "images").mkdir(parents=True)  # an interrupted run's leftovers
    threads = [threading.Thread(target=ensure_synrrsis, args=(str(tmp_path), SMALL, True)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == ["test", "train", "val"]
    assert sorted(os.listdir(tmp_path)) == [".synrrsis.lock", "synrrsis"]
    ensure_synrrsis(str(tmp_path), SMALL)
    assert len(calls) == 3
    info = json.loads((tmp_path / "synrrsis" / "info.json").read_text())
    info["version"] = -1
    (tmp_path / "synrrsis" / "info.json").write_text(json.dumps(info))
    ensure_synrrsis(str(tmp_path), SMALL)  # another generator version: regenerated
    assert len(calls) == 6


def test_ensure_generates_only_at_the_default_root_or_when_asked(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(generate_module.GENERATE_ENV, raising=False)
    mistyped = tmp_path / "mistyped"
    with pytest.raises(FileNotFoundError, match=rf"synrrsis not found at {mistyped}/synrrsis\. .*"
                       r"prepare_synrrsis.py --root .*CROBIM_GENERATE_SYNRRSIS=1"):
        ensure_synrrsis(str(mistyped), SMALL)
    assert not mistyped.exists()  # nothing written
    monkeypatch.chdir(tmp_path)  # the default root ./datasets: generated, and the log says where
    with caplog.at_level("WARNING", logger="crobim_d2.data.synrrsis.generate"):
        assert ensure_synrrsis("datasets", SMALL) == os.path.join("datasets", "synrrsis")
    assert f"Generating synrrsis in {tmp_path / 'datasets' / 'synrrsis'}" in caplog.text
    assert (tmp_path / "datasets" / "synrrsis" / "val.jsonl").is_file()
    monkeypatch.setenv(generate_module.GENERATE_ENV, "1")  # asked: generated anywhere
    ensure_synrrsis(str(tmp_path / "asked"), SMALL)
    assert (tmp_path / "asked" / "synrrsis" / "info.json").is_file()
    monkeypatch.setenv(generate_module.GENERATE_ENV, "0")  # never, not even at the default root
    with pytest.raises(FileNotFoundError, match="synrrsis not found"):
        ensure_synrrsis(str(tmp_path / "other"), SMALL)
    monkeypatch.setenv(generate_module.GENERATE_ENV, "yes")
    with pytest.raises(ValueError, match="CROBIM_GENERATE_SYNRRSIS='yes': use 1"):
        ensure_synrrsis(str(tmp_path / "other"), SMALL)


def test_ensure_leaves_a_foreign_synrrsis_folder_alone(tmp_path):
    (tmp_path / "synrrsis").mkdir()
    (tmp_path / "synrrsis" / "mine.txt").write_text("user data")
    with pytest.raises(FileNotFoundError, match="has no synrrsis info.json"):
        ensure_synrrsis(str(tmp_path), SMALL, generate=True)
    assert (tmp_path / "synrrsis" / "mine.txt").read_text() == "user data"


def test_prepare_script(tmp_path, monkeypatch, capsys):
    script = os.path.join(os.path.dirname(__file__), "..", "datasets", "prepare_synrrsis.py")
    argv = ["prepare_synrrsis.py", "--root", str(tmp_path), "--num-train", "2", "--num-val", "1",
            "--num-test", "1", "--image-size", "128"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(script, run_name="__main__")
    out = capsys.readouterr().out
    assert f"Writing synrrsis to {tmp_path / 'synrrsis'}" in out and f"synrrsis v{SYNRRSIS_VERSION}" in out
    lines = (tmp_path / "synrrsis" / "train.jsonl").read_text().splitlines()
    assert 4 <= len(lines) <= 6
    assert load_gt_mask(_load_synrrsis(str(tmp_path), "train")[0]).shape == (128, 128)


@pytest.mark.parametrize("bad", [{"category": "bridge"}, {"template": "nearest"}])
def test_unknown_spec_is_refused(bad):
    rng = np.random.default_rng(0)
    scene = generate_scene(rng, 256)
    spec = dict({"template": "color", "category": scene.objects[0].category, "color": "red"}, **bad)
    if "category" in bad:
        assert refers_to(spec, scene) == []
    else:
        with pytest.raises(ValueError, match="Unknown synrrsis template"):
            refers_to(spec, scene)
