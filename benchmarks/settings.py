"""Django settings of the benchmark process, its WSGI server and its Celery workers.

``benchmarks.run`` starts Redis, moto and the WAN link, then puts their
addresses in the environment, which every process it starts inherits.
"""

from __future__ import annotations

import os
import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import Any

env = os.environ.get
WORK = Path(env("QS_WORKDIR") or tempfile.mkdtemp(prefix="qs-bench-"))
REDIS_URL = env("QS_REDIS_URL", "redis://127.0.0.1:6379")
S3_ENDPOINT = env("QS_S3_ENDPOINT", "http://127.0.0.1:5000")
S3_WAN_ENDPOINT = env("QS_S3_WAN_ENDPOINT", S3_ENDPOINT)
BUCKET = "qs-bench"

SECRET_KEY = "benchmarks-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "benchmarks.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "queued_storage",
    "benchmarks",  # the models the upload scenarios create
    # Django Tasks' database backend (scenario 10); on Django 5.2 the framework is the backport.
    *([] if find_spec("django.tasks") else ["django_tasks"]),
    "django_tasks_db",
]
MIDDLEWARE: list[str] = []

# What ``startproject`` writes: SQLite with its own defaults (a rollback
# journal, synchronous=FULL) and a connection per request.  This is the
# configuration the targets are judged in.  ``QS_BENCH_TUNED=1`` (or
# ``scenarios.tuned_database()`` within a run) gives the usual production
# setting beside it: WAL with synchronous=NORMAL, persistent connections.
DATABASES: dict[str, dict[str, Any]] = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(WORK / "db.sqlite3")}
}
TUNED_SQLITE: dict[str, Any] = {
    "OPTIONS": {"timeout": 30, "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"},
    "CONN_MAX_AGE": 600,
}
if env("QS_BENCH_TUNED"):
    DATABASES["default"].update(TUNED_SQLITE)
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": f"{REDIS_URL}/1"},
    # The same Redis database through django-redis, which keeps its client
    # (docs/deployment.rst recommends it): scenario 3 measures url() with both.
    "django_redis": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": f"{REDIS_URL}/1"},
}

CELERY_BROKER_URL = f"{REDIS_URL}/0"
# As README.rst's quick start writes them (system check W001 asks for the prefetch).
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 6 * 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The scenarios that time save() alone publish to a queue no worker consumes,
# so the transfers of earlier saves do not share the CPU with later ones.
QUEUED_STORAGE_QUEUE = env("QS_BENCH_QUEUE") or None
QUEUED_STORAGE_RETRY_DELAY = 1
# The recovery scenario of the short plans shortens the lease and the sweep
# interval of its workers; the full plan keeps the defaults.
if env("QS_BENCH_LEASE"):
    QUEUED_STORAGE_LEASE = float(env("QS_BENCH_LEASE", ""))
if env("QS_BENCH_SWEEP_INTERVAL"):
    QUEUED_STORAGE_SWEEP_INTERVAL = float(env("QS_BENCH_SWEEP_INTERVAL", ""))
# Both queues are configured; Celery carries the transfers of every process
# unless QS_BENCH_QUEUE_BACKEND=tasks (scenario 10's db_worker processes).
# Scenario 10 picks django-tasks-db with override_settings in the run's process.
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": []}}
QUEUED_STORAGE_QUEUE_BACKEND = env("QS_BENCH_QUEUE_BACKEND") or "celery"

MEDIA_ROOT = str(WORK / "media")
MEDIA_URL = "/media/"
FILE_UPLOAD_TEMP_DIR = str(WORK / "upload-tmp")
Path(FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)

AWS_S3_ENDPOINT_URL = S3_ENDPOINT
AWS_ACCESS_KEY_ID = "testing"
AWS_SECRET_ACCESS_KEY = "testing"
AWS_S3_REGION_NAME = "us-east-1"
AWS_STORAGE_BUCKET_NAME = BUCKET
AWS_S3_ADDRESSING_STYLE = "path"
AWS_QUERYSTRING_AUTH = False

_FS = "django.core.files.storage.FileSystemStorage"
_S3 = "storages.backends.s3.S3Storage"
STORAGES = {
    # What the benchmarks compare: the queued storage, and its two alternatives.
    "default": {
        "BACKEND": "queued_storage.QueuedStorage",
        "OPTIONS": {"local": _FS, "remote": _S3},
    },
    "fs": {"BACKEND": _FS, "OPTIONS": {"location": str(WORK / "fs"), "base_url": "/fs/"}},
    "s3": {"BACKEND": _S3},
    "s3_wan": {"BACKEND": _S3, "OPTIONS": {"endpoint_url": S3_WAN_ENDPOINT}},
    # Transfers only when asked: the throughput scenario starts the clock itself.
    "delayed": {
        "BACKEND": "queued_storage.QueuedStorage",
        "OPTIONS": {
            "local": _FS,
            "remote": _S3,
            "local_options": {"location": str(WORK / "delayed")},
            "delayed": True,
        },
    },
    # The queued storage with its remote behind the WAN link (small files over a distance).
    "wan": {
        "BACKEND": "queued_storage.QueuedStorage",
        "OPTIONS": {
            "local": _FS,
            "remote": _S3,
            "local_options": {"location": str(WORK / "wan")},
            "remote_options": {"endpoint_url": S3_WAN_ENDPOINT},
        },
    },
    # url() is the stable view's (queued_storage.urls under /files/, benchmarks.urls).
    "served": {
        "BACKEND": "queued_storage.QueuedStorage",
        "OPTIONS": {
            "local": _FS,
            "remote": _S3,
            "local_options": {"location": str(WORK / "served")},
            "serve_url": "/files/",
        },
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"queued_storage": {"handlers": ["console"], "level": env("QS_BENCH_LOG", "WARNING")}},
}
