"""A Python whose ``PYTHONPATH`` starts here cannot import Celery, as if it were not installed.

Plays a project without Celery: tests/test_without_celery.py and the
``db_worker`` processes of tests/test_db_worker.py.
"""

import sys

for _name in ("celery", "kombu"):
    sys.modules[_name] = None  # type: ignore[assignment]  # import raises ImportError
