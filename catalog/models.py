import hashlib
import uuid
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector, SearchVectorField
from django.db import models
from django.db.models import Count, F, Prefetch, Q
from django.db.models.functions import Lower
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify

from .colours import colour_family, colours_in_family
from .fields import ProductImageField

# Weighted so that a word in the name outranks the same word in the article type.
SEARCH_DOCUMENT = SearchVector("name", weight="A", config="english") + SearchVector(
    "article_type", weight="B", config="english"
)


class ProductQuerySet(models.QuerySet):
    def with_images(self):
        return self.prefetch_related(Prefetch("images", queryset=ProductImage.objects.order_by("position", "id")))

    def of_colour(self, family: str):
        """Products whose base colour belongs to a colour family (catalog.colours), in any letter case."""
        colours = [colour.lower() for colour in colours_in_family(family)]
        return self.alias(base_colour_lower=Lower("base_colour")).filter(base_colour_lower__in=colours)

    def colour_families(self) -> list[str]:
        """The colour families of these products, by name (products of unknown colour have none)."""
        colours = self.order_by().values_list("base_colour", flat=True).distinct()
        return sorted({colour_family(colour) for colour in colours} - {""})

    def matching(self, text: str):
        """Products whose name (or article type) matches the shopper's keywords."""
        return self.filter(search_document=_keywords(text))

    def search(self, text: str):
        """Like `matching`, best matches first."""
        return (
            self.matching(text).annotate(rank=SearchRank(F("search_document"), _keywords(text))).order_by("-rank", "pk")
        )


def _keywords(text: str) -> SearchQuery:
    # websearch syntax: quoted phrases, "or", and -word never raise a syntax error.
    return SearchQuery(text, config="english", search_type="websearch")


def product_slug(name: str) -> str:
    return slugify(name)[:255] or "product"


