from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from .active import active_backbone
from .models import EmbeddingModel, ImageEmbedding
from .status import recommender_status
from .tasks import activate_model_task, queue_embeddings, rebuild_index, train_embedding_task


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
        extra_context = {**(extra_context or {}), "recommender_status": recommender_status(active_backbone())}
        return super().changelist_view(request, extra_context=extra_context)


def _queue(admin_view, request, task, args, done: str) -> None:
    try:
        task.apply_async(args)
        admin_view.message_user(request, done, messages.SUCCESS)
    except Exception as exc:  # kombu raises several types for a missing broker
        admin_view.message_user(request, f"The task queue is unreachable ({exc}); try again later.", messages.ERROR)


EVALUATED_LABELS = ("article type", "sub category", "colour", "colour family")


@admin.register(EmbeddingModel)
class EmbeddingModelAdmin(admin.ModelAdmin):
    list_display = (
        "version",
        "status",
        "base",
        "products",
        "type_p5",
        "colour_p5",
        "family_p5",
        "recall5",
        "created_at",
    )
    list_filter = ("status",)
    readonly_fields = [field.name for field in EmbeddingModel._meta.fields] + ["evaluation"]
    exclude = ("metrics",)
    actions = ["activate"]
    change_list_template = "admin/recommender/embeddingmodel/change_list.html"

    def has_add_permission(self, request):
        return False

    def _score(self, obj, label: str, key: str = "micro") -> str:
        try:
            frozen, trained = obj.metrics["frozen"][label][key], obj.metrics["trained"][label][key]
        except (KeyError, TypeError):
            return "-"
        if trained is None or frozen is None:
            return "-"
        return f"{trained:.3f} (frozen {frozen:.3f})"

    @admin.display(description="Type P@5")
    def type_p5(self, obj):
        return self._score(obj, "article type")

    @admin.display(description="Colour P@5")
    def colour_p5(self, obj):
        return self._score(obj, "colour")

    @admin.display(description="Colour family P@5")
    def family_p5(self, obj):
        return self._score(obj, "colour family")

    @admin.display(description="Shopper photos recall@5")
    def recall5(self, obj):
        return self._score(obj, "shopper photos", "recall@5")

    @admin.display(description="Evaluation on the test split")
    def evaluation(self, obj):
        rows = format_html_join(
            "",
            "<tr><th>{}</th><td>{}</td><td>{}</td></tr>",
            ((label, self._score(obj, label), self._score(obj, label, "macro")) for label in EVALUATED_LABELS),
        )
        return format_html("<table><tr><th></th><th>P@5 (micro)</th><th>P@5 (macro)</th></tr>{}</table>", rows)

    @admin.action(description="Activate the selected model (embeds the catalogue first, then switches)")
    def activate(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Choose one model to activate.", messages.WARNING)
            return
        model = queryset.get()
        if model.status not in (EmbeddingModel.Status.READY, EmbeddingModel.Status.RETIRED):
            self.message_user(request, f"Model {model.version} is {model.get_status_display()}.", messages.WARNING)
            return
        _queue(
            self,
            request,
            activate_model_task,
            (model.version,),
            f"Activating {model.version}: the catalogue is embedded with it in the background, and search "
            "switches to it once that is complete.",
        )

    def get_urls(self):
        view = self.admin_site.admin_view(self.train_view)
        return [path("train/", view, name="recommender_train_embedding"), *super().get_urls()]

    def train_view(self, request):
        if request.method == "POST" and self.has_change_permission(request):
            _queue(
                self,
                request,
                train_embedding_task,
                (),
                "Training queued: a new model appears here in about 15 minutes.",
            )
        return HttpResponseRedirect(reverse("admin:recommender_embeddingmodel_changelist"))
