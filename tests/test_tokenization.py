import pytest

from crobim_d2.data.tokenization import build_tokenizer, encode_expression
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
    from crobim_d2.data import tokenization

    monkeypatch.setattr(tokenization, "_truncations", 0)
    tok = build_tokenizer("")
    with caplog.at_level("WARNING", logger="crobim_d2.data.tokenization"):
        encode_expression(tok, "the tank", 20)
        encode_expression(tok, "a b c d e f g h", 10)  # exactly 10 tokens: nothing cut
        assert not caplog.records
        encode_expression(tok, "tank " * 50, 20)
    assert len(caplog.records) == 1
    assert "52 tokens" in caplog.text and "INPUT.MAX_TOKENS=20" in caplog.text
    for _ in range(tokenization.MAX_TRUNCATION_WARNINGS + 3):
        encode_expression(tok, "tank " * 50, 20)
    assert len(caplog.records) == tokenization.MAX_TRUNCATION_WARNINGS
