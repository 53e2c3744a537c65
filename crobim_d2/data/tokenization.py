"""Expression tokenization: uncased WordPiece, padded/truncated to ``INPUT.MAX_TOKENS``.

The one place expressions become tokens (the mapper, ``RRSISPredictor`` and crobim-predict all call
``encode_expression``), so it is also where an expression the model cannot read is reported: one cut by
``INPUT.MAX_TOKENS``, or one with no known word (every token ``[UNK]``, punctuation or a symbol: Chinese
characters absent from the vocabulary, emoji, "?!").
"""
import functools
import logging
import os
import unicodedata

import torch
from transformers import BertTokenizerFast

from ..pretrained import BUNDLED_VOCAB, resolve_text_encoder_weights

logger = logging.getLogger(__name__)
# Expressions of one kind reported one by one before the warnings stop (a dataset of long expressions would
# flood the log); crobim-check-dataset counts them all.
MAX_WARNINGS = 5


class _CappedWarning:
    """Logs the first ``MAX_WARNINGS`` messages of one kind, then says that further ones are not reported."""

    def __init__(self, kind: str):
        self.kind = kind
        self.count = 0

    def __call__(self, message: str) -> None:
        self.count += 1
        if self.count > MAX_WARNINGS:
            return
        more = "" if self.count < MAX_WARNINGS else f" (further {self.kind} are not reported)"
        logger.warning(message + more + ".")


_warn_truncated = _CappedWarning("truncations")
_warn_unknown = _CappedWarning("expressions without a known word")


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
            _warn_truncated(
                f"Expression {expression!r} has {n} tokens with [CLS] and [SEP]; only the first {max_tokens} "
                f"are kept (INPUT.MAX_TOKENS={max_tokens}; raise it to keep every word)"
            )
    if not has_known_word(tokenizer, enc["input_ids"]):
        _warn_unknown(
            f"Expression {expression!r} has no word of the tokenizer's vocabulary (tokens "
            f"{tokenizer.tokenize(expression)}): the model reads no text from it; write it in the language "
            "of MODEL.TEXT_ENCODER.WEIGHTS (English for the defaults)"
        )
    return (
        torch.tensor(enc["input_ids"], dtype=torch.long),
        torch.tensor(enc["attention_mask"], dtype=torch.long),
    )


def _is_word(token: str) -> bool:
    return any(unicodedata.category(c)[0] in "LN" for c in token)


def has_known_word(tokenizer: BertTokenizerFast, input_ids: list[int]) -> bool:
    """Whether some token is a vocabulary word piece: not special ([UNK], [CLS], ...) nor only punctuation or
    symbols."""
    special = set(tokenizer.all_special_ids)
    kept = [i for i in input_ids if i not in special]
    return any(_is_word(t) for t in tokenizer.convert_ids_to_tokens(kept))


def inspect_expression(tokenizer: BertTokenizerFast, expression: str) -> tuple[int, bool]:
    """``(tokens with [CLS] and [SEP], has a known word)`` of the whole expression, without warnings."""
    ids = tokenizer(expression)["input_ids"]
    return len(ids), has_known_word(tokenizer, ids)
