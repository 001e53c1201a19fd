import numpy as np
from django.db import models
from django.utils import timezone

from catalog.models import ProductImage


class ImageEmbedding(models.Model):
    """One image's embedding under one backbone, or the reason it could not be computed."""

    class Status(models.TextChoices):
        DONE = "done", "embedded"
        FAILED = "failed", "failed"

    image = models.ForeignKey(ProductImage, on_delete=models.CASCADE, related_name="embeddings")
    backbone = models.CharField(max_length=32)
    image_checksum = models.CharField(max_length=64, help_text="Checksum of the image content it was computed from.")
    status = models.CharField(max_length=8, choices=Status.choices)
    vector = models.BinaryField(null=True, editable=False, help_text="float32, unit length")
    dimension = models.PositiveIntegerField(null=True)
    error = models.TextField(blank=True)
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["image", "backbone"], name="one_embedding_per_image_and_backbone")
        ]
        indexes = [models.Index(fields=["backbone", "computed_at"], name="embedding_backbone_time")]

    def __str__(self):
        return f"{self.backbone} embedding of image {self.image_id} ({self.status})"

    @property
    def array(self) -> np.ndarray:
        return np.frombuffer(self.vector, dtype=np.float32)
