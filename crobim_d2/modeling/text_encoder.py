"""BERT text encoder that reads CAPM's context-aware prompts together with the expression (Sec. IV-A).

The prompts P_v (N, N_p, D_l) are appended after the T token embeddings and the joint sequence goes through
BERT: L_v = BERT([T; P_v]) of length l_m + N_p, with the attention mask extended by ones for the prompts.
Reading chosen: the prompts enter where word embeddings enter, so BERT's embedding layer adds position
embeddings T..T+N_p-1 and token type 0 and applies its LayerNorm, exactly as for extra tokens after the
(padded) expression. [CLS] stays at index 0. The pooler is not built (it would get no gradient under DDP).
BERT always runs in float32, also under autocast: for ~24 tokens, casting its ~85M weights to bfloat16 on
every call costs more than the float32 matmuls it would speed up.
"""

import torch
from detectron2.config import configurable
from torch import nn
from transformers import BertConfig, BertModel

from ..pretrained import resolve_text_encoder_weights


def build_bert(
    weights_dir: str | None, num_layers: int, hidden_size: int, num_heads: int, intermediate_size: int
) -> BertModel:
    """BertModel from a local directory, or bert-base-uncased-shaped (by the given sizes) with random weights."""
    if weights_dir is not None:
        return BertModel.from_pretrained(weights_dir, local_files_only=True, add_pooling_layer=False)
    if hidden_size % num_heads != 0:
        raise ValueError(
            f"MODEL.TEXT_ENCODER.HIDDEN_SIZE={hidden_size} must be divisible by "
            f"MODEL.TEXT_ENCODER.NUM_HEADS={num_heads}."
        )
    config = BertConfig(
        num_hidden_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
    )
    return BertModel(config, add_pooling_layer=False)


class TextEncoder(nn.Module):
    """Hugging Face BertModel over expression tokens plus appended context-aware prompts."""

    @configurable
    def __init__(self, *, bert: BertModel, freeze: bool = False):
        """``freeze``: BERT's weights get no gradient (the prompts still get theirs through BERT)."""
        super().__init__()
        self.bert = bert
        self.bert.requires_grad_(not freeze)

    @classmethod
    def from_config(cls, cfg) -> dict:
        te = cfg.MODEL.TEXT_ENCODER
        weights_dir = resolve_text_encoder_weights(te.WEIGHTS)
        return {
            "bert": build_bert(weights_dir, te.NUM_LAYERS, te.HIDDEN_SIZE, te.NUM_HEADS, te.INTERMEDIATE_SIZE),
            "freeze": te.FREEZE,
        }

    @property
    def hidden_size(self) -> int:
        return self.bert.config.hidden_size

    def forward(
        self, lang_tokens: torch.Tensor, lang_mask: torch.Tensor, prompts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """lang_tokens, lang_mask (N, T) int64; prompts (N, N_p, D_l) -> L_v (N, T+N_p, D_l), mask (N, T+N_p)."""
        with torch.autocast(lang_tokens.device.type, enabled=False):
            return self._encode(lang_tokens, lang_mask, prompts)

    def _encode(
        self, lang_tokens: torch.Tensor, lang_mask: torch.Tensor, prompts: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = self.bert.get_input_embeddings()(lang_tokens)
        mask = lang_mask
        if prompts is not None:
            embeds = torch.cat([embeds, prompts.to(embeds.dtype)], dim=1)
            mask = torch.cat([lang_mask, lang_mask.new_ones(prompts.shape[:2])], dim=1)
        if embeds.shape[1] > self.bert.config.max_position_embeddings:
            raise ValueError(
                f"{embeds.shape[1]} tokens + prompts exceed BERT's {self.bert.config.max_position_embeddings} "
                "positions; lower INPUT.MAX_TOKENS or MODEL.CROBIM.NUM_PROMPTS."
            )
        out = self.bert(inputs_embeds=embeds, attention_mask=mask)
        return out.last_hidden_state, mask
