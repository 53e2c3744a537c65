import math
import os

import pytest
import yaml
from detectron2.config import get_cfg

from crobim_d2 import add_crobim_config
from crobim_d2.pretrained import BUNDLED_VOCAB, OFFLINE_MINILM, resolve_text_encoder_weights


def test_paper_defaults():
    cfg = get_cfg()
    add_crobim_config(cfg)
    assert cfg.INPUT.IMAGE_SIZE == 480
    assert cfg.INPUT.MAX_TOKENS == 20
    assert cfg.MODEL.CROBIM.NUM_PROMPTS == 4
    assert cfg.MODEL.CROBIM.LOSS_LAMBDA == pytest.approx(0.9)
    assert cfg.MODEL.TEXT_ENCODER.WEIGHTS == ""
    assert (cfg.MODEL.CROBIM.ADC_FUSION, cfg.MODEL.CROBIM.ADC_GRID_SIZE) == ("sequence", 8)
    assert cfg.MODEL.CROBIM.LGFA_LANGUAGE == "words_and_prompts"
    assert "DATASET_MAPPER_NAME" not in cfg.INPUT  # nothing reads it


def test_text_encoder_weights_resolution(tmp_path):
    assert resolve_text_encoder_weights("") is None
    offline = resolve_text_encoder_weights(OFFLINE_MINILM)
    assert os.path.isfile(os.path.join(offline, "config.json"))
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="MODEL.TEXT_ENCODER.WEIGHTS"):
        resolve_text_encoder_weights(str(missing))


def test_bundled_vocab_is_bert_uncased():
    with open(BUNDLED_VOCAB) as f:
        vocab = f.read().split("\n")
    assert len([v for v in vocab if v]) == 30522
    assert vocab[101] == "[CLS]" and vocab[102] == "[SEP]"


CONFIGS = os.path.join(os.path.dirname(__file__), "..", "projects", "CroBIM", "configs")
PAPER_CONFIGS = [f"{d}/crobim_{b}.yaml" for d in ("rrsisd", "refsegrs", "risbench") for b in ("swin_b", "convnext_b")]
TRAIN_EXPRESSIONS = {"rrsisd": 12181, "refsegrs": 2172, "risbench": 26300}


def load_config(name: str | None):
    cfg = get_cfg()
    add_crobim_config(cfg)
    if name is not None:
        cfg.merge_from_file(os.path.join(CONFIGS, name))
    return cfg


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_carry_the_paper_recipe(name):
    """Sec. V-B and the compared methods' protocol."""
    dataset, backbone = name.split("/")[0], name.split("_", 1)[1][:-5]
    cfg = load_config(name)
    assert cfg.MODEL.META_ARCHITECTURE == "CroBIM"
    if backbone == "swin_b":
        s = cfg.MODEL.SWIN
        assert cfg.MODEL.BACKBONE.NAME == "D2SwinTransformer"
        assert (s.EMBED_DIM, s.DEPTHS, s.NUM_HEADS, s.WINDOW_SIZE) == (128, [2, 2, 18, 2], [4, 8, 16, 32], 12)
        assert s.DROP_PATH_RATE == 0.3
        assert cfg.MODEL.WEIGHTS == "pretrained/swin_base_patch4_window12_384_22k_d2.pth"  # ImageNet-22k
    else:
        c = cfg.MODEL.CONVNEXT
        assert cfg.MODEL.BACKBONE.NAME == "D2ConvNeXt"
        assert (c.DEPTHS, c.DIMS, c.DROP_PATH_RATE) == ([3, 3, 27, 3], [128, 256, 512, 1024], 0.3)
        assert cfg.MODEL.WEIGHTS == "pretrained/convnext_base_smlfr_d2.pth"  # SMLFR, tools/convert_smlfr.py
    te = cfg.MODEL.TEXT_ENCODER
    assert te.WEIGHTS == "pretrained/bert-base-uncased" and not te.FREEZE
    assert (te.NUM_LAYERS, te.HIDDEN_SIZE) == (12, 768)  # bert-base, also when built without weights
    assert (cfg.INPUT.IMAGE_SIZE, cfg.INPUT.MAX_TOKENS, cfg.MODEL.CROBIM.NUM_PROMPTS) == (480, 20, 4)
    assert not cfg.INPUT.RANDOM_BLACK_BOXES.ENABLED and not cfg.INPUT.SPATIAL_FLIP.ENABLED  # no augmentation
    assert cfg.TEST.RRSIS_EVAL_SIZE == 480  # scored at 480x480 like LAVT and RMSIN
    sol = cfg.SOLVER
    assert (sol.OPTIMIZER, sol.BASE_LR, sol.WEIGHT_DECAY, sol.IMS_PER_BATCH) == ("ADAMW", 5e-5, 0.01, 32)
    assert (sol.LR_SCHEDULER_NAME, sol.POLY_LR_POWER, sol.POLY_LR_END, sol.WARMUP_ITERS) == ("WarmupPolyLR", 0.9, 0, 0)
    assert not sol.AMP.ENABLED and sol.BACKBONE_MULTIPLIER == sol.TEXT_ENCODER_MULTIPLIER == 1.0
    n = TRAIN_EXPRESSIONS[dataset]
    assert sol.MAX_ITER == math.ceil(40 * n / 32) and sol.CHECKPOINT_PERIOD == math.ceil(5 * n / 32)
    assert cfg.DATASETS.TRAIN == (f"{dataset}_train",) and cfg.DATASETS.TEST == (f"{dataset}_test",)
    assert cfg.OUTPUT_DIR == f"./output/{dataset}/crobim_{backbone}"
    assert cfg.MODEL.CROBIM.LOSS_LAMBDA == 0.9 and cfg.MODEL.CROBIM.MID_ATTENTION == "cascaded"


def flat_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys += flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]
    return keys


@pytest.mark.parametrize("name", ["Base-RRSIS.yaml", *PAPER_CONFIGS])
def test_configs_override_only_what_differs(name):
    """Mask2Former's arrangement: rrsisd/crobim_swin_b.yaml is complete, crobim_convnext_b.yaml overrides the
    backbone, other datasets override data and schedule; no file restates what its base already gives."""
    with open(os.path.join(CONFIGS, name)) as f:
        raw = yaml.safe_load(f)
    keys = [k for k in flat_keys(raw) if k != "_BASE_"]
    base = raw.get("_BASE_")
    parent = load_config(None if base is None else os.path.normpath(os.path.join(os.path.dirname(name), base)))
    child = load_config(name)
    assert [k for k in keys if _select(child, k) == _select(parent, k)] == []  # restated
    if name.endswith("convnext_b.yaml") and name.startswith("rrsisd/"):
        assert base == "crobim_swin_b.yaml"
        assert sorted(keys) == ["MODEL.BACKBONE.NAME", "MODEL.WEIGHTS", "OUTPUT_DIR"]
    elif not name.startswith(("rrsisd/", "Base")):
        assert base == f"../rrsisd/{os.path.basename(name)}"
        assert sorted(keys) == [
            "DATASETS.TEST", "DATASETS.TRAIN", "OUTPUT_DIR", "SOLVER.CHECKPOINT_PERIOD", "SOLVER.MAX_ITER"
        ]


def _select(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg
