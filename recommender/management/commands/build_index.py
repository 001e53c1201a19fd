from django.core.management.base import BaseCommand

from recommender.encoding.backbones import BACKBONES, get_backbone
from recommender.retrieval import build_index


class Command(BaseCommand):
    help = "Build a new Annoy index version from the stored embeddings and switch to it."

    def add_arguments(self, parser):
        parser.add_argument("--backbone", choices=sorted(BACKBONES), help="Default: the EMBEDDING_BACKBONE setting.")
        parser.add_argument("--trees", type=int, help="Annoy n_trees (default: the INDEX_TREES setting).")
        parser.add_argument(
            "--if-stale", action="store_true", help="Only build when embeddings changed since the last build."
        )

    def handle(self, backbone, trees, if_stale, **options):
        result = build_index(get_backbone(backbone), n_trees=trees, force=not if_stale)
        manifest = result.manifest
        if result.reason == "built":
            self.stdout.write(
                self.style.SUCCESS(
                    f"Built {manifest.backbone} index {manifest.version}: {manifest.items} items, "
                    f"{manifest.n_trees} trees, {manifest.build_seconds:.1f}s."
                )
            )
        else:
            self.stdout.write(f"No new index: {result.reason}.")
