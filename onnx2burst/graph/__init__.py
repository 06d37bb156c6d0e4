"""Graph passes of stage 1 (canonicalisation), one module each, and the small graph index
they share. ``canonicalize(model)`` runs them in order."""
from .passes import Canonical, canonicalize
from .index import GraphIndex, default_opset, topological_sort
from .shapes import infer_shapes, tensor_info

__all__ = ["Canonical", "canonicalize", "GraphIndex", "default_opset", "topological_sort",
           "infer_shapes", "tensor_info"]
