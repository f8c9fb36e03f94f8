from __future__ import annotations

import socket

import pytest

from queued_storage.conf import conf, default, problems


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


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("QUEUED_STORAGE_RETRY_DELAY", -1, "a positive number of seconds"),
        ("QUEUED_STORAGE_RETRY_DELAY", 0, "a positive number of seconds"),
        ("QUEUED_STORAGE_RETRY_DELAY", "soon", "a positive number of seconds"),
        ("QUEUED_STORAGE_RETRY_DELAY", True, "a positive number of seconds"),
        ("QUEUED_STORAGE_BATCH_FILES", 0, "a whole number of files, 1 or more"),
        ("QUEUED_STORAGE_BATCH_FILES", 2.5, "a whole number of files, 1 or more"),
        ("QUEUED_STORAGE_BATCH_FILES", "10", "a whole number of files, 1 or more"),
        ("QUEUED_STORAGE_RETRIES", -1, "0 or more"),
        ("QUEUED_STORAGE_LEASE", -5, "a positive number of seconds"),
        ("QUEUED_STORAGE_CACHE_TIMEOUT", 0, "or None"),
        ("QUEUED_STORAGE_CACHE_TIMEOUT", "1h", "or None"),
        ("QUEUED_STORAGE_HOST_QUEUE", "transfers", "'{host}'"),
        ("QUEUED_STORAGE_PUBLISH_IN_BACKGROUND", "yes", "True (send transfer messages"),
        ("QUEUED_STORAGE_SWEEP_INTERVAL", -1, "a positive number of seconds, or 0 or None"),
        ("QUEUED_STORAGE_SWEEP_INTERVAL", "60", "a positive number of seconds, or 0 or None"),
        ("QUEUED_STORAGE_SWEEP_INTERVAL", True, "a positive number of seconds, or 0 or None"),
    ],
)
def test_a_value_out_of_range_reads_as_the_default_and_is_named(settings, name, value, expected):
    setattr(settings, name, value)
    attribute = name.removeprefix("QUEUED_STORAGE_")
    assert getattr(conf, attribute) == default(name) or (attribute, default(name)) == ("HOST_QUEUE", None)
    [problem] = problems()
    assert problem.startswith(f"{name} must be ") and expected in problem and repr(value) in problem


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("QUEUED_STORAGE_RETRIES", 0),
        ("QUEUED_STORAGE_CACHE_TIMEOUT", None),
        ("QUEUED_STORAGE_RETRY_DELAY", 0.5),
        ("QUEUED_STORAGE_HOST_QUEUE", "transfers.{host}"),
    ],
)
def test_values_in_range_are_read_as_set(settings, name, value):
    setattr(settings, name, value)
    assert getattr(conf, name.removeprefix("QUEUED_STORAGE_")) == value
    assert problems() == []


def test_batch_size_defaults_to_ten(settings):
    assert conf.BATCH_FILES == 10
    settings.QUEUED_STORAGE_BATCH_FILES = 1
    assert conf.BATCH_FILES == 1


def test_background_publishing_and_the_workers_sweeps_are_on_by_default(settings):
    del settings.QUEUED_STORAGE_PUBLISH_IN_BACKGROUND  # tests/settings.py asks for inline
    assert (conf.PUBLISH_IN_BACKGROUND, conf.SWEEP_INTERVAL) == (True, 60)


@pytest.mark.parametrize(("value", "read"), [(0, None), (None, None), (0.5, 0.5), (300, 300)])
def test_a_sweep_interval_of_zero_or_none_turns_the_sweeps_off(settings, value, read):
    settings.QUEUED_STORAGE_SWEEP_INTERVAL = value
    assert read == conf.SWEEP_INTERVAL
    assert problems() == []
