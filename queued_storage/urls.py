"""Stable file URLs: ``path("files/", include("queued_storage.urls"))`` serves the default storage.

Another storage is named in the include's kwargs, by ``STORAGES`` alias or
``app_label.Model.field``::

    path("photos/", include("queued_storage.urls"), {"storage": "shop.Product.photo"})

An optional ``"permission"`` kwarg overrides ``QUEUED_STORAGE_SERVE_PERMISSION``.
"""

from __future__ import annotations

from django.urls import path

from .views import serve

app_name = "queued_storage"
urlpatterns = [path("<path:name>", serve, name="serve")]
