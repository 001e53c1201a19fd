from django import forms
from django.conf import settings
from django.template.defaultfilters import filesizeformat

from catalog.fields import ImageUploadField
from catalog.models import Product

MAX_RESULTS = 50


def _choices(field: str, label: str) -> list[tuple[str, str]]:
    values = Product.objects.exclude(**{field: ""}).order_by(field).values_list(field, flat=True).distinct()
    return [("", label), *((value, value) for value in values)]


class VisualSearchForm(forms.Form):
    """A shopper's photo, plus optional filters: one form for the search page and the API."""

    image = ImageUploadField(
        label="Photo",
        error_messages={"required": "Choose a photo to search with.", "empty": "The file is empty."},
    )
    gender = forms.ChoiceField(required=False)
    article_type = forms.ChoiceField(required=False, label="Article type")
    k = forms.IntegerField(required=False, min_value=1, max_value=MAX_RESULTS, initial=5, widget=forms.HiddenInput)

    def __init__(self, *args, input_size: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # Decode big JPEGs only as finely as the model looks at them.
        self.fields["image"].draft_size = input_size
        self.fields["gender"].choices = _choices("gender", "Any gender")
        self.fields["article_type"].choices = _choices("article_type", "Any article type")

    def clean_k(self) -> int:
        return self.cleaned_data.get("k") or 5

    @property
    def upload_limit(self) -> str:
        return filesizeformat(settings.IMAGE_UPLOAD_MAX_BYTES)


def upload_too_large(request) -> str:
    """Why an upload is refused from its Content-Length header alone, before Django reads the body."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return ""
    if length <= settings.IMAGE_UPLOAD_MAX_BYTES + 64 * 1024:  # room for the multipart envelope
        return ""
    return f"The file is larger than the limit of {filesizeformat(settings.IMAGE_UPLOAD_MAX_BYTES)}."
