from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from recommender.active import active_backbone
from recommender.encoding.backbones import BACKBONES, WeightsNotFound, get_backbone
from recommender.encoding.preprocessing import read_image
from recommender.models import ImageEmbedding
from recommender.similar import search_by_photo


class Command(BaseCommand):
    help = (
        "Print the catalogue products that look most like an image file: the site's search by photo "
        "(the garment found in the photo, the active model), unless told otherwise."
    )

    def add_arguments(self, parser):
        parser.add_argument("image", type=Path)
        parser.add_argument("--k", type=int, default=5)
        parser.add_argument("--backbone", choices=sorted(BACKBONES), help="Default: the model shoppers are served.")
        parser.add_argument("--whole-photo", action="store_true", help="Search with the whole photo.")

    def handle(self, image: Path, k: int, backbone: str | None, whole_photo: bool, **options):
        backbone = get_backbone(backbone) if backbone else active_backbone()
        if not ImageEmbedding.objects.for_backbone(backbone).done().exists():
            raise CommandError(f"No catalogue image has a {backbone.name} embedding yet: run embed_catalog first.")
        try:
            with image.open("rb") as file:
                photo = read_image(file, settings.VISUAL_SEARCH_IMAGE_MAX_SIDE)
            result = search_by_photo(photo, backbone, k=k, find_garment=not whole_photo)
        except (OSError, ValidationError, WeightsNotFound) as exc:
            raise CommandError(" ".join(getattr(exc, "messages", [str(exc)]))) from exc
        self.stdout.write(f"{backbone.name}, searched with the {_searched(result)}")
        self.stdout.write(f"{'rank':>4}  {'score':>6}  {'product':>7}  {'sku':<12} name (article type)")
        for rank, neighbour in enumerate(result.neighbours, start=1):
            product = neighbour.product
            self.stdout.write(
                f"{rank:>4}  {neighbour.score:6.3f}  {product.pk:>7}  {product.sku:<12} "
                f"{product.name} ({product.article_type})"
            )


def _searched(result) -> str:
    if result.crop_source == "whole":
        return "whole photo"
    who = "you chose" if result.crop_source == "shopper" else "found"
    return f"garment {who} at {result.crop.param} (x0,y0,x1,y1 as fractions)"
