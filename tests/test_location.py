"""The location record and its cache mirror, on the real Redis cache."""

from __future__ import annotations

import pytest
from django.core.cache import caches
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage as _default
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from queued_storage import QueuedStorage, location
from queued_storage.models import FileRecord

default_storage: QueuedStorage = _default  # type: ignore[assignment]

pytestmark = pytest.mark.django_db(transaction=True)


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_save_leaves_the_cache_alone_and_the_first_read_fills_it():
    cache = caches["default"]
    name = default_storage.save("fresh.txt", ContentFile(b"x"))
    key = default_storage.get_cache_key(name)
    assert cache.get(key) is None  # no round trip in save()
    assert default_storage.url(name) == "/media/fresh.txt"
    assert cache.get(key) == "pending"


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_a_cache_miss_reads_the_state_of_exactly_this_name_in_one_query():
    names = ['o\'brien "q".txt', "ünïcode/ß.txt", 'o\'brien "q".txt.bak']
    saved = [default_storage.save(n, ContentFile(b"x")) for n in names]
    FileRecord.objects.filter(name=saved[1]).update(state="remote")
    caches["default"].clear()
    with CaptureQueriesContext(connection) as queries:
        assert location.cached_state(default_storage.key, saved[0]) == "pending"
    assert len(queries) == 1
    assert location.cached_state(default_storage.key, saved[1]) == "remote"
    assert location.cached_state(default_storage.key, "o'brien") is None
    assert location.cached_state("another-storage", saved[1]) is None


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_name_taken_answers_from_the_database_even_over_a_stale_cache_entry():
    name = default_storage.save("taken.txt", ContentFile(b"x"))
    caches["default"].set(default_storage.get_cache_key(name), "absent")
    default_storage.local.delete(name)  # only the record still holds the name
    assert location.name_taken(default_storage.key, name)
    assert default_storage.exists(name)
    assert default_storage.get_available_name(name) != name


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_a_reader_filling_the_cache_never_overwrites_a_newer_transition():
    name = default_storage.save("race.txt", ContentFile(b"x"))
    key = default_storage.get_cache_key(name)
    # The worker switched (and wrote the cache) after a reader read "pending" from the row.
    caches["default"].set(key, "remote")
    location._cache_fill(key, "pending")
    assert caches["default"].get(key) == "remote"


def test_a_read_racing_the_switch_leaves_the_switch_in_the_cache(monkeypatch):
    name = default_storage.save("race2.txt", ContentFile(b"x"))
    key = default_storage.get_cache_key(name)
    real_get = location._cache_get

    def miss_then_switch(k):
        value = real_get(k)
        caches["default"].set(k, "remote")  # the worker's switch lands right after our miss
        return None if k == key else value

    monkeypatch.setattr(location, "_cache_get", miss_then_switch)
    assert location.cached_state(default_storage.key, name) == "pending"  # the row as read
    assert caches["default"].get(key) == "remote"  # not overwritten by the stale read


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_delete_leaves_a_short_tombstone_so_a_racing_reader_cannot_refill():
    name = default_storage.save("gone.txt", ContentFile(b"x"))
    key = default_storage.get_cache_key(name)
    default_storage.url(name)
    default_storage.delete(name)
    location._cache_fill(key, "remote")  # a reader that read the row just before the delete
    assert caches["default"].get(key) == "absent"
    assert not default_storage.exists(name)


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_claiming_no_files_claims_nothing():
    name = default_storage.save("unclaimed.txt", ContentFile(b"x"))
    assert location.claim_many(default_storage.key, [], owner="test") == []
    assert default_storage.status(name).state == "pending"


@override_settings(QUEUED_STORAGE_QUEUE="nobody-consumes-this")
def test_switching_several_copies_sets_each_on_its_own_and_the_cache_once(monkeypatch):
    names = [default_storage.save(f"batch/{n}.txt", ContentFile(b"x")) for n in "abc"]
    key = default_storage.key
    rows = {r.name: r for r in FileRecord.objects.filter(storage=key, name__in=names)}
    for name in names:
        [(outcome, _)] = location.claim_many(key, [(name, rows[name].version)], owner="test")
        assert outcome is location.Claim.CLAIMED
    default_storage.url(names[1])  # a reader cached "transferring" meanwhile
    FileRecord.objects.filter(name=names[2]).update(version="saved-again")  # c changed while it copied
    cache = caches["default"]
    writes = []
    real_set_many = type(cache).set_many
    monkeypatch.setattr(
        type(cache), "set_many", lambda self, *a, **k: writes.append(a) or real_set_many(self, *a, **k)
    )
    copies = [(name, rows[name].version, 1, "md5:x") for name in names]
    assert location.switch_many(key, copies) == [True, True, False]
    assert [r.state for r in FileRecord.objects.filter(name__in=names).order_by("name")] == [
        "remote",
        "remote",
        "transferring",
    ]
    assert len(writes) == 1  # one round trip for the batch
    assert [location.cached_state(key, name) for name in names] == ["remote", "remote", "transferring"]
    assert location.switch_many(key, copies) == [False, False, False]  # each set happens once
