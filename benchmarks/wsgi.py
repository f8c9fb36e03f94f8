"""WSGI application of the benchmark server (waitress, in its own process)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")

# First, as a project's package __init__ does: a storage built before the
# Celery app exists would bind its task to Celery's default (AMQP) app.
from django.core.wsgi import get_wsgi_application

from benchmarks.celery_app import app as celery_app  # noqa: F401

application = get_wsgi_application()
