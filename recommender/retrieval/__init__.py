"""From a query vector to catalogue products: index versions, their readers and the search itself.

The rest of the app uses only what is named here.
"""

from .build import BuildResult, build_index, index_is_stale
from .reader import index_in_use
from .search import Neighbour, nearest_products
from .versions import IndexManifest, current_manifest, current_version, version_size

__all__ = [
    "BuildResult",
    "IndexManifest",
    "Neighbour",
    "build_index",
    "current_manifest",
    "current_version",
    "index_in_use",
    "index_is_stale",
    "nearest_products",
    "version_size",
]
