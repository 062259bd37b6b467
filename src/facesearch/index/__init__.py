"""Vector indexes: the ``VectorIndex`` protocol and its backends."""
from facesearch.index.base import VectorIndex

__all__ = ["VectorIndex"]
