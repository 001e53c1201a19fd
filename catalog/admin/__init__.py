"""The catalogue's admin: one module per page family, each registering its own ModelAdmin."""

from .bulk_upload import BulkUploadAdmin
from .products import ProductAdmin

__all__ = ["BulkUploadAdmin", "ProductAdmin"]
