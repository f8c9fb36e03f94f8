from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("files/", include("queued_storage.urls")),
    path(
        "photos/",
        include("queued_storage.urls", namespace="photos"),
        {"storage": "testapp.Photo.image", "permission": "tests.test_views.only_staff"},
    ),
]
