"""Settings of the scale scenario's processes: the benchmark settings, the admin, and one database.

``QS_SCALE_DB`` names the database: ``sqlite:<path>`` or ``postgres:<port>:<name>``.
SQLite runs with Django's defaults (no WAL): the configuration a new project has.
"""

from __future__ import annotations

from benchmarks.settings import *  # noqa: F403
from benchmarks.settings import INSTALLED_APPS, MEDIA_ROOT, env

ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
ROOT_URLCONF = "benchmarks.scale_urls"
INSTALLED_APPS = [
    "django.contrib.admin",
    *INSTALLED_APPS,
    "django.contrib.sessions",
    "django.contrib.messages",
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
MEDIA_ROOT = env("QS_SCALE_MEDIA") or MEDIA_ROOT
# Sessions in the cache: logging in writes no row beside the ones measured.
SESSION_ENGINE = "django.contrib.sessions.backends.cache"

_kind, _, _where = (env("QS_SCALE_DB") or "sqlite::memory:").partition(":")
if _kind == "postgres":
    _port, _, _name = _where.partition(":")
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": "127.0.0.1",
            "PORT": _port,
            "USER": "postgres",
            "NAME": _name,
        }
    }
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _where}}
