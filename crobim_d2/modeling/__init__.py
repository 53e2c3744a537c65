"""The CroBIM network: backbones, text encoder, paper modules and the meta-architecture.

Importing this package registers ``D2SwinTransformer``, ``D2ConvNeXt`` and ``CroBIM`` with Detectron2.
The deformable-attention op (``ops``) needs only torch and is imported first, also without detectron2.
"""

import importlib.util

from . import ops  # noqa: F401  (torch only)

if importlib.util.find_spec("detectron2") is not None:
    from .backbone import D2ConvNeXt, D2SwinTransformer, D2TimmBackbone  # noqa: F401  (registers the backbones)
    from .capm import ContextAwarePromptModulation  # noqa: F401
    from .lgfa import LanguageGuidedFeatureAggregation  # noqa: F401
    from .loss import crobim_loss  # noqa: F401
    from .meta_arch import CroBIM  # noqa: F401  (registers the meta-architecture)
    from .mid import MutualInteractionDecoder  # noqa: F401
    from .text_encoder import TextEncoder  # noqa: F401
