"""The JSON API (django-ninja): similar products, search by photo and the index in use.

Its OpenAPI schema is served at /api/openapi.json and browsable at /api/docs. Every error has the
same envelope: {"error": {"status", "code", "message", "details"?}}.
"""

from dataclasses import asdict
from typing import Literal

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from ninja import NinjaAPI, Query, Schema
from ninja.errors import ValidationError
from pydantic import Field

from catalog.models import Product, ProductImage
from fashionsite.throttling import retry_after

from .active import active_backbone
from .encoding.embedder import EmbedderBusy
from .forms import MAX_RESULTS, UNKNOWN_COLOUR, refuse_photo_upload
from .retrieval import Neighbour, index_in_use
from .similar import similar_products
from .timing import record_timing
from .views import BUSY_MESSAGE, BUSY_RETRY_SECONDS, PHOTO_SEARCH_GROUP, PhotoSearch

api = NinjaAPI(
    title="Lookalike API",
    version="1.0",
    description="Visually similar products of a fashion catalogue, by product or by photo.",
    urls_namespace="api",
)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict | None = None, retry_after: int = 0):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.retry_after = retry_after


def throttle(request, group: str, rate: str) -> None:
    seconds = retry_after(request, group, rate)
    if seconds:
        raise ApiError(429, "rate_limited", f"Too many requests; try again in {seconds} s.", retry_after=seconds)


class ErrorBody(Schema):
    status: int
    code: str = Field(
        description="required, empty, not_image, too_large, too_many_pixels, aspect_ratio, corrupt, invalid, "
        "invalid_choice, invalid_crop, invalid_body, length_required, not_found, rate_limited, busy, unavailable"
    )
    message: str
    details: dict | None = Field(None, description="Per-field errors, when a parameter was invalid.")


class ErrorOut(Schema):
    error: ErrorBody


class ProductOut(Schema):
    id: int
    sku: str
    name: str
    url: str
    gender: str
    master_category: str
    sub_category: str
    article_type: str
    base_colour: str
    season: str
    year: int | None
    usage: str
    image_url: str | None


class ResultOut(ProductOut):
    score: float = Field(description="Cosine similarity of the photos.")


class SimilarOut(Schema):
    status: Literal["ok", "pending"]
    message: str | None = Field(None, description="Why there are no results yet, while pending.")
    backbone: str
    product: ProductOut
    results: list[ResultOut]


class BoxOut(Schema):
    x0: float = Field(description="Left edge, as a fraction of the photo's width.")
    y0: float = Field(description="Top edge, as a fraction of the photo's height.")
    x1: float
    y1: float


class CropOut(BoxOut):
    source: Literal["auto", "shopper", "whole"] = Field(
        description="auto: the garment the site found; shopper: the crop sent; whole: the whole photo."
    )


class SearchOut(Schema):
    status: Literal["ok"]
    backbone: str
    crop: CropOut = Field(description="The part of the photo the search used.")
    regions: list[BoxOut] = Field(description="Garments found in the photo, most salient first.")
    results: list[ResultOut]


class IndexStatusOut(Schema):
    backbone: str
    search: Literal["index", "exact"]
    index_version: str | None
    index_items: int | None


COLOUR_DESCRIPTION = (
    "Only products of this colour family, e.g. blue (Blue, Navy Blue, Teal, Turquoise Blue), as offered by the "
    "search page. A colour the catalogue does not have is a 400 with code invalid_choice."
)


PRINTABLE = r"^[^\x00-\x1f\x7f]*$"  # no control characters (PostgreSQL refuses NUL in text)


class SimilarQuery(Schema):
    k: int = Field(5, ge=1, le=MAX_RESULTS, description="How many products.")
    gender: str = Field("", max_length=32, pattern=PRINTABLE, description="Only products of this gender.")
    article_type: str = Field("", max_length=64, pattern=PRINTABLE, description="Only products of this article type.")
    colour: str = Field("", max_length=32, pattern=PRINTABLE, description=COLOUR_DESCRIPTION)


def _error(status: int, code: str, message: str, details: dict | None = None):
    body = {"status": status, "code": code, "message": message}
    if details:
        body["details"] = details
    return {"error": body}


class JsonErrorsMiddleware:
    """Errors that Django or ninja answer outside an API view's own handling (an unknown URL, a method
    the URL does not take, an unexpected failure) in the API's JSON envelope rather than HTML."""

    CODES = {
        404: ("not_found", "There is no such API URL."),
        405: ("method_not_allowed", "Method not allowed."),
        500: ("server_error", "Something went wrong on our side; it has been logged."),
    }

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            request.path.startswith("/api/")
            and response.status_code in self.CODES
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            code, message = self.CODES[response.status_code]
            json = JsonResponse(_error(response.status_code, code, message), status=response.status_code)
            if response.has_header("Allow"):
                json["Allow"] = response["Allow"]
            return json
        return response


@api.exception_handler(ApiError)
def api_error(request, exc: ApiError):
    response = api.create_response(request, _error(exc.status, exc.code, exc.message, exc.details), status=exc.status)
    if exc.retry_after:
        response["Retry-After"] = str(exc.retry_after)
    return response


