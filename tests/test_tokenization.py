import pytest

from crobim_d2.data import tokenization
from crobim_d2.data.tokenization import build_tokenizer, encode_expression, inspect_expression
from crobim_d2.pretrained import OFFLINE_MINILM


@pytest.mark.parametrize("weights", ["", OFFLINE_MINILM])
def test_encode_pads_and_truncates(weights):
    tok = build_tokenizer(weights)
    ids, mask = encode_expression(tok, "The white storage tank at the top right", 20)
    assert ids.shape == (20,) and mask.shape == (20,)
    assert ids[0].item() == tok.cls_token_id
    n = int(mask.sum())
    assert ids[n - 1].item() == tok.sep_token_id and (ids[n:] == tok.pad_token_id).all()
    long_ids, long_mask = encode_expression(tok, "tank " * 50, 20)
    assert long_mask.sum() == 20 and long_ids[-1].item() == tok.sep_token_id


def test_bundled_and_minilm_vocab_agree():
    a, _ = encode_expression(build_tokenizer(""), "left of the blue court", 12)
    b, _ = encode_expression(build_tokenizer(OFFLINE_MINILM), "left of the blue court", 12)
    assert a.tolist() == b.tolist()


def test_empty_expression_is_refused():
    with pytest.raises(ValueError, match="Empty referring expression"):
        encode_expression(build_tokenizer(""), "   ", 20)


def test_model_dir_without_vocab_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        build_tokenizer(str(tmp_path))


def test_truncation_is_reported_with_the_key(caplog, monkeypatch):
    monkeypatch.setattr(tokenization._warn_truncated, "count", 0)
    tok = build_tokenizer("")
    with caplog.at_level("WARNING", logger="crobim_d2.data.tokenization"):
        encode_expression(tok, "the tank", 20)
        encode_expression(tok, "a b c d e f g h", 10)  # exactly 10 tokens: nothing cut
        assert not caplog.records
        encode_expression(tok, "tank " * 50, 20)
    assert len(caplog.records) == 1
    assert "52 tokens" in caplog.text and "INPUT.MAX_TOKENS=20" in caplog.text
    for _ in range(tokenization.MAX_WARNINGS + 3):
        encode_expression(tok, "tank " * 50, 20)
    assert len(caplog.records) == tokenization.MAX_WARNINGS
    assert "further truncations are not reported" in caplog.records[-1].getMessage()


@pytest.mark.parametrize("expression", ["🚢🚢", "?!...", "储罐", "… —"])
def test_expression_without_a_known_word_warns(expression, caplog, monkeypatch):
    monkeypatch.setattr(tokenization._warn_unknown, "count", 0)
    tok = build_tokenizer("")
    with caplog.at_level("WARNING", logger="crobim_d2.data.tokenization"):
        _, mask = encode_expression(tok, expression, 10)
    assert len(caplog.records) == 1 and "has no word of the tokenizer's vocabulary" in caplog.text
    assert repr(expression) in caplog.text and "MODEL.TEXT_ENCODER.WEIGHTS" in caplog.text
    assert mask.sum() >= 3  # still encoded: [CLS], the tokens, [SEP]
    assert inspect_expression(tok, expression)[1] is False


@pytest.mark.parametrize("expression", ["the 🚢", "储罐 tank", "xqzv", "白色的储罐", "3"])
def test_expression_with_a_known_word_is_quiet(expression, caplog):
    tok = build_tokenizer("")
    with caplog.at_level("WARNING", logger="crobim_d2.data.tokenization"):
        encode_expression(tok, expression, 20)
    assert not caplog.records
    n, known = inspect_expression(tok, expression)
    assert known and n == len(tok(expression)["input_ids"])
