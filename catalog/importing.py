"""Bulk import of products with their primary image, shared by every catalogue source.

A source yields `SourceRow`s (or `RowProblem`s for rows it could not even parse). Rows are taken in
batches: images are decoded and normalised in a thread pool, then each batch is written in one
transaction with a savepoint per row, so a bad row is reported and skipped without leaving half a
product behind. Running the same source twice changes nothing: products are matched by SKU and
only rewritten when a field or the image differs. Classification values are spelt as they already
are in the catalogue (catalog.vocabulary): "white" joins "White".

The pieces (reading a styles.csv, a product's fields, an extra photo, the savepoint per row) are also
what the admin's bulk upload (catalog.bulk_upload) is made of.
"""

import csv
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import islice
from pathlib import Path
from typing import BinaryIO, TextIO, TypeVar

from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction

from .images import NormalisedImage, normalise_image
from .models import Product, ProductImage
from .vocabulary import Vocabulary

SKU_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ProductRow:
    line: int  # where the row came from, for the report
    sku: str
    fields: dict[str, object]  # Product field values: name, gender, article_type, year...


@dataclass(frozen=True)
class SourceRow(ProductRow):
    open_image: Callable[[], BinaryIO]


Row = TypeVar("Row", bound=ProductRow)


@dataclass(frozen=True)
class RowProblem:
    line: int
    reason: str


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return self.created + self.updated + self.unchanged + len(self.problems)

    def summary(self) -> str:
        return (
            f"{self.rows} rows in {self.seconds:.1f}s: {self.created} created, {self.updated} updated, "
            f"{self.unchanged} unchanged, {len(self.problems)} skipped"
        )


def import_products(
    rows: Iterable[SourceRow | RowProblem],
    *,
    batch_size: int = 200,
    workers: int = 4,
    on_row: Callable[[], None] = lambda: None,
) -> ImportReport:
    started = time.monotonic()
    report = ImportReport()
    vocabulary = Vocabulary.in_use()
    iterator = without_duplicate_skus(rows)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while batch := list(islice(iterator, batch_size)):
            source_rows = []
            for row in batch:
                if isinstance(row, RowProblem):
                    report.problems.append(row)
                    on_row()
                else:
                    source_rows.append(replace(row, fields=vocabulary.normalise(row.fields)))
            images = list(pool.map(normalised_image_or_reason, [row.open_image for row in source_rows]))
            _write_batch(source_rows, images, report, on_row)
    report.seconds = time.monotonic() - started
    return report


def without_duplicate_skus(rows: Iterable[Row | RowProblem]) -> Iterator[Row | RowProblem]:
    """The rows, with each later row of an id already seen turned into a RowProblem."""
    seen_skus: dict[str, int] = {}
    for row in rows:
        if isinstance(row, ProductRow):
            if row.sku in seen_skus:
                yield RowProblem(row.line, f"duplicate id {row.sku!r}, first on line {seen_skus[row.sku]}")
                continue
            seen_skus[row.sku] = row.line
        yield row


def normalised_image_or_reason(open_image: Callable[[], BinaryIO]) -> NormalisedImage | str:
    """The image as we store it, or why it cannot be used."""
    try:
        with open_image() as file:
            return normalise_image(file)
    except FileNotFoundError as exc:
        return f"image file {exc.filename} is missing"
    except OSError as exc:
        return f"image file cannot be read: {exc}"
    except ValidationError as exc:
        return f"image cannot be used: {' '.join(exc.messages)}"


def _write_batch(rows: list[SourceRow], images: list, report: ImportReport, on_row: Callable[[], None]) -> None:
    existing = {
        product.sku: product for product in Product.objects.filter(sku__in=[row.sku for row in rows]).with_images()
    }
    with transaction.atomic():
        for row, image in zip(rows, images):
            on_row()
            if isinstance(image, str):
                report.problems.append(RowProblem(row.line, image))
                continue
            try:
                with row_savepoint():
                    outcome = _upsert(row, image, existing.get(row.sku))
            except RowRefused as refused:
                report.problems.append(RowProblem(row.line, refused.reason))
                continue
            setattr(report, outcome, getattr(report, outcome) + 1)


