import base64
import io
import time
from dataclasses import dataclass

from django.conf import settings
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods
from PIL import Image

from fashionsite.throttling import retry_after, too_many_requests_page

from .active import active_backbone
from .encoding.backbones import Backbone
from .encoding.embedder import EmbedderBusy
from .forms import VisualSearchForm, refuse_photo_upload
from .similar import VisualSearchResult, search_by_photo
from .timing import record_timing

PHOTO_SEARCH_GROUP = "photo-search"  # the page and the API share one limit per client
BUSY_MESSAGE = "Photo search is busy right now; please try again in a few seconds."
BUSY_RETRY_SECONDS = 5


@dataclass
class PhotoSearch:
    """One search-by-photo request whose body was accepted (see refuse_photo_upload), as the page and the
    API both handle it."""

    form: VisualSearchForm
    result: VisualSearchResult | None = None

    @classmethod
    def run(cls, request, backbone: Backbone) -> "PhotoSearch":
        """Raises EmbedderBusy when the model stays busy longer than a shopper should wait."""
        started = time.monotonic()
        form = VisualSearchForm(request.POST, request.FILES)
        if not form.is_valid():
            return cls(form)
        record_timing(request, decode=time.monotonic() - started)
        result = search_by_photo(
            form.cleaned_data["image"].image,
            backbone,
            k=form.cleaned_data["k"],
            gender=form.cleaned_data["gender"],
            article_type=form.cleaned_data["article_type"],
            colour=form.cleaned_data["colour"],
            crop=form.cleaned_data["crop"],
            find_garment=not form.cleaned_data["whole_photo"],
        )
        record_timing(request, **result.timings)
        return cls(form, result)


# CSRF is checked by _search_page, after refuse_photo_upload: an oversized body is refused unread.
@csrf_exempt
@require_http_methods(["GET", "POST"])
def visual_search(request):
    """Upload a photo, see the five products that look most like it."""
    if request.method == "GET":
        return _page(request, VisualSearchForm())
    refusal = refuse_photo_upload(request)
    if refusal:
        return _page(request, VisualSearchForm(), errors=[refusal.message], status=refusal.status)
    return _search_page(request)


@csrf_protect
def _search_page(request):
    seconds = retry_after(request, PHOTO_SEARCH_GROUP, settings.VISUAL_SEARCH_RATE_LIMIT)
    if seconds:
        return too_many_requests_page(request, seconds, "photo searches")
    try:
        search = PhotoSearch.run(request, active_backbone())
    except EmbedderBusy:
        response = _page(request, VisualSearchForm(), errors=[BUSY_MESSAGE], status=503)
        response["Retry-After"] = str(BUSY_RETRY_SECONDS)
        return response
    if search.result is None:
        return _page(request, search.form, status=400)
    query_photo = _photo_data_uri(search.form.cleaned_data["image"].image)
    return _page(request, search.form, result=search.result, query_photo=query_photo)


def _page(request, form: VisualSearchForm, *, errors: list[str] = (), status: int = 200, **context):
    """The search page; `errors` are about the request, the form's own about its fields."""
    field_errors = [error for name, messages in form.errors.items() if name != "image" for error in messages]
    context.update(form=form, page_errors=[*errors, *field_errors])
    return render(request, "recommender/visual_search.html", context, status=status)


def _photo_data_uri(photo: Image.Image) -> str:
    """The shopper's photo (already at most VISUAL_SEARCH_IMAGE_MAX_SIDE), inline in the page: shown back
    to them, with the crop box over it, and sent again when they move the box; never stored."""
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
