from django.contrib import admin
from django.utils.html import format_html

from .models import Product, ProductImage


def _image_tag(product_image: ProductImage | None, size: int):
    if product_image is None:
        return "—"
    return format_html(
        '<img src="{}" class="admin-thumbnail" alt="" width="{}" height="{}">',
        product_image.image.url,
        size,
        size,
    )


class ProductImageInline(admin.TabularInline):
    model = ProductImage
    extra = 1
    fields = ("preview", "image", "position", "width", "height", "checksum")
    readonly_fields = ("preview", "width", "height", "checksum")

    @admin.display(description="Preview")
    def preview(self, obj):
        return _image_tag(obj, 96) if obj.pk else "—"


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("thumbnail", "name", "sku", "article_type", "gender", "base_colour", "season", "year")
    list_display_links = ("thumbnail", "name")
    search_fields = ("name", "sku")
    list_filter = ("gender", "master_category", "sub_category", "article_type", "base_colour", "season", "usage")
    list_per_page = 50
    readonly_fields = ("slug", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("sku", "name", "slug")}),
        ("Classification", {"fields": ("gender", "master_category", "sub_category", "article_type", "base_colour")}),
        ("Season and use", {"fields": ("season", "year", "usage")}),
        ("History", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )
    inlines = [ProductImageInline]

    class Media:
        css = {"all": ["css/admin.css"]}

    def get_queryset(self, request):
        return super().get_queryset(request).with_images()

    def changelist_view(self, request, extra_context=None):
        # PostgreSQL refuses NUL in text: drop it from the search and filter values before the changelist reads them.
        params = request.GET.copy()
        for name, values in params.lists():
            params.setlist(name, [value.replace("\x00", "") for value in values])
        request.GET = params
        return super().changelist_view(request, extra_context)

    @admin.display(description="Photo")
    def thumbnail(self, obj: Product):
        return _image_tag(obj.primary_image, 48)
