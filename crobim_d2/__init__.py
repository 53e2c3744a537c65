"""CroBIM (Dong et al., arXiv 2410.08613) as a Detectron2 plugin.

Importing the package registers the meta-architecture, backbones, datasets and mappers with Detectron2.
The deformable-attention op (``crobim_d2.modeling.ops``) needs only torch, so the package also imports
where detectron2 is absent (e.g. a GPU machine used to check the CUDA kernels); then only the op is available.
"""
import importlib.util

HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None

if HAS_DETECTRON2:
    from . import (
        data,  # noqa: F401  (registers datasets)
        evaluation,  # noqa: F401
        modeling,  # noqa: F401  (registers the meta-architecture and backbones)
    )
    from .config import add_crobim_config  # noqa: F401
    from .predictor import RRSISPredictor  # noqa: F401
