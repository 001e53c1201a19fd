"""Bulk upload: many photos (and optionally a CSV in the import layout) become products or extra photos.

A batch is planned when it is uploaded: each photo is matched to a SKU by its file name (`match_sku`) and
staged under BULK_UPLOAD_DIR, and every photo and CSV row becomes an entry of the report, pending or
already decided (a photo of no known SKU, a CSV row that cannot be read). `process_bulk_upload` then works
through the pending entries in order, in the request for a small batch or in a Celery worker: each entry's
writes and its outcome are one transaction, so a batch that stops (a dead worker, a failure) leaves every
finished entry complete and the others untouched, and running it again finishes it. The writes are the
import's (catalog.importing): the same CSV reading and field rules, the same image validator, and a photo
the product already has changes nothing, so uploading a batch twice changes nothing either.
"""

import io
import logging
import re
import shutil
from collections.abc import Container
from functools import partial
from pathlib import Path

from django.conf import settings
from django.core.exceptions import TooManyFilesSent
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from .images import NormalisedImage
from .importing import (
    ProductRow,
    RowProblem,
    RowRefused,
    add_photo,
    normalised_image_or_reason,
    read_styles,
    row_savepoint,
    upsert_product,
    without_duplicate_skus,
)
from .models import BulkUpload, BulkUploadEntry, Product, ProductImage
from .vocabulary import Vocabulary

logger = logging.getLogger(__name__)
Outcome = BulkUploadEntry.Outcome

SKU_SUFFIX_SEPARATOR = re.compile(r"[_\- ]")


class FileCountLimit(FileUploadHandler):
    """Refuses a request that carries more than `limit` files, before their data is read: UPLOAD_MAX_FILES,
    or a whole batch on the bulk upload page (allow_bulk_upload_files). First in FILE_UPLOAD_HANDLERS, it
    holds every other view to the usual limit while DATA_UPLOAD_MAX_NUMBER_FILES admits a batch."""

    def __init__(self, request=None):
        super().__init__(request)
        self.limit = settings.UPLOAD_MAX_FILES
        self.files = 0

    def new_file(self, *args, **kwargs):
        self.files += 1
        if self.files > self.limit:
            raise TooManyFilesSent(f"The request carries more than {self.limit} files.")

    def receive_data_chunk(self, raw_data, start):
        return raw_data

    def file_complete(self, file_size):
        return None


def allow_bulk_upload_files(request) -> None:
    """Let this request carry a whole batch: the photos and the CSV (call before its body is read)."""
    for handler in request.upload_handlers:
        if isinstance(handler, FileCountLimit):
            handler.limit = settings.BULK_UPLOAD_MAX_FILES + 1


# --- Planning: what each file and row will do --------------------------------------------------------------


def sku_candidates(file_name: str) -> list[str]:
    """The SKUs a photo's name may stand for, longest first: the stem ("15970_2" of "15970_2.jpg"), then the
    stem cut before each "_", "-" or space ("15970")."""
    stem = Path(file_name).stem
    cuts = [match.start() for match in SKU_SUFFIX_SEPARATOR.finditer(stem) if match.start() > 0]
    return [stem, *(stem[:cut] for cut in reversed(cuts))]


def match_sku(file_name: str, known_skus: Container[str]) -> str | None:
    """The longest SKU the name may stand for that is known (a product's or a CSV row's), if any."""
    return next((sku for sku in sku_candidates(file_name) if sku in known_skus), None)


def no_product_message(file_name: str) -> str:
    candidates = " or ".join(f"“{sku}”" for sku in sku_candidates(file_name))
    return f"no product or CSV row for SKU {candidates}"


def file_name_order(name: str) -> list:
    """Sort key putting "15970_2.jpg" before "15970_10.jpg", as file managers do."""
    return [int(part) if part.isdigit() else part.casefold() for part in re.split(r"(\d+)", name)]


def photo_order(file_name: str, sku: str | None) -> tuple:
    """Sort key keeping a product's photos together, the one named by the SKU alone first ("15970.jpg" before
    "15970-back.jpg"), the others in file-name order."""
    return file_name_order(sku or file_name), Path(file_name).stem != sku, file_name_order(file_name)


