"""Form and model fields for image uploads; the admin, the site's forms and the API all use these."""

from django import forms
from django.db import models

from .images import normalise_image, open_image, upright_rgb


class ImageUploadField(forms.FileField):
    """A file that must decode as a supported image within `max_pixels`; the cleaned file carries it
    decoded, upright, in RGB and at most `max_side` pixels a side, as `.image`."""

    widget = forms.ClearableFileInput(attrs={"accept": "image/*"})

    def __init__(self, *, max_side: int | None = None, max_pixels: int | None = None, **kwargs):
        self.max_side, self.max_pixels = max_side, max_pixels
        super().__init__(**kwargs)

    def to_python(self, data):
        upload = super().to_python(data)
        if upload is None:
            return None
        image = open_image(upload, max_pixels=self.max_pixels, draft_size=self.max_side)
        upload.image = upright_rgb(image, self.max_side)
        return upload


class ProductImageUploadField(forms.FileField):
    """Validates like ImageUploadField and hands the model the normalised JPEG to store."""

    widget = forms.ClearableFileInput(attrs={"accept": "image/*"})

    def to_python(self, data):
        upload = super().to_python(data)
        if upload is None:
            return None
        return normalise_image(upload).as_file("upload")


class ProductImageField(models.ImageField):
    def formfield(self, **kwargs):
        return super().formfield(**{"form_class": ProductImageUploadField, **kwargs})
