"""The one decoder every incoming image goes through, on every odd kind of file."""

import io

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from PIL import Image

from catalog.images import normalise_image, open_image, upright_rgb
from tests.helpers import decompression_bomb


def encoded(image: Image.Image, format: str, **params) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    buffer.seek(0)
    return buffer


def decode(buffer: io.BytesIO, **kwargs) -> Image.Image:
    return upright_rgb(open_image(buffer, **kwargs))


def test_rgba_transparency_goes_onto_white():
    image = Image.new("RGBA", (20, 10), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (0, 0, 10, 10))
    rgb = decode(encoded(image, "PNG"))
    assert rgb.mode == "RGB"
    assert rgb.getpixel((15, 5)) == (255, 255, 255)
    assert rgb.getpixel((5, 5)) == (0, 0, 255)


def test_palette_with_transparent_index_goes_onto_white():
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    image.paste(0, (0, 0, 4, 8))
    rgb = decode(encoded(image, "PNG", transparency=0))
    assert rgb.getpixel((1, 1)) == (255, 255, 255)
    assert rgb.getpixel((6, 1)) == (200, 10, 10)


def test_grey_with_alpha():
    image = Image.new("LA", (4, 4), (0, 0))
    image.putpixel((0, 0), (50, 255))
    rgb = decode(encoded(image, "PNG"))
    assert rgb.getpixel((0, 0)) == (50, 50, 50)
    assert rgb.getpixel((3, 3)) == (255, 255, 255)


def test_cmyk_jpeg():
    image = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    rgb = decode(encoded(image, "JPEG", quality=95))
    red, green, blue = rgb.getpixel((8, 8))
    assert red > 200 and green < 60 and blue < 60


def test_sixteen_bit_grey_is_scaled_not_clipped():
    pixels = np.full((6, 6), 32768, dtype=np.uint16)
    pixels[0, 0] = 65535
    rgb = decode(encoded(Image.fromarray(pixels), "PNG"))
    assert rgb.getpixel((3, 3)) == (127, 127, 127)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_uses_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((0, 200, 0), (200, 0, 0))]
    buffer = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    rgb = decode(buffer)
    red, green, _ = rgb.getpixel((4, 4))
    assert green > 150 and red < 50


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 10, 20))  # black band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was rotated: display rotated 90° clockwise
    rgb = decode(encoded(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert rgb.size == (20, 40)
    assert sum(rgb.getpixel((10, 2))) < 100, "the left band is now on top"


def test_large_jpeg_decodes_in_draft_mode():
    image = Image.new("RGB", (4000, 3000), (10, 120, 200))
    decoded = open_image(encoded(image, "JPEG"), draft_size=300)
    assert decoded.size == (500, 375)


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", "empty"),
        (b"just some text, renamed to photo.jpg", "not_image"),
        (b"%PDF-1.4 a pdf", "not_image"),
    ],
)
def test_non_images_are_rejected(content, code):
    with pytest.raises(ValidationError) as raised:
        open_image(io.BytesIO(content))
    assert raised.value.code == code


def test_truncated_image_is_corrupt():
    data = encoded(Image.new("RGB", (300, 300), (1, 2, 3)), "PNG").getvalue()
    with pytest.raises(ValidationError) as raised:
        open_image(io.BytesIO(data[: len(data) // 2]))
    assert raised.value.code == "corrupt"


def test_too_large_file(settings):
    settings.IMAGE_UPLOAD_MAX_BYTES = 1000
    with pytest.raises(ValidationError) as raised:
        open_image(encoded(Image.effect_noise((100, 100), 50).convert("RGB"), "PNG"))
    assert raised.value.code == "too_large"
    assert "the limit is 1000 bytes" in raised.value.messages[0].replace("\xa0", " ")


def test_decompression_bomb_is_rejected_before_decoding():
    bomb = io.BytesIO(decompression_bomb())
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(ValidationError) as raised:
        open_image(bomb)
    assert raised.value.code == "too_many_pixels"


def test_pixel_limit_is_a_setting(settings):
    settings.IMAGE_UPLOAD_MAX_PIXELS = 100 * 100
    with pytest.raises(ValidationError) as raised:
        open_image(encoded(Image.new("RGB", (101, 100)), "PNG"))
    assert "101×100" in raised.value.messages[0]


def test_unsupported_format_is_rejected():
    with pytest.raises(ValidationError) as raised:
        open_image(encoded(Image.new("RGB", (8, 8)), "PPM"))
    assert raised.value.code == "not_image"


def test_normalised_image_is_a_clean_jpeg():
    png = encoded(Image.new("RGBA", (3000, 1500), (0, 128, 0, 255)), "PNG").getvalue()
    polyglot = io.BytesIO(png + b"<html><script>alert(1)</script></html>")

    normalised = normalise_image(polyglot, max_side=1600)

    assert normalised.content.startswith(b"\xff\xd8") and b"<script>" not in normalised.content
    assert (normalised.width, normalised.height) == (1600, 800)
    again = normalise_image(io.BytesIO(png + b"<html></html>"), max_side=1600)
    assert again.checksum == normalised.checksum, "normalising is deterministic"
