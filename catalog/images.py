"""Decoding and normalising images that come from outside: staff uploads, imports, shoppers' photos.

One place decides what counts as an image: the file must decode completely with Pillow, in a
format we support, within a byte limit and a pixel limit (Pillow's decompression-bomb warning
counts as an error). Stored product images are re-encoded, which drops whatever else the file
carried (metadata, appended HTML) and fixes their orientation and colour mode.
"""

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.template.defaultfilters import filesizeformat
from PIL import Image, ImageOps

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG includes MPO (phone photos)
# Modes Pillow resamples smoothly as they are (it premultiplies the alpha of RGBA and LA itself).
RESIZABLE_MODES = ("RGB", "RGBA", "L", "LA", "CMYK", "YCbCr")
STORED_JPEG_QUALITY = 90
WHITE = (255, 255, 255)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NormalisedImage:
    content: bytes
    width: int
    height: int
    checksum: str
    extension: str = "jpg"

    def as_file(self, stem: str) -> ContentFile:
        """The content as a file to assign to an image field; it carries its checksum along."""
        file = ContentFile(self.content, name=f"{stem}.{self.extension}")
        file.checksum = self.checksum
        return file


def _size_of(file: BinaryIO) -> int:
    size = getattr(file, "size", None)
    if size is None:
        position = file.tell()
        size = file.seek(0, io.SEEK_END)
        file.seek(position)
    return size


def open_image(
    file: BinaryIO,
    *,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode `file` completely and return the image, or raise ValidationError saying why not.

    `draft_size` lets the JPEG decoder skip detail below that size, which makes decoding a large
    photo several times faster when it will be shrunk anyway.
    """
    max_bytes = settings.IMAGE_UPLOAD_MAX_BYTES if max_bytes is None else max_bytes
    max_pixels = settings.IMAGE_UPLOAD_MAX_PIXELS if max_pixels is None else max_pixels
    size = _size_of(file)
    if size == 0:
        raise ValidationError("The file is empty.", code="empty")
    if size > max_bytes:
        raise ValidationError(
            "The file is %(size)s; the limit is %(limit)s.",
            code="too_large",
            params={"size": filesizeformat(size), "limit": filesizeformat(max_bytes)},
        )
    file.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(file, formats=SUPPORTED_FORMATS)
        except Image.UnidentifiedImageError:
            raise ValidationError(
                "This is not an image we can read. Use a JPEG, PNG, WebP, GIF, BMP or TIFF file.",
                code="not_image",
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(max_pixels) from None
        except Exception as exc:  # Pillow raises many types for malformed headers.
            raise _corrupt(exc) from exc
        if image.width * image.height > max_pixels:
            raise _too_many_pixels(max_pixels, image.width, image.height)
        if max(image.size) > settings.IMAGE_MAX_ASPECT_RATIO * max(min(image.size), 1):
            raise ValidationError(
                "The image is %(width)s×%(height)s pixels; one side may be at most %(ratio)s times the other.",
                code="aspect_ratio",
                params={"width": image.width, "height": image.height, "ratio": settings.IMAGE_MAX_ASPECT_RATIO},
            )
        if draft_size and image.format in ("JPEG", "MPO"):
            image.draft("RGB", (draft_size, draft_size))
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(max_pixels) from None
        except Exception as exc:
            raise _corrupt(exc) from exc
    return image


def _too_many_pixels(max_pixels: int, width: int | None = None, height: int | None = None) -> ValidationError:
    megapixels = f"{max_pixels / 1e6:g}"
    if width and height:
        return ValidationError(
            "The image is %(width)s×%(height)s pixels; the limit is %(megapixels)s megapixels.",
            code="too_many_pixels",
            params={"width": width, "height": height, "megapixels": megapixels},
        )
    return ValidationError(
        "The image has too many pixels; the limit is %(megapixels)s megapixels.",
        code="too_many_pixels",
        params={"megapixels": megapixels},
    )


def _corrupt(exc: Exception) -> ValidationError:
    logger.info("Undecodable image: %s", exc)  # Pillow's own words are for us, not for the uploader
    return ValidationError("The image data is damaged or incomplete.", code="corrupt")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: transparent areas onto white, 16-bit and float scaled down."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float32)
        peak = float(pixels.max()) if pixels.size else 0.0
        if peak > 255:
            pixels = pixels * (255.0 / (65535.0 if peak <= 65535 else peak))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")
    has_alpha = image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def upright_rgb(image: Image.Image, max_side: int | None = None) -> Image.Image:
    """Shrink to at most `max_side` pixels a side, apply the EXIF orientation, then flatten to RGB.

    Shrinking comes first and in the image's own mode where Pillow can, so that a large image is
    never copied whole by the conversions that follow.
    """
    if max_side and max(image.size) > max_side:
        if image.mode not in RESIZABLE_MODES:
            image = to_rgb(image)
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return to_rgb(ImageOps.exif_transpose(image))


def normalise_image(file: BinaryIO, *, max_side: int | None = None) -> NormalisedImage:
    """Validate an incoming image and re-encode it as the JPEG we store (raises ValidationError)."""
    max_side = settings.CATALOG_IMAGE_MAX_SIDE if max_side is None else max_side
    image = upright_rgb(open_image(file, draft_size=max_side), max_side)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=STORED_JPEG_QUALITY)
    content = buffer.getvalue()
    return NormalisedImage(
        content=content,
        width=image.width,
        height=image.height,
        checksum=hashlib.sha256(content).hexdigest(),
    )
