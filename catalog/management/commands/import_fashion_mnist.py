from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from catalog.fashion_mnist import DEFAULT_FOLDER, fashion_mnist_rows
from catalog.importing import import_products

from .import_catalog import report_to


class Command(BaseCommand):
    help = "Build a demo catalogue from Fashion-MNIST (Debian package dataset-fashion-mnist)."

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, default=1000, help="Number of products (default 1000, at most 10000).")
        parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)

    def handle(self, count: int, folder: Path, **options):
        if not (folder / "t10k-images-idx3-ubyte.gz").is_file():
            raise CommandError(f"Fashion-MNIST is not in {folder}: apt-get install dataset-fashion-mnist")
        with tqdm(total=min(count, 10_000), unit="row", desc="Importing", disable=options["verbosity"] == 0) as bar:
            report = import_products(fashion_mnist_rows(folder, count), on_row=bar.update)
        report_to(self, report)
