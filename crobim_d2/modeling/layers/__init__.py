"""Building blocks shared by the paper modules: attention (with the model's precision policy), linear layers
through oneDNN on the CPU (fused for inference, and the image encoders' layers), depthwise convolutions
with a fast CPU backward, position encodings on cell centres, and the mapping of configured stage names to
positions."""

from .attention import Attention, fold_heads, folded_query_softmax, scaled_dot_product_attention
from .conv import DepthwiseConv2d, use_fast_depthwise
from .linear import (
    OneDNNLinear,
    OneDNNMlp,
    fused_linear,
    fused_linear_applies,
    set_onednn_policy,
    use_onednn_linears,
)
from .position import cell_centres, cell_position_encoding, sine_position_encoding
from .stages import stage_indices

__all__ = [
    "Attention",
    "DepthwiseConv2d",
    "OneDNNLinear",
    "OneDNNMlp",
    "cell_centres",
    "cell_position_encoding",
    "fold_heads",
    "folded_query_softmax",
    "fused_linear",
    "fused_linear_applies",
    "scaled_dot_product_attention",
    "set_onednn_policy",
    "sine_position_encoding",
    "stage_indices",
    "use_fast_depthwise",
    "use_onednn_linears",
]
