"""The example project; its Celery app loads with Django, as Celery's Django guide shows."""

from __future__ import annotations

from .celery import app as celery_app

__all__ = ["celery_app"]
