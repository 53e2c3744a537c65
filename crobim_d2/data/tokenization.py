"""Expression tokenization: uncased WordPiece, padded/truncated to ``INPUT.MAX_TOKENS``."""
import functools
import os

import torch
from transformers import BertTokenizerFast

from ..pretrained import BUNDLED_VOCAB, resolve_text_encoder_weights


@functools.lru_cache(maxsize=8)
def build_tokenizer(weights: str = "") -> BertTokenizerFast:
    """The tokenizer matching ``MODEL.TEXT_ENCODER.WEIGHTS`` (cached: building it reads the vocab file)."""
    path = resolve_text_encoder_weights(weights)
    if path is None:
        path = os.path.dirname(BUNDLED_VOCAB)
    elif not os.path.isfile(os.path.join(path, "vocab.txt")):
        raise FileNotFoundError(
            f"MODEL.TEXT_ENCODER.WEIGHTS={weights!r}: {path} has no vocab.txt; a BERT model directory "
            "needs its WordPiece vocabulary next to config.json."
        )
    return BertTokenizerFast.from_pretrained(path, local_files_only=True)


def encode_expression(
    tokenizer: BertTokenizerFast, expression: str, max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(lang_tokens, lang_mask)``, both int64 of shape ``(max_tokens,)``; [CLS] first, [SEP] kept."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError(
            f"Empty referring expression {expression!r}: every record needs a non-empty 'sentence'."
        )
    enc = tokenizer(
        expression,
        max_length=max_tokens,
        truncation=True,
        padding="max_length",
        return_attention_mask=True,
    )
    return (
        torch.tensor(enc["input_ids"], dtype=torch.long),
        torch.tensor(enc["attention_mask"], dtype=torch.long),
    )
