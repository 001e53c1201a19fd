"""What the recommender is doing, per backbone: for the admin and for operators."""

from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Exists

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
    """The active backbone first, then every other backbone that has embeddings. A photo counts once:
    embedded or failed if its embedding is current (content, and labels where the vectors carry
    them), else pending."""
    used = set(ImageEmbedding.objects.order_by().values_list("backbone", flat=True).distinct()) - {active.name}
    backbones = [active] + [space for space in map(_space, sorted(used)) if space is not None]

    def count(backbone: Backbone, status: str) -> int:
        current = ImageEmbedding.objects.current_for(backbone).filter(status=status)
        return ProductImage.objects.filter(Exists(current)).count()

    return [
        BackboneStatus(
            backbone=backbone.name,
            active=backbone == active,
            embedded=count(backbone, ImageEmbedding.Status.DONE),
            failed=count(backbone, ImageEmbedding.Status.FAILED),
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