def read_csv(upload: UploadedFile) -> list[ProductRow | RowProblem]:
    """The rows of an uploaded CSV in the import layout, a repeated id reported as a RowProblem. Raises
    ValueError when it lacks a column or has more than BULK_UPLOAD_MAX_CSV_ROWS rows."""
    limit = settings.BULK_UPLOAD_MAX_CSV_ROWS
    upload.seek(0)
    # Undecodable bytes become lone surrogates, so that only their own row is rejected.
    handle = io.TextIOWrapper(upload.file, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        rows = list(without_duplicate_skus(read_styles(handle, upload.name, limit + 1)))
    finally:
        handle.detach()  # the upload stays open: Django closes it with the request
    if len(rows) > limit:
        raise ValueError(
            f"{upload.name} has more than {limit} rows; upload it in parts, or import a whole catalogue with "
            "manage.py import_catalog."
        )
    return rows


def create_batch(
    photos: list[UploadedFile], csv_rows: list[ProductRow | RowProblem], *, csv_name: str = "", created_by=None
) -> BulkUpload:
    """Stage the photos and plan the batch's entries: the photos (in `photo_order`), then the CSV rows that no
    photo came with or that could not be read."""
    rows = {row.sku: row for row in csv_rows if isinstance(row, ProductRow)}
    candidates = {sku for photo in photos for sku in sku_candidates(photo.name)}
    known_skus = set(rows) | set(Product.objects.filter(sku__in=candidates).values_list("sku", flat=True))
    matched = sorted(
        ((photo, match_sku(photo.name, known_skus)) for photo in photos), key=lambda m: photo_order(m[0].name, m[1])
    )
    entries = []
    for photo, sku in matched:
        entry = BulkUploadEntry(file_name=photo.name[:255], sku=sku or "")
        if sku is None:
            entry.outcome, entry.message = Outcome.SKIPPED, no_product_message(photo.name)
        elif sku in rows:
            entry.csv_line, entry.fields = rows[sku].line, rows[sku].fields
        entries.append(entry)
    photographed = {entry.sku for entry in entries}
    for row in sorted(csv_rows, key=lambda row: row.line):
        if isinstance(row, RowProblem):
            entries.append(BulkUploadEntry(csv_line=row.line, outcome=Outcome.SKIPPED, message=row.reason))
        elif row.sku not in photographed:
            entries.append(BulkUploadEntry(csv_line=row.line, sku=row.sku, fields=row.fields))

    with transaction.atomic():
        batch = BulkUpload.objects.create(csv_name=csv_name[:255], created_by=created_by)
        for position, entry in enumerate(entries):
            entry.batch, entry.position = batch, position
        BulkUploadEntry.objects.bulk_create(entries)
        try:
            batch.staging_dir.mkdir(mode=0o700, parents=True)
            for (photo, _), entry in zip(matched, entries):
                if entry.outcome == Outcome.PENDING:
                    _stage(photo, _staged_path(batch, entry))
        except BaseException:
            discard_staged_photos(batch)
            raise
    return batch


def _stage(photo: UploadedFile, path: Path) -> None:
    with path.open("wb") as staged:
        for chunk in photo.chunks():
            staged.write(chunk)


def _staged_path(batch: BulkUpload, entry: BulkUploadEntry) -> Path:
    return batch.staging_dir / str(entry.position)


def discard_staged_photos(batch: BulkUpload) -> None:
    shutil.rmtree(batch.staging_dir, ignore_errors=True)


def runs_inline(batch: BulkUpload) -> bool:
    """Small batches are processed in the request; larger ones by a worker."""
    return batch.entries.pending().count() <= settings.BULK_UPLOAD_INLINE_MAX_FILES


# --- Processing -------------------------------------------------------------------------------------------


def process_bulk_upload(batch_id: int) -> BulkUpload:
    """Work through the batch's pending entries, unless someone else is (a batch is taken only when it is
    waiting, failed or stalled). An error stops the batch as failed, with every finished entry complete;
    a database that cannot be reached raises, so that the task is retried. Returns the batch as it stands."""
    now = timezone.now()
    claimed = (
        BulkUpload.objects.claimable()
        .filter(pk=batch_id)
        .update(status=BulkUpload.Status.RUNNING, started_at=now, updated_at=now, error="")
    )
    batch = BulkUpload.objects.get(pk=batch_id)
    if not claimed:
        return batch
    try:
        _process_entries(batch)
    except Exception as exc:
        logger.exception("Bulk upload %s stopped", batch_id)
        _finish(batch, BulkUpload.Status.FAILED, error=f"{type(exc).__name__}: {exc}")
        if isinstance(exc, OperationalError | InterfaceError):
            raise  # the task is retried, and takes the failed batch up again
    else:
        _finish(batch, BulkUpload.Status.DONE)
        discard_staged_photos(batch)
    batch.refresh_from_db()
    return batch


def _finish(batch: BulkUpload, status: str, error: str = "") -> None:
    now = timezone.now()
    BulkUpload.objects.filter(pk=batch.pk).update(status=status, error=error, finished_at=now, updated_at=now)


def _process_entries(batch: BulkUpload) -> None:
    # One photo at a time: decoding them in a thread pool, as the import does, measured no faster here.
    vocabulary = Vocabulary.in_use()
    for entry in batch.entries.pending():
        _process_entry(entry, _read_photo(batch, entry), vocabulary)


def _read_photo(batch: BulkUpload, entry: BulkUploadEntry) -> NormalisedImage | str | None:
    """The entry's photo as we store it, why it cannot be used, or None for a CSV row."""
    if not entry.file_name:
        return None
    return normalised_image_or_reason(partial(_staged_path(batch, entry).open, "rb"))


def _process_entry(entry: BulkUploadEntry, image: NormalisedImage | str | None, vocabulary: Vocabulary) -> None:
    """One entry's writes and its outcome, in one transaction; a refused write rolls back and is reported."""
    if isinstance(image, str):
        _record(entry, Outcome.SKIPPED, image)
        return
    stored: list[ProductImage] = []  # files written by this entry, removed if its writes roll back
    try:
        with row_savepoint():
            outcome, message, product = _write(entry, image, vocabulary, stored)
            _record(entry, outcome, message, product)
    except RowRefused as refused:
        _remove_files(stored)
        _record(entry, Outcome.SKIPPED, refused.reason)
    except BaseException:
        _remove_files(stored)
        raise


def _write(
    entry: BulkUploadEntry, image: NormalisedImage | None, vocabulary: Vocabulary, stored: list[ProductImage]
) -> tuple[str, str, Product | None]:
    """The entry's writes; returns its outcome, what the report says about it (a phrase, like the import's
    reasons) and its product."""
    product = Product.objects.filter(sku=entry.sku).first()
    if image is None and product is None:
        return Outcome.SKIPPED, f"no photo for this new product: add one named {entry.sku}.jpg", None
    if entry.fields:
        row = ProductRow(entry.csv_line, entry.sku, vocabulary.normalise(entry.fields))
        product, fields = upsert_product(row, product)
    elif product is None:  # deleted since the batch was uploaded
        return Outcome.SKIPPED, no_product_message(entry.file_name), None
    else:
        fields = "unchanged"

    notes = {
        "created": [f"product created from CSV line {entry.csv_line}"],
        "updated": [f"fields updated from CSV line {entry.csv_line}"],
        "unchanged": [] if image else [f"Fields already as in CSV line {entry.csv_line}"],
    }[fields]
    added = False
    if image is not None:
        photo, added = add_photo(product, image)
        if added:
            stored.append(photo)
        notes.append(f"photo added as photo {photo.position + 1}" if added else "the product already has this photo")
    outcome = {"created": Outcome.CREATED, "updated": Outcome.UPDATED}.get(
        fields, Outcome.ADDED if added else Outcome.UNCHANGED
    )
    return outcome, "; ".join(notes), product


def _record(entry: BulkUploadEntry, outcome: str, message: str, product: Product | None = None) -> None:
    """Save the entry's outcome and show the batch is alive, with the entry's writes (when in their transaction)."""
    entry.outcome, entry.message, entry.product = outcome, message, product
    with transaction.atomic():
        entry.save(update_fields=["outcome", "message", "product"])
        BulkUpload.objects.filter(pk=entry.batch_id).update(updated_at=timezone.now())


def _remove_files(photos: list[ProductImage]) -> None:
    for photo in photos:
        photo.image.storage.delete(photo.image.name)
