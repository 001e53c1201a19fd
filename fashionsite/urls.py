from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve

from recommender.api import api

from .throttling import throttled_admin_login

urlpatterns = [
    path("admin/login/", throttled_admin_login),  # before the admin's own URLs, which it wraps
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("", include("recommender.urls")),
    path("", include("catalog.urls")),
]

if settings.SERVE_MEDIA:
    urlpatterns.append(
        re_path(rf"^{settings.MEDIA_URL.strip('/')}/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT})
    )
