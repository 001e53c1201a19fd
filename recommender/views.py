import base64
import io
import time
from dataclasses import dataclass

from django.shortcuts import render
from django.views.decorators.http import require_http_methods
from PIL import Image

from .encoding.backbones import Backbone, get_backbone
from .forms import VisualSearchForm, upload_too_large
from .similar import VisualSearchResult, search_by_photo
from .timing import record_timing


@dataclass
class PhotoSearch:
    """One search-by-photo request, as the page and the API both handle it."""

    form: VisualSearchForm
    result: VisualSearchResult | None = None
    too_large: str = ""  # refused from its Content-Length, unread

    @classmethod
    def run(cls, request, backbone: Backbone) -> "PhotoSearch":
        too_large = upload_too_large(request)
        if too_large:
            return cls(VisualSearchForm(input_size=backbone.input_size), too_large=too_large)
        started = time.monotonic()
        form = VisualSearchForm(request.POST, request.FILES, input_size=backbone.input_size)
        if not form.is_valid():
            return cls(form)
        record_timing(request, decode=time.monotonic() - started)
        result = search_by_photo(
            form.cleaned_data["image"].image,
            backbone,
            k=form.cleaned_data["k"],
            gender=form.cleaned_data["gender"],
            article_type=form.cleaned_data["article_type"],
        )
        record_timing(request, **result.timings)
        return cls(form, result)


@require_http_methods(["GET", "POST"])
def visual_search(request):
    """Upload a photo, see the five products that look most like it."""
    backbone = get_backbone()
    if request.method == "GET":
        return render(request, "recommender/visual_search.html", {"form": VisualSearchForm()})
    search = PhotoSearch.run(request, backbone)
    if search.result is None:
        if search.too_large:
            search.form.add_error(None, search.too_large)
        return render(request, "recommender/visual_search.html", {"form": search.form}, status=400)
    context = {
        "form": search.form,
        "result": search.result,
        "query_thumbnail": _thumbnail_data_uri(search.form.cleaned_data["image"].image),
    }
    return render(request, "recommender/visual_search.html", context)


def _thumbnail_data_uri(photo: Image.Image) -> str:
    """The shopper's photo, small, inline in the page: shown back to them without being stored."""
    thumbnail = photo.copy()
    thumbnail.thumbnail((240, 240))
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
