from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html

from .encoding.backbones import get_backbone
from .models import ImageEmbedding
from .status import recommender_status
from .tasks import queue_embeddings, rebuild_index


@admin.register(ImageEmbedding)
class ImageEmbeddingAdmin(admin.ModelAdmin):
    list_display = ("thumbnail", "product", "backbone", "status", "error", "computed_at")
    list_filter = ("backbone", "status")
    search_fields = ("image__product__name", "image__product__sku")
    list_select_related = ("image__product",)
    readonly_fields = ("image", "backbone", "image_checksum", "status", "dimension", "error", "computed_at")
    exclude = ("vector",)
    actions = ["re_embed"]
    change_list_template = "admin/recommender/imageembedding/change_list.html"

    class Media:
        css = {"all": ["css/admin.css"]}

    def has_add_permission(self, request):
        return False

    @admin.display(description="Photo")
    def thumbnail(self, obj: ImageEmbedding):
        return format_html('<img src="{}" class="admin-thumbnail" alt="" width="40" height="40">', obj.image.image.url)

    @admin.display(description="Product", ordering="image__product__name")
    def product(self, obj: ImageEmbedding):
        return obj.image.product

    @admin.action(description="Re-embed the selected images")
    def re_embed(self, request, queryset):
        by_backbone: dict[str, list[int]] = {}
        for image_id, backbone in queryset.values_list("image_id", "backbone"):
            by_backbone.setdefault(backbone, []).append(image_id)
        queryset.delete()
        queued = all(queue_embeddings(ids, backbone) for backbone, ids in by_backbone.items())
        count = sum(len(ids) for ids in by_backbone.values())
        if queued:
            self.message_user(request, f"{count} images queued for embedding.", messages.SUCCESS)
        else:
            self.message_user(
                request,
                f"The task queue is unreachable; the sweep will embed the {count} images once it is back.",
                messages.WARNING,
            )

    def get_urls(self):
        return [
            path(
                "rebuild-index/", self.admin_site.admin_view(self.rebuild_index_view), name="recommender_rebuild_index"
            ),
            *super().get_urls(),
        ]

    def rebuild_index_view(self, request):
        if request.method != "POST" or not self.has_change_permission(request):
            return HttpResponseRedirect(reverse("admin:recommender_imageembedding_changelist"))
        backbone = request.POST.get("backbone") or None
        try:
            rebuild_index.apply_async(kwargs={"backbone": backbone, "force": True})
            self.message_user(
                request, "Index rebuild queued; the new version is used as soon as it is complete.", messages.SUCCESS
            )
        except Exception as exc:
            self.message_user(
                request, f"The task queue is unreachable ({exc}); run manage.py build_index.", messages.ERROR
            )
        return HttpResponseRedirect(reverse("admin:recommender_imageembedding_changelist"))

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "recommender_status": recommender_status(get_backbone())}
        return super().changelist_view(request, extra_context=extra_context)