@api.exception_handler(ValidationError)
def invalid_parameters(request, exc: ValidationError):
    """Ninja's parameter errors in the API's envelope: 400, code `required` or `invalid`."""
    details: dict[str, list[dict]] = {}
    for error in exc.errors:
        code = "required" if error["type"] == "missing" else "invalid"
        details.setdefault(str(error["loc"][-1]), []).append({"message": error["msg"], "code": code})
    codes = {entry["code"] for entries in details.values() for entry in entries}
    code = "required" if codes == {"required"} else "invalid"
    message = "Required parameters are missing." if code == "required" else "Invalid parameters."
    return api.create_response(request, _error(400, code, message, details), status=400)


def product_json(request: HttpRequest, product: Product, image: ProductImage | None) -> dict:
    return {
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


def _results(request, neighbours: list[Neighbour]) -> list[dict]:
    return [{**product_json(request, n.product, n.image), "score": round(n.score, 4)} for n in neighbours]


@api.get(
    "/products/{int:pk}/similar",
    response={200: SimilarOut, 400: ErrorOut, 404: ErrorOut, 429: ErrorOut},
    exclude_none=True,
    url_name="similar",
    summary="The products that look most like a product",
)
def similar(request, pk: int, filters: Query[SimilarQuery]):
    """Best first, never the product itself; `pending` with no results while its photo is not embedded yet."""
    throttle(request, "similar-api", settings.SIMILAR_API_RATE_LIMIT)
    product = Product.objects.filter(pk=pk).with_images().first()
    if product is None:
        raise ApiError(404, "not_found", f"There is no product {pk}.")
    if filters.colour and filters.colour not in Product.objects.colour_families():
        message = UNKNOWN_COLOUR % {"value": filters.colour}
        raise ApiError(400, "invalid_choice", message, {"colour": [{"message": message, "code": "invalid_choice"}]})
    backbone = active_backbone()
    found = similar_products(
        product,
        backbone,
        k=filters.k,
        gender=filters.gender,
        article_type=filters.article_type,
        colour=filters.colour,
    )
    record_timing(request, similar=found.seconds)
    body = {
        "status": "pending" if found.pending else "ok",
        "backbone": backbone.name,
        "product": product_json(request, product, product.primary_image),
        "results": _results(request, found.neighbours),
    }
    if found.pending:
        body["message"] = "This product's photo has not been analysed yet."
    return body


# The body is read and validated by the same form as the search page (after a Content-Length check,
# before anything is read), so it is described here rather than parsed by ninja.
SEARCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary", "description": "JPEG, PNG, WebP, GIF, BMP or TIFF"},
                    "gender": {"type": "string", "description": "Only products of this gender."},
                    "article_type": {"type": "string", "description": "Only products of this article type."},
                    "colour": {"type": "string", "description": COLOUR_DESCRIPTION},
                    "k": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS, "default": 5},
                    "crop": {
                        "type": "string",
                        "pattern": r"^[0-9.]+,[0-9.]+,[0-9.]+,[0-9.]+$",
                        "description": "Search only this part of the photo: x0,y0,x1,y1 as fractions of its width "
                        "and height (0 ≤ x0 < x1 ≤ 1, 0 ≤ y0 < y1 ≤ 1). Default: the garment the site finds. "
                        "A bad box is a 400 with code invalid_crop.",
                    },
                    "whole_photo": {
                        "type": "boolean",
                        "default": False,
                        "description": "Search with the whole photo instead of the garment the site finds.",
                    },
                },
            }
        }
    },
}


@api.post(
    "/search",
    response={200: SearchOut, 400: ErrorOut, 411: ErrorOut, 429: ErrorOut, 503: ErrorOut},
    url_name="search",
    summary="The products that look most like a photo",
    openapi_extra={"requestBody": SEARCH_BODY},
)
def search(request):
    """Multipart upload of a photo; the photo is not kept."""
    refusal = refuse_photo_upload(request)
    if refusal:
        raise ApiError(refusal.status, refusal.code, refusal.message)
    throttle(request, PHOTO_SEARCH_GROUP, settings.VISUAL_SEARCH_RATE_LIMIT)
    backbone = active_backbone()
    try:
        photo_search = PhotoSearch.run(request, backbone)
    except EmbedderBusy:
        raise ApiError(503, "busy", BUSY_MESSAGE, retry_after=BUSY_RETRY_SECONDS) from None
    if photo_search.result is None:
        errors = photo_search.form.errors.get_json_data()
        first = next(iter(errors.values()))[0]
        raise ApiError(400, first["code"], first["message"], errors)
    result = photo_search.result
    return {
        "status": "ok",
        "backbone": backbone.name,
        "crop": {**asdict(result.crop), "source": result.crop_source},
        "regions": [asdict(region) for region in result.regions],
        "results": _results(request, result.neighbours),
    }


@api.get("/recommender/status", response=IndexStatusOut, url_name="index-status", summary="The index in use")
def index_status(request):
    """Which index version this web process answers from (for health checks and operators)."""
    backbone = active_backbone()
    manifest = index_in_use(backbone)
    return {
        "backbone": backbone.name,
        "search": "index" if manifest else "exact",
        "index_version": manifest.version if manifest else None,
        "index_items": manifest.items if manifest else None,
    }
