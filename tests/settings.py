"""Settings of the test project; the services' addresses come from the environment.

tests/plugin.py starts Redis, the S3 endpoint (and PostgreSQL) before Django
loads this module, and Celery workers started by the tests inherit the same
environment, so web side and worker side share every service.
"""

from __future__ import annotations

import os
import tempfile
from importlib.util import find_spec
from pathlib import Path

env = os.environ.get
# tests/plugin.py makes (and removes) the work directory.  Imported without it,
# by mypy's Django plugin for one, nothing runs, so nothing is made here.
WORK = Path(env("QS_WORKDIR") or Path(tempfile.gettempdir()) / "qs-tests-without-plugin")

SECRET_KEY = "tests-only"
DEBUG = False
USE_TZ = True
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "queued_storage",
    "tests.testapp",
    # Django Tasks' database backend: on Django 5.2 the framework is the django-tasks backport.
    *([] if find_spec("django.tasks") else ["django_tasks"]),
    "django_tasks_db",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
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

if env("QS_DB") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": env("QS_PG_HOST", "127.0.0.1"),
            "PORT": env("QS_PG_PORT", "5432"),
            "USER": env("QS_PG_USER", "postgres"),
            "NAME": "qs_tests",
            "TEST": {"NAME": "qs_tests"},
        }
    }
else:
    _sqlite = str(WORK / "db.sqlite3")
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _sqlite,
            # The worker opens the very file the tests use.
            "TEST": {"NAME": _sqlite},
            "OPTIONS": {"timeout": 20},
        }
    }

REDIS_URL = env("QS_REDIS_URL", "")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "tests.lazycache.LazyRedisCache", "LOCATION": f"{REDIS_URL}/1"}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(WORK / "cache"),
        }
    }

CELERY_BROKER_URL = f"{REDIS_URL}/0" if REDIS_URL else "memory://"
CELERY_TASK_ALWAYS_EAGER = env("QS_EAGER") == "1"
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# Both queues are configured; the Celery app of tests/__init__.py makes Celery
# the one chosen unless QS_QUEUE_BACKEND says "tasks" (the db_worker tests).
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": []}}
QUEUED_STORAGE_QUEUE_BACKEND = env("QS_QUEUE_BACKEND") or None

# A worker may play another web host, with its own disk (tests/test_hosts.py).
MEDIA_ROOT = env("QS_MEDIA_ROOT") or str(WORK / "media")
MEDIA_URL = "/media/"

S3_ENDPOINT = env("QS_S3_ENDPOINT", "http://127.0.0.1:1")
AWS_S3_ENDPOINT_URL = S3_ENDPOINT
AWS_ACCESS_KEY_ID = "testing"
AWS_SECRET_ACCESS_KEY = "testing"
AWS_S3_REGION_NAME = "us-east-1"
AWS_STORAGE_BUCKET_NAME = "qs-bucket"
AWS_S3_ADDRESSING_STYLE = "path"
AWS_QUERYSTRING_AUTH = True  # private bucket: signed URLs, as most sites run it

STORAGES = {
    "default": {
        "BACKEND": "queued_storage.QueuedStorage",
        "OPTIONS": {
            "local": "django.core.files.storage.FileSystemStorage",
            "remote": "storages.backends.s3.S3Storage",
        },
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

QUEUED_STORAGE_RETRIES = int(env("QS_RETRIES", "3"))
QUEUED_STORAGE_RETRY_DELAY = 1
QUEUED_STORAGE_LEASE = float(env("QS_LEASE", "6"))
QUEUED_STORAGE_HOST = env("QS_HOST") or None
QUEUED_STORAGE_HOST_QUEUE = env("QS_HOST_QUEUE") or None
# Inline, so a save's message is in the broker when save() returns; the
# default (a background thread) is tested where a test removes this setting.
QUEUED_STORAGE_PUBLISH_IN_BACKGROUND = False
# A worker started with QS_SWEEP_INTERVAL sweeps that often; else every minute, the default.
if env("QS_SWEEP_INTERVAL"):
    QUEUED_STORAGE_SWEEP_INTERVAL = float(env("QS_SWEEP_INTERVAL", ""))

if env("QS_S3_SMALL_PARTS") == "1":
    # 5 MB parts, one in memory at a time: a copy reads the local file only as
    # fast as the (throttled) upload goes, so progress shows mid-way.
    from boto3.s3.transfer import TransferConfig

    AWS_S3_TRANSFER_CONFIG = TransferConfig(
        multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20, max_concurrency=1
    )
    AWS_S3_TRANSFER_CONFIG.max_in_memory_upload_chunks = 1

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"queued_storage": {"handlers": ["console"], "level": "INFO"}},
}
