"""Multi-scale deformable attention: compiled CPU/CUDA kernels (``csrc/``) and a pure-PyTorch reference.

Needs only torch; importing never fails when the extension is missing (see ``extension_info()``).
"""
from .functions import cuda_compiled, extension_info, ms_deform_attn
from .modules import MSDeformAttn
from .reference import ms_deform_attn_pytorch

__all__ = ["MSDeformAttn", "cuda_compiled", "extension_info", "ms_deform_attn", "ms_deform_attn_pytorch"]
