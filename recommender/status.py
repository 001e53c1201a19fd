"""What the recommender is doing, per backbone: for the admin and for operators."""

from dataclasses import dataclass

from catalog.models import ProductImage

from .backbones import BACKBONES, get_backbone
from .embedding import images_missing_embeddings
from .index import IndexManifest, current_manifest, current_version_dir
from .models import ImageEmbedding


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


def recommender_status() -> list[BackboneStatus]:
    """The active backbone first, then every other backbone that has embeddings."""
    active = get_backbone().name
    counts: dict[tuple[str, str], int] = {}
    for backbone, status, count in _status_counts():
        counts[backbone, status] = count
    used = {backbone for backbone, _ in counts}
    statuses = []
    for name in [active] + sorted(used - {active}):
        if name not in BACKBONES:
            continue
        directory = current_version_dir(name)
        statuses.append(
            BackboneStatus(
                backbone=name,
                active=name == active,
                embedded=counts.get((name, ImageEmbedding.Status.DONE), 0),
                failed=counts.get((name, ImageEmbedding.Status.FAILED), 0),
                pending=images_missing_embeddings(name).count(),
                index=current_manifest(name),
                index_bytes=sum(p.stat().st_size for p in directory.iterdir())
                if directory and directory.is_dir()
                else 0,
            )
        )
    return statuses


def _status_counts():
    from django.db.models import Count

    return (
        ImageEmbedding.objects.filter(image__in=ProductImage.objects.all())
        .values_list("backbone", "status")
        .annotate(count=Count("pk"))
        .order_by()
    )
