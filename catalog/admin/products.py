from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils.html import format_html

from ..forms import ProductForm
from ..models import Product, ProductImage
from ..vocabulary import CLASSIFICATION_FIELDS, Vocabulary, field_label, merge_spellings, respell_near_duplicates


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
    fields = ("preview", "image", "position", "width", "height", "short_checksum")
    readonly_fields = ("preview", "width", "height", "short_checksum")

    @admin.display(description="Preview")
    def preview(self, obj):
        return _image_tag(obj, 96) if obj.pk else "—"

    @admin.display(description="Checksum")
    def short_checksum(self, obj):
        if not obj.checksum:
            return "—"
        return format_html('<abbr title="SHA-256 {}">{}…</abbr>', obj.checksum, obj.checksum[:12])


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    form = ProductForm
    actions = ["respell_values"]
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

    @admin.action(description="Respell the selected products' classification values as most products spell them")
    def respell_values(self, request, queryset):
        merged = [(group, changed) for group, changed in respell_near_duplicates(queryset) if changed]
        for group, changed in merged:
            summary = f"{field_label(group.field)}: {changed} products now say “{group.preferred}”."
            self.message_user(request, summary, messages.SUCCESS)
        if not merged:
            self.message_user(request, "The selected products already use the common spellings.", messages.INFO)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        for respelling in form.respellings:
            self.message_user(request, respelling, messages.WARNING)
        for new_value in form.new_values:
            self.message_user(request, new_value, messages.INFO)

    def get_urls(self):
        view = self.admin_site.admin_view(self.vocabulary_view)
        return [path("vocabulary/", view, name="catalog_product_vocabulary"), *super().get_urls()]

    def vocabulary_view(self, request):
        """Values spelt more than one way, each with a button that merges them into one spelling."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            self._merge(request)
            return HttpResponseRedirect(reverse("admin:catalog_product_vocabulary"))
        groups = Vocabulary.in_use().near_duplicates()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Classification values spelt more than one way",
            "groups": [(field_label(group.field), group) for group in groups],
        }
        return render(request, "admin/catalog/product/vocabulary.html", context)

    def _merge(self, request) -> None:
        field, into = request.POST.get("field"), request.POST.get("into", "")
        spellings = request.POST.getlist("spelling")
        if field not in CLASSIFICATION_FIELDS or not into or not spellings:
            self.message_user(request, "Choose the spelling to keep.", messages.ERROR)
            return
        try:
            changed = merge_spellings(field, spellings, into)
        except ValueError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        merged = ", ".join(f"“{spelling}”" for spelling in spellings if spelling != into)
        summary = f"{field_label(field)}: {merged} merged into “{into}” ({changed} products changed)."
        self.message_user(request, summary, messages.SUCCESS)

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
