"""RRSISPredictor: loads MODEL.WEIGHTS, matches the evaluation path exactly, full-resolution float32 output,
errors, and no process-wide settings of its own."""
import numpy as np
import pytest
import torch
from _tiny_train_config import tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image

from crobim_d2 import RRSISPredictor
from crobim_d2.data import RRSISDatasetMapper
from crobim_d2.engine import allocator
from crobim_d2.inference import ConfigError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model with random weights saved as a checkpoint, and its config pointing to it."""
    out = tmp_path_factory.mktemp("predictor")
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(out)).save("model")
    cfg.MODEL.WEIGHTS = str(out / "model.pth")
    return cfg, model


def test_predictor_loads_weights_and_matches_the_mapper_path(saved, tmp_path):
    cfg, model = saved
    torch.manual_seed(1)  # a different initialization: the checkpoint must overwrite it
    predictor = RRSISPredictor(cfg)
    for k, v in model.state_dict().items():
        assert torch.equal(predictor.model.state_dict()[k], v), k
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    prob = predictor(image, "the vehicle at the top left")
    assert prob.shape == (50, 70) and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0

    Image.fromarray(image).save(tmp_path / "image.png")
    record = {"file_name": str(tmp_path / "image.png"), "height": 50, "width": 70,
              "sentence": "the vehicle at the top left"}
    model.eval()
    with torch.no_grad():
        expected = model([RRSISDatasetMapper(cfg, is_train=False)(record)])[0]["ref_seg"].numpy()
    np.testing.assert_array_equal(prob, expected)  # one test-time preparation: the same numbers
    assert not np.allclose(prob, predictor(image, "the blue ship in the center"))
    small = predictor.predict_at_model_size(image, "the vehicle at the top left")
    assert small.shape == (64, 64) and small.dtype == np.float32
    resized = torch.nn.functional.interpolate(torch.from_numpy(small)[None, None], size=(50, 70), mode="bilinear")
    np.testing.assert_array_equal(resized[0, 0].numpy(), prob)


def test_predictor_rejects_bad_inputs(saved):
    predictor = RRSISPredictor(saved[0])
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="non-empty referring expression"):
        predictor(image, "  ")
    with pytest.raises(ValueError, match=r"RGB uint8 array \(H, W, 3\), got float32"):
        predictor(image.astype(np.float32), "the car")
    with pytest.raises(ValueError, match=r"got uint8 \(32, 32\)"):
        predictor(image[:, :, 0], "the car")


def test_predictor_missing_weights_names_the_key(tmp_path):
    cfg = tiny_cfg("MODEL.WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="MODEL.WEIGHTS=.*does not exist"):
        RRSISPredictor(cfg)


def test_predictor_leaves_process_settings_to_the_program(saved, monkeypatch):
    def fail():
        raise AssertionError("RRSISPredictor changed the process's allocator")

    monkeypatch.setattr(allocator, "reuse_freed_memory", fail)
    RRSISPredictor(saved[0])


def test_predictor_from_config_file(saved, tmp_path):
    cfg, _ = saved
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.dump())
    predictor = RRSISPredictor.from_config_file(str(config), weights=cfg.MODEL.WEIGHTS, device="cpu")
    assert predictor.cfg.MODEL.WEIGHTS == cfg.MODEL.WEIGHTS and predictor.cfg.is_frozen()
    image = np.zeros((40, 40, 3), np.uint8)
    np.testing.assert_array_equal(predictor(image, "the car"), RRSISPredictor(cfg)(image, "the car"))


def test_predictor_warns_on_an_expression_without_a_known_word(saved, caplog, monkeypatch):
    from crobim_d2.data import tokenization

    monkeypatch.setattr(tokenization._warn_unknown, "count", 0)
    predictor = RRSISPredictor(saved[0])

    def warnings():
        return [r.getMessage() for r in caplog.records if r.name == "crobim_d2.data.tokenization"]

    with caplog.at_level("WARNING", logger="crobim_d2.data.tokenization"):
        predictor(np.zeros((32, 32, 3), np.uint8), "the car")
        assert not warnings()
        prob = predictor(np.zeros((32, 32, 3), np.uint8), "🚗🚗")
    assert prob.shape == (32, 32)
    assert len(warnings()) == 1 and "'🚗🚗' has no word of the tokenizer's vocabulary" in warnings()[0]
