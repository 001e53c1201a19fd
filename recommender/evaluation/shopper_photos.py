"""Shopper-like photos made from catalogue photos, with the exact item known.

A catalogue photo is a product on white. A shopper's photo of the same product has a background
that is not white, other things in it, the product smaller, off-centre and tilted, a colour cast,
blur and JPEG artefacts. `shopper_photo` makes one such photo from a catalogue photo, the same for
the same seed on every machine, so that search by photo can be measured on photos whose right
answer is known (see evaluate_recommender).
"""

import io
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from scipy import ndimage

CANVAS_SIZES = [(480, 640), (640, 480), (540, 540)]  # portrait, landscape and square phone photos
# Catalogue photos sit on white: lighter than this in every channel is background.
WHITE_LEVEL = 235


def product_mask(photo: Image.Image) -> Image.Image:
    """Where the product is in a catalogue photo (L mode, 255 inside): not white, holes filled."""
    pixels = np.asarray(photo.convert("RGB"))
    inside = pixels.min(axis=2) < WHITE_LEVEL
    closed = ndimage.binary_fill_holes(ndimage.binary_closing(inside, iterations=2))
    # Closing erodes a product thinner than a few pixels away, and a white product has no mask: then
    # the raw mask, or the whole photo, is the product.
    inside = closed if closed.any() else inside if inside.any() else np.ones_like(inside)
    mask = Image.fromarray((inside * 255).astype(np.uint8))
    return mask.filter(ImageFilter.GaussianBlur(1))


@dataclass(frozen=True)
class ShopperPhoto:
    image: Image.Image
    mask: Image.Image  # where the product is (L mode, 255 inside)

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The product's bounding box as fractions (x0, y0, x1, y1) of the photo's width and height."""
        x0, y0, x1, y1 = self.mask.point(lambda value: 255 if value > 127 else 0).getbbox()
        return x0 / self.image.width, y0 / self.image.height, x1 / self.image.width, y1 / self.image.height


def shopper_photo(photo: Image.Image, seed: int, clutter: list[Image.Image] = ()) -> ShopperPhoto:
    """`photo` (a catalogue photo) as a shopper might take it, with up to three of `clutter` (other
    catalogue photos) smaller beside it. The product stays the largest thing in the picture."""
    rng = random.Random(seed)
    width, height = rng.choice(CANVAS_SIZES)
    canvas = _background(rng, width, height)
    for other in rng.sample(list(clutter), k=min(len(clutter), rng.randint(0, 3))):
        _paste(canvas, other, rng, scale=rng.uniform(0.2, 0.38), anywhere=True)
    mask = Image.new("L", canvas.size, 0)
    _paste(canvas, photo, rng, scale=rng.uniform(0.5, 0.85), anywhere=False, mask_out=mask)
    return ShopperPhoto(_camera(canvas, rng), mask)


def _paste(
    canvas: Image.Image,
    photo: Image.Image,
    rng: random.Random,
    *,
    scale: float,
    anywhere: bool,
    mask_out: Image.Image | None = None,
) -> None:
    """Paste the product of `photo`, cut out by its mask, scaled so its longer side is `scale` of
    the canvas's shorter side, tilted; centred near the middle unless `anywhere`. `mask_out`, if
    given, receives where it went."""
    photo = photo.convert("RGB")
    mask = product_mask(photo)
    box = mask.getbbox()
    if box is None:
        return
    photo, mask = photo.crop(box), mask.crop(box)
    side = scale * min(canvas.size)
    factor = side / max(photo.size)
    size = (max(1, round(photo.width * factor)), max(1, round(photo.height * factor)))
    photo, mask = photo.resize(size, Image.Resampling.BICUBIC), mask.resize(size, Image.Resampling.BILINEAR)
    angle = rng.uniform(-15, 15)
    photo = photo.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    mask = mask.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    spread = 0.5 if anywhere else 0.12
    centre_x = canvas.width * (0.5 + rng.uniform(-spread, spread))
    centre_y = canvas.height * (0.5 + rng.uniform(-spread, spread))
    corner = (round(centre_x - photo.width / 2), round(centre_y - photo.height / 2))
    canvas.paste(photo, corner, mask)
    if mask_out is not None:
        mask_out.paste(mask, corner)


def _colour(rng: random.Random, low: int = 40, high: int = 225) -> tuple[int, int, int]:
    return tuple(rng.randint(low, high) for _ in range(3))


def _background(rng: random.Random, width: int, height: int) -> Image.Image:
    """A floor, a wall, a bedspread: a gradient, smooth blotches, planks or tiles, never plain white."""
    kind = rng.choice(["gradient", "blotches", "planks", "tiles"])
    if kind == "gradient":
        top, bottom = np.array(_colour(rng)), np.array(_colour(rng))
        ramp = np.linspace(0, 1, height)[:, None, None]
        pixels = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3))
        return Image.fromarray(pixels.astype(np.uint8))
    if kind == "blotches":
        base = np.array(_colour(rng), dtype=np.float32)
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 25, (6, 8, 3)).astype(np.float32)
        small = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        return small.resize((width, height), Image.Resampling.BICUBIC)
    image = Image.new("RGB", (width, height), _colour(rng))
    draw = ImageDraw.Draw(image)
    if kind == "planks":
        step = rng.randint(40, 120)
        for left in range(0, width, step):
            draw.rectangle([left, 0, left + step - 3, height], fill=_colour(rng, 60, 200))
    else:
        step = rng.randint(50, 140)
        colours = [_colour(rng, 70, 220), _colour(rng, 70, 220)]
        for top in range(0, height, step):
            for left in range(0, width, step):
                draw.rectangle([left, top, left + step - 2, top + step - 2], fill=colours[(left + top) // step % 2])
    return image


def _camera(image: Image.Image, rng: random.Random) -> Image.Image:
    """What a phone and poor light do: exposure, contrast, a colour cast, blur and JPEG artefacts."""
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.75, 1.15))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.8, 1.1))
    cast = np.array([rng.uniform(0.88, 1.12) for _ in range(3)], dtype=np.float32)
    image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) * cast, 0, 255).astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=rng.randint(45, 85))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
