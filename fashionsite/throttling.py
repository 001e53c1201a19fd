"""Per-client limits on costly requests (django-ratelimit's counters, in the shared cache).

A limit like "30/m" counts requests per client address in fixed windows. When the cache is down,
requests are let through: a Redis outage must not take photo search or the admin login away.
"""

import logging

from django.conf import settings
from django.shortcuts import render
from django_ratelimit.core import get_usage

logger = logging.getLogger(__name__)


def retry_after(request, group: str, rate: str) -> int | None:
    """Count this request against the client's `rate` for `group`; the seconds to wait when over it."""
    if not rate:
        return None
    try:
        usage = get_usage(request, group=group, key="ip", rate=rate, increment=True)
    except Exception as exc:  # the cache is unreachable: fail open
        logger.warning("Rate limit %s not checked, the cache is unavailable: %s", group, exc)
        return None
    if usage and usage["should_limit"]:
        return max(int(usage["time_left"]), 1)
    return None


def too_many_requests_page(request, seconds: int, what: str):
    response = render(request, "429.html", {"seconds": seconds, "what": what}, status=429)
    response["Retry-After"] = str(seconds)
    return response


def throttled_admin_login(request, **kwargs):
    """The admin's login view, with sign-in attempts limited per client (ADMIN_LOGIN_RATE_LIMIT)."""
    from django.contrib import admin

    if request.method == "POST":
        seconds = retry_after(request, "admin-login", settings.ADMIN_LOGIN_RATE_LIMIT)
        if seconds:
            return too_many_requests_page(request, seconds, "sign-in attempts")
    return admin.site.login(request, **kwargs)
