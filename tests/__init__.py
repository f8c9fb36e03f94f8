# Importing the Celery app here makes it the current app in every process that
# loads the test settings, as a project's proj/__init__.py does.
from .celery_app import app as celery_app

__all__ = ["celery_app"]
