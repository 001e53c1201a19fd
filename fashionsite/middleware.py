"""A database outage answers 503, as a page or, under /api/, as the API's JSON error."""

import logging

from django.db import InterfaceError, OperationalError
from django.http import JsonResponse
from django.shortcuts import render

logger = logging.getLogger(__name__)
RETRY_SECONDS = 10


class ServiceUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        logger.error("Database unavailable for %s: %s", request.path, exception)
        message = "The shop is briefly unavailable. Please try again in a few seconds."
        if request.path.startswith("/api/"):
            response = JsonResponse({"error": {"status": 503, "code": "unavailable", "message": message}}, status=503)
        else:
            response = render(request, "503.html", {"message": message}, status=503)
        response["Retry-After"] = str(RETRY_SECONDS)
        return response
