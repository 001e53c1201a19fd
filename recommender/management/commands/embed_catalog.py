import time

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from recommender.embedding import embed_catalogue
from recommender.encoding.backbones import BACKBONES, WeightsNotFound, get_backbone
from recommender.models import ImageEmbedding


class Command(BaseCommand):
    help = "Embed every catalogue image that has no embedding for the backbone yet (resumable)."

    def add_arguments(self, parser):
        parser.add_argument("--backbone", choices=sorted(BACKBONES), help="Default: the EMBEDDING_BACKBONE setting.")
        parser.add_argument("--batch-size", type=int, default=32)

    def handle(self, backbone: str | None, batch_size: int, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        backbone = get_backbone(backbone)
        pending = ImageEmbedding.objects.missing_images(backbone).count()
        if not pending:
            self.stdout.write(f"Every image already has a {backbone.name} embedding.")
            return
        self.stdout.write(f"Embedding {pending} images with {backbone.description}.")
        started = time.monotonic()
        with tqdm(total=pending, unit="img", desc=backbone.name, disable=options["verbosity"] == 0) as bar:
            failed = 0

            def progress(report):
                nonlocal failed
                failed += report.failed
                bar.update(report.embedded + report.failed + report.skipped)
                bar.set_postfix(failed=failed)

            try:
                report = embed_catalogue(backbone, batch_size=batch_size, on_batch=progress)
            except WeightsNotFound as exc:
                raise CommandError(str(exc)) from exc
        elapsed = time.monotonic() - started
        stages = ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in report.seconds.items())
        rate = (report.embedded + report.failed) / elapsed if elapsed else 0.0
        style = self.style.WARNING if report.failed else self.style.SUCCESS
        self.stdout.write(
            style(
                f"{report.embedded} embedded, {report.failed} failed, {report.skipped} skipped in {elapsed:.1f}s "
                f"({rate:.1f} images/s; {stages})."
            )
        )
