"""The catalogue's admin: one module per page family, each registering its own ModelAdmin."""

from .products import ProductAdmin

__all__ = ["ProductAdmin"]
