from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("api/uploads/", views.api_uploads, name="api-uploads"),
    path("uploads/<int:pk>/delete/", views.delete, name="delete"),
    path("uploads/<int:pk>/retry/", views.retry, name="retry"),
]
