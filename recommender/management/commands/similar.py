from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from recommender.encoding.backbones import BACKBONES, WeightsNotFound, get_backbone
from recommender.encoding.embedder import get_embedder
from recommender.encoding.preprocessing import read_image
from recommender.models import ImageEmbedding
from recommender.retrieval import nearest_products


class Command(BaseCommand):
    help = "Print the catalogue products that look most like an image file (the same search as the site's)."

    def add_arguments(self, parser):
        parser.add_argument("image", type=Path)
        parser.add_argument("--k", type=int, default=5)
        parser.add_argument("--backbone", choices=sorted(BACKBONES))

    def handle(self, image: Path, k: int, backbone: str | None, **options):
        backbone = get_backbone(backbone)
        if not ImageEmbedding.objects.for_backbone(backbone).done().exists():
            raise CommandError(f"No catalogue image has a {backbone.name} embedding yet: run embed_catalog first.")
        try:
            with image.open("rb") as file:
                photo = read_image(file, backbone.input_size)
            embedder = get_embedder(backbone)
        except (OSError, ValidationError, WeightsNotFound) as exc:
            raise CommandError(" ".join(getattr(exc, "messages", [str(exc)]))) from exc
        neighbours = nearest_products(embedder.embed_image(photo), backbone, k=k)
        self.stdout.write(f"{'rank':>4}  {'score':>6}  {'product':>7}  {'sku':<12} name (article type)")
        for rank, neighbour in enumerate(neighbours, start=1):
            product = neighbour.product
            self.stdout.write(
                f"{rank:>4}  {neighbour.score:6.3f}  {product.pk:>7}  {product.sku:<12} "
                f"{product.name} ({product.article_type})"
            )
