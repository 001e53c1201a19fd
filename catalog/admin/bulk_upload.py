"""Bulk upload in admin: the drop page (add), progress and per-file report (change), past batches (list)."""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from ..bulk_upload import (
    allow_bulk_upload_files,
    create_batch,
    discard_staged_photos,
    process_bulk_upload,
    read_csv,
    runs_inline,
)
from ..models import BulkUpload, BulkUploadEntry
from ..tasks import queue_bulk_upload
from ..uploads import UploadRefusal, refuse_upload

PRODUCT_PERMISSIONS = ("catalog.add_product", "catalog.change_product")


class MultipleFileInput(forms.FileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Any number of files, each judged later on its own, so that one bad photo does not refuse the rest."""

    widget = MultipleFileInput

    def clean(self, data, initial=None):
        files = [file for file in data or [] if file]
        if not files and self.required:
            raise forms.ValidationError(self.error_messages["required"], code="required")
        return files


class BulkUploadForm(forms.Form):
    photos = MultipleFileField(
        label="Photos",
        widget=MultipleFileInput(attrs={"accept": "image/*", "aria-describedby": "photos-help"}),
        error_messages={"required": "Choose at least one photo."},
    )
    csv_file = forms.FileField(
        label="Product details (CSV, optional)",
        required=False,
        widget=forms.FileInput(attrs={"accept": ".csv,text/csv", "aria-describedby": "csv-help"}),
    )

    def clean_photos(self):
        photos = self.cleaned_data["photos"]
        if len(photos) > settings.BULK_UPLOAD_MAX_FILES:
            raise forms.ValidationError(
                f"Choose at most {settings.BULK_UPLOAD_MAX_FILES} photos per batch (these are {len(photos)})."
            )
        return photos

    def clean_csv_file(self):
        upload = self.cleaned_data["csv_file"]
        try:
            self.cleaned_data["csv_rows"] = read_csv(upload) if upload else []
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        return upload


def refuse_bulk_upload(request) -> UploadRefusal | None:
    """A batch refused before its form is used (catalog.uploads), read with the bulk upload's own file limit."""
    allow_bulk_upload_files(request)
    limit = filesizeformat(settings.BULK_UPLOAD_MAX_BYTES)
    return refuse_upload(
        request,
        max_bytes=settings.BULK_UPLOAD_MAX_BYTES,
        too_large=f"A batch may be at most {limit}. Upload the photos in several batches.",
        too_many_files=f"Choose at most {settings.BULK_UPLOAD_MAX_FILES} photos per batch; upload the rest in another.",
    )


@admin.register(BulkUpload)
class BulkUploadAdmin(admin.ModelAdmin):
    list_display = ("__str__", "created_by", "created_at", "status", "photos", "results")
    list_filter = ("status",)
    list_select_related = ("created_by",)

    def get_queryset(self, request):
        return super().get_queryset(request).with_counts()

    def has_add_permission(self, request):
        return super().has_add_permission(request) and request.user.has_perms(PRODUCT_PERMISSIONS)

    @admin.display(description="Photos", ordering="photo_count")
    def photos(self, batch):
        return batch.photo_count

    @admin.display(description="Results")
    def results(self, batch):
        counts = ((getattr(batch, f"{outcome}_count"), outcome) for outcome in BulkUploadEntry.Outcome.values)
        return ", ".join(f"{count} {outcome}" for count, outcome in counts if count) or "—"

    def get_urls(self):
        return [
            path(
                "<path:object_id>/progress/",
                self.admin_site.admin_view(self.progress_view),
                name="catalog_bulkupload_progress",
            ),
            path(
                "<path:object_id>/run-again/",
                self.admin_site.admin_view(self.run_again_view),
                name="catalog_bulkupload_run_again",
            ),
            *super().get_urls(),
        ]

    # The drop page. CSRF is checked by _add_batch, once the body was read with the bulk upload's own limits.
    @csrf_exempt
    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return self._drop_page(request, BulkUploadForm())
        refusal = refuse_bulk_upload(request)
        if refusal:
            return self._drop_page(request, BulkUploadForm(), refusal=refusal.message, status=refusal.status)
        return self._add_batch(request)

    @method_decorator(csrf_protect)
    def _add_batch(self, request):
        form = BulkUploadForm(request.POST, request.FILES)
        if not form.is_valid():
            return self._drop_page(request, form, status=400)
        csv_file = form.cleaned_data["csv_file"]
        batch = create_batch(
            form.cleaned_data["photos"],
            form.cleaned_data["csv_rows"],
            csv_name=csv_file.name if csv_file else "",
            created_by=request.user,
        )
        self._start(request, batch)
        return HttpResponseRedirect(batch.get_absolute_url())

    def _drop_page(self, request, form, *, refusal: str = "", status: int = 200):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Upload photos",
            "form": form,
            "refusal": refusal,
            "max_files": settings.BULK_UPLOAD_MAX_FILES,
            "max_bytes": settings.BULK_UPLOAD_MAX_BYTES,
            "max_photo_bytes": settings.IMAGE_UPLOAD_MAX_BYTES,
            "max_csv_rows": settings.BULK_UPLOAD_MAX_CSV_ROWS,
        }
        return TemplateResponse(request, "admin/catalog/bulkupload/drop.html", context, status=status)

    def _start(self, request, batch: BulkUpload) -> None:
        """Process a small batch now and queue a larger one, telling staff which happened."""
        if runs_inline(batch):
            batch = process_bulk_upload(batch.pk)
            if batch.status == BulkUpload.Status.FAILED:
                self.message_user(request, f"{batch} stopped: {batch.error}", messages.ERROR)
        elif queue_bulk_upload(batch):
            self.message_user(request, f"{batch} is being processed in the background.", messages.SUCCESS)
        else:
            self.message_user(
                request,
                f"The task queue is unreachable. {batch} is saved and will be processed as soon as the queue is "
                "back (or press Run again then).",
                messages.WARNING,
            )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        batch = self._batch(request, object_id)
        context = {
            **self.admin_site.each_context(request),
            **_progress(batch),
            "opts": self.opts,
            "title": str(batch),
            "batch": batch,
            "can_run_again": _can_run_again(batch) and self.has_change_permission(request, batch),
            "entries": batch.entries.select_related("product").order_by("position"),
        }
        return TemplateResponse(request, "admin/catalog/bulkupload/report.html", context)

    def progress_view(self, request, object_id):
        return JsonResponse(_progress(self._batch(request, object_id)))

    @method_decorator(require_POST)
    def run_again_view(self, request, object_id):
        batch = self._batch(request, object_id)
        if not self.has_change_permission(request, batch):
            raise PermissionDenied
        if _can_run_again(batch):
            self._start(request, batch)
        else:
            self.message_user(request, f"{batch} is {batch.get_status_display().lower()}.", messages.INFO)
        return HttpResponseRedirect(batch.get_absolute_url())

    def _batch(self, request, object_id) -> BulkUpload:
        batch = get_object_or_404(self.get_queryset(request), pk=unquote(object_id))
        if not self.has_view_or_change_permission(request, batch):
            raise PermissionDenied
        return batch

    def delete_model(self, request, obj):
        discard_staged_photos(obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for batch in queryset:
            discard_staged_photos(batch)
        super().delete_queryset(request, queryset)


def _progress(batch: BulkUpload) -> dict:
    """How far the batch is (from with_counts()); its state is its status, or "stalled" when it is marked running
    but its processor is gone."""
    return {
        "state": "stalled" if batch.is_stalled else batch.status,
        "status": batch.get_status_display(),
        "done": batch.entry_count - batch.pending_count,
        "total": batch.entry_count,
    }


def _can_run_again(batch: BulkUpload) -> bool:
    """Done batches have nothing left, and a batch being processed must not be started twice by hand."""
    return batch.status in (BulkUpload.Status.WAITING, BulkUpload.Status.FAILED) or batch.is_stalled
