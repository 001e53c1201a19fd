"""What the recommender makes of a catalogue product, for staff: whether each of its photos is
embedded in the active space, and the similar items shoppers see on its page."""

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from django.db import models
from django.db.models import Case, Exists, OuterRef, Subquery, Value, When
from django.db.models.functions import Coalesce

from catalog.models import Product, ProductImage

from .encoding.backbones import Backbone
from .models import ImageEmbedding
from .similar import SimilarItems, similar_products
from .tasks import queue_embeddings


class EmbeddingState(models.TextChoices):
    EMBEDDED = "embedded", "embedded"
    PENDING = "pending", "pending"
    FAILED = "failed", "failed"
    NO_PHOTO = "no_photo", "no photo"  # of a product, never of a photo


def embedding_state(backbone: Backbone) -> Case:
    """The outer ProductImage row's EmbeddingState: pending until its current content is embedded or has failed."""
    current = ImageEmbedding.objects.current_for(backbone)
    return Case(
        When(Exists(current.done()), then=Value(EmbeddingState.EMBEDDED.value)),
        When(Exists(current.filter(status=ImageEmbedding.Status.FAILED)), then=Value(EmbeddingState.FAILED.value)),
        default=Value(EmbeddingState.PENDING.value),
    )


def with_primary_photo_state(products: models.QuerySet, backbone: Backbone) -> models.QuerySet:
    """Products annotated with `primary_photo_state`: the EmbeddingState of their first photo, in one query."""
    primary = (
        ProductImage.objects.filter(product=OuterRef("pk"))
        .order_by("position", "pk")
        .annotate(state=embedding_state(backbone))
        .values("state")[:1]
    )
    return products.annotate(primary_photo_state=Coalesce(Subquery(primary), Value(EmbeddingState.NO_PHOTO.value)))


@dataclass(frozen=True)
class PhotoState:
    image: ProductImage
    state: EmbeddingState
    computed_at: datetime | None  # when it was embedded, or when embedding it failed
    error: str


def photo_states(product: Product, backbone: Backbone) -> list[PhotoState]:
    """Each photo of the product, in display order, with its embedding state in this space."""
    current = ImageEmbedding.objects.current_for(backbone)
    images = product.images.order_by("position", "pk").annotate(
        state=embedding_state(backbone),
        computed_at=Subquery(current.values("computed_at")[:1]),
        error=Subquery(current.values("error")[:1]),
    )
    return [PhotoState(image, EmbeddingState(image.state), image.computed_at, image.error or "") for image in images]


@dataclass(frozen=True)
class ProductPanel:
    backbone: str
    photos: list[PhotoState]
    similar: SimilarItems

    @property
    def waiting(self) -> bool:
        """Some photo is still to be embedded: the panel will change by itself."""
        return any(photo.state == EmbeddingState.PENDING for photo in self.photos)

    @property
    def summary(self) -> str:
        """One sentence saying what the panel shows, announced to screen readers when it changes."""
        counts = Counter(photo.state for photo in self.photos)
        photos = ", ".join(f"{counts[state]} {state.label}" for state in EmbeddingState if counts[state])
        similar = "similar items pending" if self.similar.pending else f"{len(self.similar.neighbours)} similar items"
        return f"Photos: {photos or 'none'}; {similar}."


def product_panel(product: Product, backbone: Backbone) -> ProductPanel:
    """The recommender's view of a product: its photos' states and the similar items the shop shows."""
    return ProductPanel(backbone.name, photo_states(product, backbone), similar_products(product, backbone))


def re_embed_photo(image: ProductImage, backbone: Backbone) -> bool:
    """Forget the photo's embedding in this space and queue it again. False when the task queue is
    unreachable: the photo then has no embedding, so the periodic sweep embeds it later."""
    ImageEmbedding.objects.for_backbone(backbone).filter(image=image).delete()
    return queue_embeddings([image.pk], backbone.name)
