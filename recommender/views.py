import base64
import io
import time
from dataclasses import dataclass, field

from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from PIL import Image

from catalog.images import upright_rgb
from catalog.models import Product
from catalog.views import ProductDetailView

from .backbones import get_backbone
from .forms import SimilarFilterForm, VisualSearchForm, upload_too_large
from .index import index_reader
from .similar import VisualSearchResult, search_by_photo, similar_products


def server_timing(response, timings: dict[str, float]):
    response["Server-Timing"] = ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in timings.items())
    return response


class ProductWithSimilarItemsView(ProductDetailView):
    """The catalogue's product page, with a row of visually similar products under it."""

    template_name = "recommender/product_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        same_gender = self.request.GET.get("same_gender") == "1"
        same_type = self.request.GET.get("same_type") == "1"
        context["similar"] = similar_products(
            self.object,
            gender=self.object.gender if same_gender else "",
            article_type=self.object.article_type if same_type else "",
        )
        context["similar_filters"] = {"same_gender": same_gender, "same_type": same_type}
        return context

    def render_to_response(self, context, **kwargs):
        return server_timing(super().render_to_response(context, **kwargs), {"similar": context["similar"].seconds})


@dataclass
class PhotoSearch:
    """One search-by-photo request, as the page and the API both handle it."""

    form: VisualSearchForm
    result: VisualSearchResult | None = None
    too_large: str = ""  # refused from its Content-Length, unread
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def run(cls, request) -> "PhotoSearch":
        too_large = upload_too_large(request)
        if too_large:
            return cls(VisualSearchForm(), too_large=too_large)
        started = time.monotonic()
        form = VisualSearchForm(request.POST, request.FILES)
        if not form.is_valid():
            return cls(form)
        decoded = time.monotonic()
        result = search_by_photo(
            form.cleaned_data["image"].image,
            k=form.cleaned_data["k"],
            gender=form.cleaned_data["gender"],
            article_type=form.cleaned_data["article_type"],
        )
        return cls(form, result, timings={"decode": decoded - started, **result.timings})


@require_http_methods(["GET", "POST"])
def visual_search(request):
    """Upload a photo, see the five products that look most like it."""
    if request.method == "GET":
        return render(request, "recommender/visual_search.html", {"form": VisualSearchForm()})
    search = PhotoSearch.run(request)
    if search.result is None:
        if search.too_large:
            search.form.add_error(None, search.too_large)
        return render(request, "recommender/visual_search.html", {"form": search.form}, status=400)
    context = {
        "form": search.form,
        "result": search.result,
        "query_thumbnail": _thumbnail_data_uri(search.form.cleaned_data["image"].image),
    }
    return server_timing(render(request, "recommender/visual_search.html", context), search.timings)


def _thumbnail_data_uri(photo: Image.Image) -> str:
    """The shopper's photo, small, inline in the page: shown back to them without being stored."""
    thumbnail = upright_rgb(photo)
    thumbnail.thumbnail((240, 240))
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


# --- JSON API -----------------------------------------------------------------------------------


def api_error(status: int, message: str, code: str = "", details: dict | None = None) -> JsonResponse:
    error = {"status": status, "code": code or "error", "message": message}
    if details:
        error["details"] = details
    return JsonResponse({"error": error}, status=status)


def product_json(request, product: Product, image=None, score: float | None = None) -> dict:
    data = {
        "id": product.pk,
        "sku": product.sku,
        "name": product.name,
        "url": request.build_absolute_uri(product.get_absolute_url()),
        "gender": product.gender,
        "master_category": product.master_category,
        "sub_category": product.sub_category,
        "article_type": product.article_type,
        "base_colour": product.base_colour,
        "season": product.season,
        "year": product.year,
        "usage": product.usage,
        "image_url": request.build_absolute_uri(image.image.url) if image else None,
    }
    if score is not None:
        data["score"] = round(score, 4)
    return data


def _results(request, neighbours) -> list[dict]:
    return [product_json(request, n.product, n.image, n.score) for n in neighbours]


@require_GET
def api_similar(request, pk: int):
    """GET /api/products/<id>/similar?k=5&gender=...&article_type=..."""
    product = Product.objects.filter(pk=pk).with_images().first()
    if product is None:
        return api_error(404, f"There is no product {pk}.", "not_found")
    form = SimilarFilterForm(request.GET)
    if not form.is_valid():
        return api_error(400, "Invalid query parameters.", "invalid", form.errors.get_json_data())
    similar = similar_products(product, **form.cleaned_data)
    body = {"product": product_json(request, product, product.primary_image), "backbone": get_backbone().name}
    if similar.pending:
        body.update(status="pending", message="This product's photo has not been analysed yet.")
    else:
        body.update(status="ok")
    return server_timing(
        JsonResponse({**body, "results": _results(request, similar.neighbours)}), {"similar": similar.seconds}
    )


@csrf_exempt  # read-only and cookie-free: a cross-site request can learn nothing from it
@require_POST
def api_search(request):
    """POST /api/search (multipart: image, optional gender, article_type, k)."""
    search = PhotoSearch.run(request)
    if search.too_large:
        return api_error(400, search.too_large, "too_large")
    if search.result is None:
        errors = search.form.errors.get_json_data()
        first = next(iter(errors.values()))[0]
        return api_error(400, first["message"], first["code"], errors)
    body = {"backbone": get_backbone().name, "status": "ok", "results": _results(request, search.result.neighbours)}
    return server_timing(JsonResponse(body), search.timings)


@require_GET
def index_status(request):
    """Which index this web process answers from (for health checks and operators)."""
    backbone = get_backbone().name
    loaded = index_reader(backbone).get()
    manifest = loaded.manifest if loaded else None
    return JsonResponse(
        {
            "backbone": backbone,
            "search": "index" if loaded else "exact",
            "index_version": manifest.version if manifest else None,
            "index_items": manifest.items if manifest else None,
        }
    )
