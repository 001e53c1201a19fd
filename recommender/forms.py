from django import forms
from django.conf import settings
from django.template.defaultfilters import filesizeformat

from catalog.colours import family_label
from catalog.fields import ImageUploadField
from catalog.models import Product
from catalog.uploads import UploadRefusal, refuse_upload

from .encoding.garment import Box, InvalidBox

MAX_RESULTS = 50
UNKNOWN_COLOUR = "There is no colour '%(value)s' in the catalogue."


def _choices(field: str, label: str) -> list[tuple[str, str]]:
    values = Product.objects.exclude(**{field: ""}).order_by(field).values_list(field, flat=True).distinct()
    return [("", label), *((value, value) for value in values)]


def colour_choices() -> list[tuple[str, str]]:
    """The colour families of the catalogue's products, as the filter offers them."""
    return [("", "Any colour"), *((family, family_label(family)) for family in Product.objects.colour_families())]


class FlagInput(forms.CheckboxInput):
    """A checkbox whose submitted text reaches the field (Django's turns any text but "false" into True)."""

    def value_from_datadict(self, data, files, name):
        return data.get(name, "")


class FlagField(forms.BooleanField):
    """A checkbox on the page; true/false, 1/0, on/off or yes/no from API clients, anything else an error."""

    widget = FlagInput
    TRUE, FALSE = {"true", "1", "on", "yes"}, {"false", "0", "off", "no", ""}

    def to_python(self, value) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in self.TRUE | self.FALSE:
            return text in self.TRUE
        raise forms.ValidationError("Use true or false.", code="invalid")


class VisualSearchForm(forms.Form):
    """A shopper's photo, plus optional filters: one form for the search page and the API."""

    image = ImageUploadField(
        label="Photo",
        error_messages={"required": "Choose a photo to search with.", "empty": "The file is empty."},
    )
    gender = forms.ChoiceField(required=False)
    article_type = forms.ChoiceField(required=False, label="Article type")
    colour = forms.ChoiceField(required=False, error_messages={"invalid_choice": UNKNOWN_COLOUR})
    k = forms.IntegerField(required=False, min_value=1, max_value=MAX_RESULTS, initial=5, widget=forms.HiddenInput)
    # The part of the photo to search with, "x0,y0,x1,y1" as fractions; by default the garment found.
    crop = forms.CharField(required=False, widget=forms.HiddenInput)
    whole_photo = FlagField(
        required=False,
        label="Use the whole photo",
        help_text="Search with everything in the photo, not only the garment we find in it.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["image"].max_side = settings.VISUAL_SEARCH_IMAGE_MAX_SIDE
        self.fields["image"].max_pixels = settings.VISUAL_SEARCH_MAX_PIXELS
        self.fields["gender"].choices = _choices("gender", "Any gender")
        self.fields["article_type"].choices = _choices("article_type", "Any article type")
        self.fields["colour"].choices = colour_choices()

    def clean_k(self) -> int:
        return self.cleaned_data.get("k") or 5

    def clean_crop(self) -> Box | None:
        text = self.cleaned_data.get("crop", "").strip()
        if not text:
            return None
        try:
            return Box.parse(text)
        except InvalidBox as exc:
            raise forms.ValidationError(str(exc), code="invalid_crop") from None

    @property
    def upload_limit(self) -> str:
        return filesizeformat(settings.IMAGE_UPLOAD_MAX_BYTES)


def refuse_photo_upload(request) -> UploadRefusal | None:
    """A search request refused before its form is used (catalog.uploads): the body is read only
    when its Content-Length fits a photo."""
    limit = filesizeformat(settings.IMAGE_UPLOAD_MAX_BYTES)
    return refuse_upload(
        request,
        max_bytes=settings.IMAGE_UPLOAD_MAX_BYTES + 64 * 1024,  # room for the multipart envelope
        too_large=f"The file is larger than the limit of {limit}.",
        too_many_files="Send one photo.",
    )