class Product(models.Model):
    sku = models.CharField("SKU", max_length=64, unique=True, help_text="Stable external id, e.g. the supplier's.")
    name = models.CharField(max_length=255)
    slug = models.SlugField(max_length=255, editable=False)
    gender = models.CharField(max_length=32, blank=True)
    master_category = models.CharField(max_length=64, blank=True)
    sub_category = models.CharField(max_length=64, blank=True)
    article_type = models.CharField(max_length=64, blank=True)
    base_colour = models.CharField(max_length=32, blank=True)
    season = models.CharField(max_length=16, blank=True)
    year = models.PositiveSmallIntegerField(null=True, blank=True)
    usage = models.CharField(max_length=32, blank=True)
    search_document = models.GeneratedField(
        expression=SEARCH_DOCUMENT, output_field=SearchVectorField(), db_persist=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProductQuerySet.as_manager()

    class Meta:
        ordering = ["pk"]
        indexes = [
            models.Index(fields=["gender"]),
            models.Index(fields=["master_category"]),
            models.Index(fields=["sub_category"]),
            models.Index(fields=["article_type"]),
            models.Index(fields=["base_colour"]),
            models.Index(fields=["season"]),
            models.Index(fields=["usage"]),
            GinIndex(fields=["search_document"]),
        ]

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        self.slug = product_slug(self.name)
        super().save(*args, **kwargs)

    def get_absolute_url(self):
        return reverse("catalog:product-detail", kwargs={"pk": self.pk, "slug": self.slug})

    @property
    def primary_image(self):
        """The first image by position; uses prefetched images when the queryset has them."""
        images = list(self.images.all())
        return images[0] if images else None


def product_image_path(instance, filename):
    # Never trust the uploaded name: the normaliser chose the extension, we choose the rest.
    extension = filename.rsplit(".", 1)[-1].lower()
    name = uuid.uuid4().hex
    return f"products/{name[:2]}/{name}.{extension}"


def _sha256(file) -> str:
    file.seek(0)
    return hashlib.file_digest(file, "sha256").hexdigest()


# What a product card (catalog/partials/product_card.html) and the API's product JSON read.
PRODUCT_CARD_FIELDS = (
    "sku",
    "name",
    "slug",
    "gender",
    "master_category",
    "sub_category",
    "article_type",
    "base_colour",
    "season",
    "year",
    "usage",
)


class ProductImageQuerySet(models.QuerySet):
    def for_cards(self):
        """With their products, reading only what a product card and the API show of them (in no
        particular order: callers pick them by id)."""
        product_fields = [f"product__{name}" for name in PRODUCT_CARD_FIELDS]
        only = self.select_related("product").only("product", "image", "width", "height", *product_fields)
        return only.order_by()


class ProductImage(models.Model):
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="images")
    image = ProductImageField(upload_to=product_image_path, width_field="width", height_field="height")
    width = models.PositiveIntegerField(editable=False)
    height = models.PositiveIntegerField(editable=False)
    checksum = models.CharField(max_length=64, editable=False, db_index=True, help_text="SHA-256 of the stored file.")
    position = models.PositiveSmallIntegerField(default=0, help_text="Lowest comes first and is the primary image.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProductImageQuerySet.as_manager()

    class Meta:
        ordering = ["position", "pk"]

    def __str__(self):
        return f"{self.product} #{self.position}"

    def save(self, *args, **kwargs):
        if not self.image._committed:
            self.checksum = getattr(self.image.file, "checksum", None) or _sha256(self.image)
        super().save(*args, **kwargs)


class BulkUploadQuerySet(models.QuerySet):
    def stalled(self):
        """Batches marked running whose processor has not been heard of for BULK_UPLOAD_STALE_SECONDS: it died."""
        heard_of = timezone.now() - timedelta(seconds=settings.BULK_UPLOAD_STALE_SECONDS)
        return self.filter(status=BulkUpload.Status.RUNNING, updated_at__lt=heard_of)

    def claimable(self):
        """Batches nobody is processing: waiting, failed or stalled."""
        waiting_or_failed = self.filter(status__in=[BulkUpload.Status.WAITING, BulkUpload.Status.FAILED])
        return waiting_or_failed | self.stalled()

    def never_queued(self, older_than: timedelta):
        """Waiting batches that did not reach the task queue (it was down) and are not just being started."""
        return self.filter(
            status=BulkUpload.Status.WAITING, queued_at__isnull=True, created_at__lt=timezone.now() - older_than
        )

    def with_counts(self):
        """Each batch with its number of entries, of photos, and of entries per outcome (`<outcome>_count`)."""
        return self.annotate(
            entry_count=Count("entries"),
            photo_count=Count("entries", filter=~Q(entries__file_name="")),
            **{
                f"{outcome}_count": Count("entries", filter=Q(entries__outcome=outcome))
                for outcome in BulkUploadEntry.Outcome.values
            },
        )


class BulkUpload(models.Model):
    """Photos (and optionally a CSV in the import layout) dropped on the admin's bulk upload page at once;
    catalog.bulk_upload turns them into products. Its entries are the work to do and the report."""

    class Status(models.TextChoices):
        WAITING = "waiting", "Waiting"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.WAITING)
    csv_name = models.CharField("CSV file", max_length=255, blank=True)
    error = models.TextField(blank=True, help_text="Why the last run stopped.")
    created_at = models.DateTimeField(auto_now_add=True)
    # Moved on by every processed entry: a running batch whose updated_at stops moving has lost its processor.
    updated_at = models.DateTimeField(auto_now=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = BulkUploadQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self):
        return f"Bulk upload {self.pk}"

    def get_absolute_url(self):
        return reverse("admin:catalog_bulkupload_change", args=[self.pk])

    @property
    def staging_dir(self) -> Path:
        """Where its photos wait to be processed (private, not media)."""
        return Path(settings.BULK_UPLOAD_DIR) / str(self.pk)

    @property
    def is_stalled(self) -> bool:
        return BulkUpload.objects.stalled().filter(pk=self.pk).exists()


class BulkUploadEntryQuerySet(models.QuerySet):
    def pending(self):
        return self.filter(outcome=BulkUploadEntry.Outcome.PENDING)


class BulkUploadEntry(models.Model):
    """One line of a bulk upload's report: a photo, or a CSV row that came with no photo (or could not be read)."""

    class Outcome(models.TextChoices):
        PENDING = "pending", "Pending"
        CREATED = "created", "Product created"
        ADDED = "added", "Photo added"
        UPDATED = "updated", "Product updated"
        UNCHANGED = "unchanged", "Unchanged"
        SKIPPED = "skipped", "Skipped"

    batch = models.ForeignKey(BulkUpload, on_delete=models.CASCADE, related_name="entries")
    position = models.PositiveIntegerField(help_text="Order of work and report: photos by file name, then CSV rows.")
    file_name = models.CharField(max_length=255, blank=True, help_text="The photo's name as uploaded.")
    csv_line = models.PositiveIntegerField("CSV line", null=True, blank=True)
    sku = models.CharField("SKU", max_length=64, blank=True)
    fields = models.JSONField(default=dict, blank=True, help_text="The product's values from its CSV row, as read.")
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.PENDING)
    product = models.ForeignKey(Product, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    message = models.TextField(blank=True)

    objects = BulkUploadEntryQuerySet.as_manager()

    class Meta:
        ordering = ["batch", "position"]
        constraints = [models.UniqueConstraint(fields=["batch", "position"], name="bulk_upload_entry_position")]
        verbose_name_plural = "bulk upload entries"

    def __str__(self):
        return self.file_name or f"CSV line {self.csv_line}"
