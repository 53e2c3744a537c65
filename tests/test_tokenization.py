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
