"""Form and model fields for image uploads; the admin, the site's forms and the API all use these."""

from django import forms
from django.db import models

from .images import normalise_image, open_image, upright_rgb


class ImageUploadField(forms.FileField):
    """A file that must decode as a supported image; the cleaned file carries it decoded, upright and
    in RGB, as `.image`."""

    widget = forms.ClearableFileInput(attrs={"accept": "image/*"})

    def __init__(self, *, draft_size: int | None = None, **kwargs):
        self.draft_size = draft_size
        super().__init__(**kwargs)

    def to_python(self, data):
        upload = super().to_python(data)
        if upload is None:
            return None
        upload.image = upright_rgb(open_image(upload, draft_size=self.draft_size))
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
