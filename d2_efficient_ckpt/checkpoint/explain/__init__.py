"""Recognisers that explain why a checkpoint and a model differ.

``base`` holds the registry (``@recogniser``) and :func:`explain`. Each other module holds
recognisers that register themselves when imported; this package imports them all, as
detectron2's ``checkpoint/__init__.py`` imports its catalog, so importing any part of
``explain`` makes every recogniser available.
"""

from . import backbone, heads, name_schemes, retinanet, widths, wrappers  # noqa: F401 (registration)
from .base import ExplainContext, Explanation, dataset_classes, explain, recogniser

__all__ = ["ExplainContext", "Explanation", "dataset_classes", "explain", "recogniser"]
