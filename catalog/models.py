import hashlib
import uuid

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector, SearchVectorField
from django.db import models
from django.db.models import F, Prefetch
from django.db.models.functions import Lower
from django.urls import reverse
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


class ProductImage(models.Model):
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="images")
    image = ProductImageField(upload_to=product_image_path, width_field="width", height_field="height")
    width = models.PositiveIntegerField(editable=False)
    height = models.PositiveIntegerField(editable=False)
    checksum = models.CharField(max_length=64, editable=False, db_index=True, help_text="SHA-256 of the stored file.")
    position = models.PositiveSmallIntegerField(default=0, help_text="Lowest comes first and is the primary image.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["position", "pk"]

    def __str__(self):
        return f"{self.product} #{self.position}"

    def save(self, *args, **kwargs):
        if not self.image._committed:
            self.checksum = getattr(self.image.file, "checksum", None) or _sha256(self.image)
        super().save(*args, **kwargs)
