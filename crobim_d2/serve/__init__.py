"""``crobim-serve``: a web page (Gradio) on crobim-predict's inference path; the page is in ``page``, the
request handler (no Gradio) in ``service``."""

from .service import SceneService, ServeResult  # noqa: F401
