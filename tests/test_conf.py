from __future__ import annotations

import socket

import pytest
from django.core.exceptions import ImproperlyConfigured

from queued_storage.conf import conf


def test_defaults_match_django_queued_storage_08():
    assert conf.CACHE_PREFIX == "queued_storage"
    assert conf.CACHE == "default"
    assert conf.QUEUE is None


def test_settings_are_read_lazily(settings):
    settings.QUEUED_STORAGE_RETRIES = 9
    settings.QUEUED_STORAGE_QUEUE = "uploads"
    assert (conf.RETRIES, conf.QUEUE) == (9, "uploads")
    del settings.QUEUED_STORAGE_RETRIES
    assert conf.RETRIES == 5


def test_host_defaults_to_the_machine_name(settings):
    assert socket.gethostname() == conf.HOST
    settings.QUEUED_STORAGE_HOST = "web-2"
    assert conf.HOST == "web-2"


@pytest.mark.parametrize("value", [-1, 0, "soon", True])
def test_bad_delay_names_the_setting(settings, value):
    settings.QUEUED_STORAGE_RETRY_DELAY = value
    with pytest.raises(ImproperlyConfigured, match="QUEUED_STORAGE_RETRY_DELAY"):
        _ = conf.RETRY_DELAY


@pytest.mark.parametrize("value", [0, -1, 2.5, "10", True])
def test_bad_batch_size_names_the_setting(settings, value):
    settings.QUEUED_STORAGE_BATCH_FILES = value
    with pytest.raises(ImproperlyConfigured, match="QUEUED_STORAGE_BATCH_FILES"):
        _ = conf.BATCH_FILES


def test_batch_size_defaults_to_ten(settings):
    assert conf.BATCH_FILES == 10
    settings.QUEUED_STORAGE_BATCH_FILES = 1
    assert conf.BATCH_FILES == 1
