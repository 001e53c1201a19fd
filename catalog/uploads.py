"""The check every upload view makes before it uses the request body (search by photo, the API, the
admin's bulk upload): refuse it unread when it is too large by its Content-Length or of unknown
length, and refuse a body Django cannot parse as a form."""

import logging
from dataclasses import dataclass

from django.core.exceptions import SuspiciousOperation, TooManyFilesSent
from django.http.multipartparser import MultiPartParserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadRefusal:
    status: int
    code: str
    message: str


def refuse_upload(request, *, max_bytes: int, too_large: str, too_many_files: str) -> UploadRefusal | None:
    """Why the request is refused (with `too_large` or `too_many_files` as the message for those
    cases), or None once Django has read the body: the request keeps what it parsed."""
    if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        return UploadRefusal(411, "length_required", "Send the upload with a Content-Length (not chunked).")
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > max_bytes:
        return UploadRefusal(400, "too_large", too_large)
    try:
        _ = request.FILES  # parses the body once (form fields too)
    except TooManyFilesSent:
        return UploadRefusal(400, "too_many_files", too_many_files)
    except (MultiPartParserError, SuspiciousOperation) as exc:
        logger.info("Unreadable upload: %s", exc)
        return UploadRefusal(400, "invalid_body", "The request is not a form with photos we can read.")
    return None
