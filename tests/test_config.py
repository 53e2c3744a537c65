import os

import pytest
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
