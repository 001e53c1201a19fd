from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.db import models
from django.db.models import Count, Exists, Max, OuterRef
from django.utils import timezone

from catalog.models import ProductImage

from .labels import current_vector_labels


class VectorField(models.BinaryField):
    """A float32 vector stored as bytes; the one place where bytes become arrays and back."""

    def from_db_value(self, value, expression, connection):
        return None if value is None else np.frombuffer(value, dtype=np.float32)

    def to_python(self, value):
        if value is None or isinstance(value, np.ndarray):
            return value
        return np.frombuffer(bytes(value), dtype=np.float32)

    def get_prep_value(self, value):
        if isinstance(value, np.ndarray):
            value = np.ascontiguousarray(value, dtype=np.float32).tobytes()
        return super().get_prep_value(value)


@dataclass(frozen=True)
class EmbeddingStamp:
    """What a set of stored embeddings looked like: how many, and the newest one's time."""

    count: int
    latest: datetime | None


class ImageEmbeddingQuerySet(models.QuerySet):
    def for_backbone(self, backbone) -> "ImageEmbeddingQuerySet":
        return self.filter(backbone=backbone.name)

    def done(self) -> "ImageEmbeddingQuerySet":
        return self.filter(status=ImageEmbedding.Status.DONE)

    def stamp(self) -> EmbeddingStamp:
        summary = self.aggregate(count=Count("pk"), latest=Max("computed_at"))
        return EmbeddingStamp(summary["count"], summary["latest"])

    def as_matrix(self, dimension: int) -> tuple[np.ndarray, np.ndarray]:
        """(image ids, (rows, dimension) float32 vectors), ordered by image id."""
        image_ids, vectors = [], []
        for image_id, vector in self.order_by("image_id").values_list("image_id", "vector").iterator(chunk_size=2000):
            image_ids.append(image_id)
            vectors.append(vector)
        matrix = np.vstack(vectors) if vectors else np.zeros((0, dimension), np.float32)
        return np.array(image_ids, dtype=np.int64), matrix

    def vectors_of(self, pks: list[int], dimension: int) -> np.ndarray | None:
        """The vectors of these embeddings, in the order given; None if one of them is gone."""
        found = dict(self.filter(pk__in=pks).values_list("pk", "vector"))
        if len(found) != len(pks):
            return None
        return np.vstack([found[pk] for pk in pks]) if pks else np.zeros((0, dimension), np.float32)

    def current_for(self, backbone) -> "ImageEmbeddingQuerySet":
        """The embedding (done or failed), in this space, of the outer ProductImage row's current
        content; in a trained model's space whose vectors carry products' labels, of its product's
        current labels too."""
        current = self.filter(image=OuterRef("pk"), backbone=backbone.name, image_checksum=OuterRef("checksum"))
        if backbone.trained is not None and backbone.trained.head.carries_catalogue_labels:
            current = current.filter(labels=current_vector_labels("product"))
        return current

    def missing_images(self, backbone):
        """Catalogue images with no current embedding (done or failed) in this space."""
        return ProductImage.objects.filter(~Exists(self.current_for(backbone)))


class ImageEmbedding(models.Model):
    """One image's embedding under one backbone, or the reason it could not be computed."""

    class Status(models.TextChoices):
        DONE = "done", "embedded"
        FAILED = "failed", "failed"

    image = models.ForeignKey(ProductImage, on_delete=models.CASCADE, related_name="embeddings")
    backbone = models.CharField(max_length=32)
    image_checksum = models.CharField(max_length=64, help_text="Checksum of the image content it was computed from.")
    labels = models.CharField(
        max_length=128,
        blank=True,
        db_default="",  # what rows written by a process that predates the field get
        help_text="A trained model's: the product's labels it was computed with.",
    )
    status = models.CharField(max_length=8, choices=Status.choices)
    vector = VectorField(null=True, editable=False, help_text="float32, unit length")
    dimension = models.PositiveIntegerField(null=True)
    error = models.TextField(blank=True)
    computed_at = models.DateTimeField(default=timezone.now)

    objects = ImageEmbeddingQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["image", "backbone"], name="one_embedding_per_image_and_backbone")
        ]
        indexes = [models.Index(fields=["backbone", "computed_at"], name="embedding_backbone_time")]

    def __str__(self):
        return f"{self.backbone} embedding of image {self.image_id} ({self.status})"


class EmbeddingModelQuerySet(models.QuerySet):
    def active(self) -> "EmbeddingModel | None":
        return self.filter(status=EmbeddingModel.Status.ACTIVE).first()


class EmbeddingModel(models.Model):
    """An embedding model trained on the catalogue (its files live in TRAINED_MODEL_DIR/<version>/).

    At most one is active: its vectors and index answer shoppers. Until one is, and whenever the
    active one cannot be loaded, the frozen backbone answers."""

    class Status(models.TextChoices):
        TRAINING = "training", "training"
        READY = "ready", "ready"
        ACTIVATING = "activating", "activating (embedding the catalogue)"
        ACTIVE = "active", "active"
        RETIRED = "retired", "retired"
        FAILED = "failed", "failed"

    version = models.CharField(max_length=24, unique=True)
    base = models.CharField(max_length=32, help_text="The frozen backbone whose vectors the head takes.")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.TRAINING)
    products = models.PositiveIntegerField(default=0, help_text="Catalogue products when it was trained.")
    fingerprint = models.CharField(
        max_length=64, blank=True, help_text="Of the training data: products, photos, labels."
    )
    metrics = models.JSONField(default=dict, blank=True, help_text="Its evaluation on the test split.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    activated_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = EmbeddingModelQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["status"], condition=models.Q(status="active"), name="one_active_embedding_model"
            )
        ]

    def __str__(self):
        return f"trained model {self.version} ({self.get_status_display()})"

    def mark(self, status: str, **fields) -> None:
        """Save a new status (and any other fields given); updated_at moves too, which is how beat
        tells a run that is still going from one whose worker died."""
        self.status = status
        for name, value in fields.items():
            setattr(self, name, value)
        self.save(update_fields=["status", *fields, "updated_at"])

    @property
    def space(self) -> str:
        """The name its vectors and index are kept under (the backbone name of its embedding space)."""
        return f"trained-{self.version}"


class IndexVersionQuerySet(models.QuerySet):
    def current(self, space: str) -> "IndexVersion | None":
        """The version every host serves for `space`: the newest published."""
        return self.filter(space=space).order_by("-published_at", "-pk").first()


class IndexVersion(models.Model):
    """An index version published to the index storage (STORAGES["indexes"]); the database, not any
    host's disk, says which version is current, so that every web host serves the same one."""

    space = models.CharField(max_length=64, help_text="The backbone or trained model whose vectors it holds.")
    version = models.CharField(max_length=64)
    manifest = models.JSONField(help_text="The version's manifest: size, build time, a SHA-256 of each file.")
    published_at = models.DateTimeField(default=timezone.now)

    objects = IndexVersionQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["space", "version"], name="one_index_version_per_space")]
        indexes = [models.Index(fields=["space", "-published_at"], name="index_version_newest")]

    def __str__(self):
        return f"{self.space} index {self.version}"