class RowRefused(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@contextmanager
def row_savepoint():
    """One row's writes in a savepoint: an invalid value or a write the database refuses rolls back that row
    alone and raises RowRefused with the reason."""
    try:
        with transaction.atomic():
            yield
    except ValidationError as exc:
        raise RowRefused(_describe(exc)) from exc
    except DatabaseError as exc:
        raise RowRefused(f"database refused the row: {exc}".strip()) from exc


def _upsert(row: SourceRow, image: NormalisedImage, product: Product | None) -> str:
    """Create or update one product and its primary image; returns which of the report's counters to bump."""
    product, outcome = upsert_product(row, product)
    primary = product.primary_image if outcome != "created" else None
    if primary is None or primary.checksum != image.checksum:
        primary = primary or ProductImage(product=product, position=0)
        primary.image = image.as_file(row.sku)
        primary.save()
        outcome = "created" if outcome == "created" else "updated"
    return outcome


def upsert_product(row: ProductRow, product: Product | None) -> tuple[Product, str]:
    """Create the product of `row`, or give an existing one the row's field values; returns the product and
    "created", "updated" or "unchanged" (nothing is written then)."""
    outcome = "unchanged"
    if product is None:
        product = Product(sku=row.sku, **row.fields)
        outcome = "created"
    elif any(getattr(product, name) != value for name, value in row.fields.items()):
        for name, value in row.fields.items():
            setattr(product, name, value)
        outcome = "updated"
    if outcome != "unchanged":
        product.clean_fields(exclude=["slug"])
        product.save()
    return product, outcome


def add_photo(product: Product, image: NormalisedImage) -> tuple[ProductImage, bool]:
    """Give the product `image` as its next photo; returns the photo and True, or the product's identical
    photo and False when it already has this image."""
    photos = list(product.images.all())
    for photo in photos:
        if photo.checksum == image.checksum:
            return photo, False
    position = max((photo.position for photo in photos), default=-1) + 1
    photo = ProductImage(product=product, position=position, image=image.as_file(product.sku))
    photo.save()
    return photo, True


def _describe(error: ValidationError) -> str:
    if hasattr(error, "error_dict"):
        return "; ".join(f"{name}: {' '.join(messages)}" for name, messages in error.message_dict.items())
    return " ".join(error.messages)


# --- The Kaggle "Fashion Product Images" layout: styles.csv + images/<id>.jpg ---------------------

KAGGLE_COLUMNS = {
    "id": "sku",
    "productDisplayName": "name",
    "gender": "gender",
    "masterCategory": "master_category",
    "subCategory": "sub_category",
    "articleType": "article_type",
    "baseColour": "base_colour",
    "season": "season",
    "year": "year",
    "usage": "usage",
}


def kaggle_rows(folder: Path, limit: int | None = None) -> Iterator[SourceRow | RowProblem]:
    """Rows of `folder`/styles.csv with their images in `folder`/images/<id>.jpg."""
    styles = folder / "styles.csv"
    # Undecodable bytes become lone surrogates, so that only their own row is rejected (by _kaggle_row).
    with styles.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        for row in read_styles(handle, str(styles), limit):
            if isinstance(row, RowProblem):
                yield row
            else:
                opener = partial(_open_image, folder / "images", f"{row.sku}.jpg")
                yield SourceRow(line=row.line, sku=row.sku, fields=row.fields, open_image=opener)


def read_styles(handle: TextIO, name: str, limit: int | None = None) -> Iterator[ProductRow | RowProblem]:
    """The rows of a CSV in the Kaggle styles.csv layout (`name` says which file, in errors). Raises ValueError
    when the header lacks a column; open the file with newline="" and errors="surrogateescape"."""
    reader = csv.reader(handle)
    header = next(reader, None)
    missing = set(KAGGLE_COLUMNS) - set(header or [])
    if missing:
        raise ValueError(f"{name} lacks the columns {', '.join(sorted(missing))}")
    count = 0
    while limit is None or count < limit:
        line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # the reader carries on with the next line
            yield RowProblem(line, f"cannot be read as CSV: {exc}")
        else:
            yield _kaggle_row(header, values, line)
        count += 1


def _kaggle_row(header: list[str], values: list[str], line: int) -> ProductRow | RowProblem:
    if len(values) > len(header) and header[-1] == "productDisplayName":
        # The public styles.csv has unquoted commas in some display names; they belong to the name.
        values = values[: len(header) - 1] + [",".join(values[len(header) - 1 :])]
    if len(values) != len(header):
        return RowProblem(line, f"expected {len(header)} columns, found {len(values)}")
    try:
        "".join(values).encode()
    except UnicodeEncodeError:
        return RowProblem(line, "the line is not valid UTF-8")
    record = {KAGGLE_COLUMNS[name]: value.strip() for name, value in zip(header, values) if name in KAGGLE_COLUMNS}
    sku = record.pop("sku")
    if not SKU_PATTERN.match(sku):
        return RowProblem(line, f"id {sku!r} is not a valid product id")
    if not record["name"]:
        return RowProblem(line, "productDisplayName is empty")
    year = record["year"]
    if year and not (year.isdigit() and 1900 <= int(year) <= 2100):
        return RowProblem(line, f"year {year!r} is not a year")
    record["year"] = int(year) if year else None
    return ProductRow(line=line, sku=sku, fields=record)


def _open_image(images: Path, name: str) -> BinaryIO:
    """Open images/`name` only if it is a regular file inside `images`: a link must not publish a file from
    elsewhere, and a FIFO or device would block the import."""
    path = images / name
    target = path.resolve()
    if not target.is_relative_to(images.resolve()):
        raise OSError(f"{path} links to a file outside {images}")
    file = open(os.open(target, os.O_RDONLY | os.O_NONBLOCK), "rb")  # O_NONBLOCK: opening a FIFO does not wait
    if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
        file.close()
        raise OSError(f"{path} is not a regular file")
    return file
