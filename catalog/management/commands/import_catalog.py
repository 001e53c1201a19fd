from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from catalog.importing import import_products, kaggle_rows


class Command(BaseCommand):
    help = "Import products from a folder in the Kaggle Fashion Product Images layout (styles.csv + images/<id>.jpg)."

    def add_arguments(self, parser):
        parser.add_argument("folder", type=Path)
        parser.add_argument("--limit", type=int, help="Import only the first N rows of styles.csv.")
        parser.add_argument("--batch-size", type=int, default=200, help="Rows per transaction (default 200).")

    def handle(self, folder: Path, limit: int | None, batch_size: int, **options):
        styles = folder / "styles.csv"
        if not styles.is_file():
            raise CommandError(f"{styles} does not exist: the folder must hold styles.csv and images/<id>.jpg")
        if limit is not None and limit < 0:
            raise CommandError("--limit must be zero or more")
        with styles.open("rb") as handle:
            total = max(sum(1 for _ in handle) - 1, 0)
        total = total if limit is None else min(total, limit)
        try:
            with tqdm(total=total, unit="row", desc="Importing", disable=options["verbosity"] == 0) as bar:
                report = import_products(kaggle_rows(folder, limit), batch_size=batch_size, on_row=bar.update)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        report_to(self, report)


def report_to(command: BaseCommand, report, shown_problems: int = 50) -> None:
    """Print the import summary and the skipped rows (the first `shown_problems` of them)."""
    for problem in report.problems[:shown_problems]:
        command.stderr.write(f"line {problem.line}: skipped, {problem.reason}")
    if len(report.problems) > shown_problems:
        command.stderr.write(f"... and {len(report.problems) - shown_problems} more skipped rows")
    style = command.style.WARNING if report.problems else command.style.SUCCESS
    command.stdout.write(style(f"Imported {report.summary()}."))
