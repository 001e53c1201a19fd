from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponseBadRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from catalog.admin import ProductAdmin
from catalog.models import Product

from .active import active_backbone
from .encoding.backbones import Backbone
from .models import EmbeddingModel, ImageEmbedding
from .product_panel import EmbeddingState, product_panel, re_embed_photo, with_primary_photo_state
from .status import recommender_status
from .tasks import activate_model_task, queue_embeddings, rebuild_index, train_embedding_task


@admin.register(ImageEmbedding)
class ImageEmbeddingAdmin(admin.ModelAdmin):
    list_display = ("thumbnail", "product", "backbone", "status", "error", "computed_at")
    list_filter = ("backbone", "status")
    search_fields = ("image__product__name", "image__product__sku")
    list_select_related = ("image__product",)
    readonly_fields = ("image", "backbone", "image_checksum", "labels", "status", "dimension", "error", "computed_at")
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


class PrimaryPhotoStateFilter(admin.SimpleListFilter):
    title = "photo embedding"
    parameter_name = "photo_embedding"

    def lookups(self, request, model_admin):
        return EmbeddingState.choices

    def queryset(self, request, queryset):
        return queryset.filter(primary_photo_state=self.value()) if self.value() else queryset


# The catalogue knows nothing of the recommender (import-linter checks it), so the recommender
# registers the product admin anew: the catalogue's, plus its own view of each product.
admin.site.unregister(Product)


@admin.register(Product)
class ProductWithRecommenderAdmin(ProductAdmin):
    list_display = (*ProductAdmin.list_display, "photo_embedding")
    list_filter = (*ProductAdmin.list_filter, PrimaryPhotoStateFilter)
    change_form_template = "admin/recommender/product/change_form.html"

    class Media:
        css = {"all": ["css/admin-recommender.css"]}

    def get_queryset(self, request):
        return with_primary_photo_state(super().get_queryset(request), self.active_backbone(request))

    def active_backbone(self, request) -> Backbone:
        """Looked up once per request: the changelist's filters each ask for the queryset."""
        if not hasattr(request, "recommender_backbone"):
            request.recommender_backbone = active_backbone()
        return request.recommender_backbone

    @admin.display(description="Embedding", ordering="primary_photo_state")
    def photo_embedding(self, product: Product):
        state = EmbeddingState(product.primary_photo_state)
        return format_html('<span class="embedding-state embedding-state--{}">{}</span>', state.value, state.label)

    def get_urls(self):
        info = f"{self.opts.app_label}_{self.opts.model_name}"
        panel = self.admin_site.admin_view(self.recommender_panel_view)
        re_embed = self.admin_site.admin_view(require_POST(self.re_embed_view))
        return [  # before the catalogue's own, whose "<object_id>/" would take these paths
            path("<path:object_id>/recommender-panel/", panel, name=f"{info}_recommender_panel"),
            path("<path:object_id>/re-embed/", re_embed, name=f"{info}_re_embed"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        product = self.get_object(request, unquote(object_id))
        if product is not None:
            extra_context = {**(extra_context or {}), **self.recommender_panel_context(request, product)}
        return super().change_view(request, object_id, form_url, extra_context)

    def recommender_panel_context(self, request, product: Product) -> dict:
        return {
            "recommender_panel": product_panel(product, self.active_backbone(request)),
            "recommender_can_re_embed": self.has_change_permission(request, product),
        }

    def recommender_panel_view(self, request, object_id):
        """The panel's HTML alone, which the change page's script fetches while a photo is pending."""
        product = self._product_or_404(request, object_id)
        if not self.has_view_or_change_permission(request, product):
            raise PermissionDenied
        context = self.recommender_panel_context(request, product)
        return TemplateResponse(request, "admin/recommender/product/panel.html", context)

    def re_embed_view(self, request, object_id):
        product = self._product_or_404(request, object_id)
        if not self.has_change_permission(request, product):
            raise PermissionDenied
        try:
            image = forms.ModelChoiceField(product.images.all()).clean(request.POST.get("image"))
        except ValidationError:
            return HttpResponseBadRequest("No such photo of this product.")
        if re_embed_photo(image, self.active_backbone(request)):
            self.message_user(
                request, "The photo is queued for embedding; the panel below updates when it is done.", messages.SUCCESS
            )
        else:
            self.message_user(
                request,
                "The task queue is unreachable, so the photo could not be queued now. Nothing is lost: "
                "the periodic sweep embeds it once the queue is back.",
                messages.WARNING,
            )
        change_url = reverse("admin:catalog_product_change", args=[product.pk])
        return HttpResponseRedirect(f"{change_url}#recommender-panel")

    def _product_or_404(self, request, object_id) -> Product:
        product = self.get_object(request, unquote(object_id))
        if product is None:
            raise Http404("No such product.")
        return product
