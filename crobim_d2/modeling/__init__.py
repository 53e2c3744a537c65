import importlib.util

from . import ops  # noqa: F401  (torch only)

if importlib.util.find_spec("detectron2") is not None:
    pass
