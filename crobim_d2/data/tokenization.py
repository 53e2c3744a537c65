"""Expression tokenization: uncased WordPiece, padded/truncated to ``INPUT.MAX_TOKENS``."""
import functools
import logging
import os

import torch
from transformers import BertTokenizerFast

from ..pretrained import BUNDLED_VOCAB, resolve_text_encoder_weights

logger = logging.getLogger(__name__)
# Truncations reported one by one before the warnings stop (a dataset of long expressions would flood the log).
MAX_TRUNCATION_WARNINGS = 5
_truncations = 0


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
    if enc["attention_mask"][-1] == 1:  # full: it may have been cut (the tokenizer keeps [SEP] last)
        n = len(tokenizer(expression)["input_ids"])
        if n > max_tokens:
            _warn_truncated(expression, n, max_tokens)
    return (
        torch.tensor(enc["input_ids"], dtype=torch.long),
        torch.tensor(enc["attention_mask"], dtype=torch.long),
    )


def _warn_truncated(expression: str, n: int, max_tokens: int) -> None:
    """Say that words of an expression were cut off (as the paper does at 20 tokens), for the first few."""
    global _truncations
    _truncations += 1
    if _truncations > MAX_TRUNCATION_WARNINGS:
        return
    more = "" if _truncations < MAX_TRUNCATION_WARNINGS else " (further truncations are not reported)"
    logger.warning(
        f"Expression {expression!r} has {n} tokens with [CLS] and [SEP]; only the first {max_tokens} are kept "
        f"(INPUT.MAX_TOKENS={max_tokens}; raise it to keep every word){more}."
    )
