# Importing the Celery app here makes it the current app in every process that
# loads the test settings, as a project's proj/__init__.py does.  A process
# that plays a project without Celery (tests/test_without_celery.py) has none.
from importlib.util import find_spec

if find_spec("celery") is not None:
    from .celery_app import app as celery_app

    __all__ = ["celery_app"]
