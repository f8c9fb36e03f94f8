"""Settings of the example project.

Everything has an embedded default that needs no server: SQLite, a file-based
cache and a filesystem Celery broker under ``DEMO_DATA_DIR``.  Environment
variables switch to production-like parts:

- ``DEMO_QUEUE=tasks``: Django's Tasks framework instead of Celery, its queue
  a table of the SQLite database (django-tasks-db; ``manage.py db_worker``).
- ``REDIS_URL``: Redis as the Celery broker and the shared cache.
- ``AWS_STORAGE_BUCKET_NAME``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_S3_REGION_NAME``, ``AWS_S3_ENDPOINT_URL`` (for an S3-compatible
  server), ``AWS_QUERYSTRING_AUTH``: the remote storage.  ``run_demo.py`` sets
  them to its own moto server unless the bucket is given.
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

env = os.environ.get
BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env("DEMO_DATA_DIR") or BASE_DIR / "var")


def _flag(name: str, default: bool) -> bool:
    value = env(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


SECRET_KEY = env("DJANGO_SECRET_KEY", "demo-only-not-secret")
DEBUG = _flag("DJANGO_DEBUG", True)
ALLOWED_HOSTS = ["127.0.0.1", "localhost", *filter(None, env("DJANGO_ALLOWED_HOSTS", "").split(","))]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "demo.urls"
WSGI_APPLICATION = "demo.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "queued_storage",
    "uploads",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "db.sqlite3",
        # Web and worker processes write to the same file: wait for locks, and
        # take the write lock at BEGIN so concurrent writers queue up cleanly.
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }
}

# The cache mirrors where each file is, so web and worker must share it.
REDIS_URL = env("REDIS_URL", "")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CELERY_BROKER_URL = REDIS_URL
    # Longer than the longest transfer, or Redis redelivers a running one.
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {"visibility_timeout": 3600}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": DATA_DIR / "cache",
        }
    }
    CELERY_BROKER_URL = "filesystem://"
    # kombu's filesystem queue, with messages that appear whole (see demo/broker.py).
    CELERY_BROKER_TRANSPORT = "demo.broker:Transport"
    _queue = DATA_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue),
        "data_folder_out": str(_queue),
        "control_folder": str(DATA_DIR / "broker-control"),
        "store_processed": False,
        "polling_interval": 0.2,
    }
    for _folder in (_queue, DATA_DIR / "broker-control"):
        _folder.mkdir(parents=True, exist_ok=True)

# A killed worker must not lose a transfer (see docs/deployment.rst).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

STATIC_URL = "/static/"
MEDIA_URL = "/media/"
MEDIA_ROOT = DATA_DIR / "media"

# The remote side: django-storages' S3Storage reads these settings.
AWS_STORAGE_BUCKET_NAME = env("AWS_STORAGE_BUCKET_NAME", "queued-storage-demo")
AWS_S3_REGION_NAME = env("AWS_S3_REGION_NAME", "us-east-1")
AWS_S3_ENDPOINT_URL = env("AWS_S3_ENDPOINT_URL") or None
AWS_ACCESS_KEY_ID = env("AWS_ACCESS_KEY_ID")
AWS_SECRET_ACCESS_KEY = env("AWS_SECRET_ACCESS_KEY")
AWS_S3_ADDRESSING_STYLE = env("AWS_S3_ADDRESSING_STYLE") or ("path" if AWS_S3_ENDPOINT_URL else None)
AWS_QUERYSTRING_AUTH = _flag("AWS_QUERYSTRING_AUTH", True)
AWS_S3_FILE_OVERWRITE = True

STORAGES = {
    "default": {
        "BACKEND": "queued_storage.QueuedStorage",
        "OPTIONS": {
            "local": "django.core.files.storage.FileSystemStorage",
            "remote": "storages.backends.s3.S3Storage",
            # The built-in transfer, slowed down (DEMO_BANDWIDTH) so you can
            # watch the progress bar; see uploads/tasks.py and uploads/django_tasks.py.
            "task": "uploads.tasks.DemoTransfer",
        },
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# The queue: Celery, or Django's Tasks framework with its queue in this
# database, which needs no broker (docs/queues.rst).
DEMO_QUEUE = env("DEMO_QUEUE", "celery")
if DEMO_QUEUE == "tasks":
    # "django_tasks": on Django 5.2 only, the backport of django.tasks.
    INSTALLED_APPS += [*([] if find_spec("django.tasks") else ["django_tasks"]), "django_tasks_db"]
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    QUEUED_STORAGE_QUEUE_BACKEND = "tasks"
    STORAGES["default"]["OPTIONS"]["task"] = "uploads.django_tasks.demo_transfer"

# Bytes per second the demo transfer reads the local file at; 0: full speed.
DEMO_BANDWIDTH = int(env("DEMO_BANDWIDTH", "0"))

# Short retries and a short lease, so a demo shows failures and progress quickly.
QUEUED_STORAGE_RETRIES = 3
QUEUED_STORAGE_RETRY_DELAY = 2
QUEUED_STORAGE_LEASE = 3

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"queued_storage": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
