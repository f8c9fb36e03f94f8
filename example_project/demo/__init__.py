"""The example project; its Celery app loads with Django, as Celery's Django guide shows.

Without Celery installed (``DEMO_QUEUE=tasks`` needs none) there is no app to load.
"""

from __future__ import annotations

from importlib.util import find_spec

if find_spec("celery") is not None:
    from .celery import app as celery_app

    __all__ = ["celery_app"]
