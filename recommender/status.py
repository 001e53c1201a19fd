"""What the recommender is doing, per backbone: for the admin and for operators."""

from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Count

from catalog.models import ProductImage

from .active import space_by_name
from .encoding.backbones import Backbone
from .encoding.projection import ModelArtifactError
from .models import ImageEmbedding
from .retrieval import IndexManifest, current_manifest, version_size


@dataclass(frozen=True)
class BackboneStatus:
    backbone: str
    active: bool
    embedded: int
    failed: int
    pending: int
    index: IndexManifest | None
    index_bytes: int

    @property
    def index_age_seconds(self) -> float | None:
        return self.index.age_seconds if self.index else None


def recommender_status(active: Backbone) -> list[BackboneStatus]:
    """The active backbone first, then every other backbone that has embeddings."""
    counts = {
        (backbone, status): count
        for backbone, status, count in ImageEmbedding.objects.filter(image__in=ProductImage.objects.all())
        .values_list("backbone", "status")
        .annotate(count=Count("pk"))
        .order_by()
    }
    used = {name for name, _ in counts} - {active.name}
    backbones = [active] + [space for space in map(_space, sorted(used)) if space is not None]
    return [
        BackboneStatus(
            backbone=backbone.name,
            active=backbone == active,
            embedded=counts.get((backbone.name, ImageEmbedding.Status.DONE), 0),
            failed=counts.get((backbone.name, ImageEmbedding.Status.FAILED), 0),
            pending=ImageEmbedding.objects.missing_images(backbone).count(),
            index=current_manifest(backbone),
            index_bytes=version_size(backbone),
        )
        for backbone in backbones
    ]


def _space(name: str) -> Backbone | None:
    try:
        return space_by_name(name)
    except (ModelArtifactError, ImproperlyConfigured):  # a model's files gone, a backbone no longer offered
        return None
