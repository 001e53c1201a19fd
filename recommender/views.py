from django.http import JsonResponse
from django.views.decorators.http import require_GET

from .backbones import get_backbone
from .index import index_reader


@require_GET
def index_status(request):
    """Which index this web process answers from (for health checks and operators)."""
    backbone = get_backbone().name
    loaded = index_reader(backbone).get()
    manifest = loaded.manifest if loaded else None
    return JsonResponse(
        {
            "backbone": backbone,
            "search": "index" if loaded else "exact",
            "index_version": manifest.version if manifest else None,
            "index_items": manifest.items if manifest else None,
        }
    )
