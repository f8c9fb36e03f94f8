"""The cluster-wide lock: one holder at a time, taken over once its lease lapsed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from django.db import connections
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from queued_storage import lock
from queued_storage.models import Lock

pytestmark = pytest.mark.django_db(transaction=True)

START = datetime(2030, 1, 1, tzinfo=timezone.utc)


class Clock:
    """The time the lock module reads, moved by the test."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(lock, "_now", fake)
    yield fake


def renew_now(held: lock.Held) -> bool:
    """:func:`lock.keep`, writing the renewal whatever the time since the last one."""
    held.renewed = float("-inf")
    return lock.keep(held)


def race(takers: int) -> list[lock.Held]:
    """``takers`` threads take the lock at once (each with its own connection); what each won."""
    barrier = threading.Barrier(takers)
    won: list[lock.Held] = []
    errors: list[BaseException] = []

    def take() -> None:
        try:
            barrier.wait(10)
            held = lock.take("race", 60)
            if held is not None:
                won.append(held)
        except BaseException as exc:  # re-raised below, in the test's own thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=take) for _ in range(takers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return won


def test_many_racing_takers_one_wins(clock):
    for _ in range(5):
        won = race(8)
        assert len(won) == 1
        assert lock.release(won[0])


def test_a_held_lock_is_refused_until_released_or_lapsed(clock):
    first = lock.take("sweep", 60)
    assert first is not None
    clock.advance(59)
    assert lock.take("sweep", 60) is None
    assert lock.release(first)
    second = lock.take("sweep", 60)
    assert second is not None
    clock.advance(60.001)  # its holder died: the lease lapsed
    third = lock.take("sweep", 60)
    assert third is not None
    assert not renew_now(second) and not lock.release(second)  # the dead one cannot take it back
    assert renew_now(third)


def test_keep_writes_a_renewal_only_once_a_third_of_the_lease_passed(clock, monkeypatch):
    held = lock.take("sweep", 60)
    assert held is not None
    Lock.objects.filter(name="sweep").update(holder="someone else")
    assert lock.keep(held)  # within a third of the lease: no query, no news
    assert not renew_now(held)


def test_released_with_a_next_turn_it_stays_closed_until_then(clock):
    held = lock.take("sweep", 60)
    assert held is not None
    assert lock.release(held, closed_until=held.taken_at + timedelta(seconds=300))
    clock.advance(299)
    assert lock.take("sweep", 60) is None
    clock.advance(1.001)
    assert lock.take("sweep", 60) is not None


class LockMachine(RuleBasedStateMachine):
    """Three processes taking, renewing and releasing one lock as time passes, against a model.

    The model is the rule itself: one holder at a time, until its lease lapses
    or it releases; a taker never wins while another's lease runs.
    """

    LEASE = 60.0

    def __init__(self) -> None:
        super().__init__()
        Lock.objects.all().delete()
        self.clock = Clock()
        lock._now = self.clock  # put back by the test
        self.held: dict[int, lock.Held] = {}
        self.holder: int | None = None  # the model's
        self.until: datetime | None = None

    def _free(self) -> bool:
        return self.until is None or self.until < self.clock.now

    @rule(who=st.integers(0, 2))
    def take(self, who: int) -> None:
        expected = self._free()
        held = lock.take("m", self.LEASE)
        assert (held is not None) == expected
        if held is not None:
            self.held[who] = held
            self.holder, self.until = who, self.clock.now + timedelta(seconds=self.LEASE)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def keep(self, data: st.DataObject) -> None:
        who = data.draw(st.sampled_from(sorted(self.held)))
        expected = self.holder == who  # a token taken over since is another's: held[who] is who's latest
        assert renew_now(self.held[who]) == expected
        if expected:
            self.until = self.clock.now + timedelta(seconds=self.LEASE)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), closed_for=st.sampled_from([None, 0.0, 30.0]))
    def release(self, data: st.DataObject, closed_for: float | None) -> None:
        who = data.draw(st.sampled_from(sorted(self.held)))
        expected = self.holder == who
        closed = None if closed_for is None else self.clock.now + timedelta(seconds=closed_for)
        assert lock.release(self.held.pop(who), closed_until=closed) == expected
        if expected:
            self.holder, self.until = None, closed

    @rule(seconds=st.sampled_from([1.0, 30.0, 59.0, 61.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def the_row_is_the_model(self) -> None:
        row = Lock.objects.filter(name="m").first()
        if row is None:
            assert (self.holder, self.until) == (None, None)
        else:
            token = self.held[self.holder].holder if self.holder is not None else ""
            assert (row.holder, row.until) == (token, self.until)


def test_the_lock_follows_its_model_whatever_the_interleaving():
    original = lock._now
    try:
        run_state_machine_as_test(
            LockMachine,
            settings=hypothesis_settings(max_examples=60, stateful_step_count=20, deadline=None),
        )
    finally:
        lock._now = original
