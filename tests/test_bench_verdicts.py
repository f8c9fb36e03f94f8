"""The benchmark report's verdicts: a missed target is *at its floor* only where a floor is named."""

from __future__ import annotations

import pytest

from benchmarks.results import Results, Row, format_row, rst_table, summary, verdict


def _row(subject: str, ok: bool | None, floor: str = "") -> Row:
    return Row(
        "2 upload",
        "POST 100 KB",
        subject,
        "ms",
        [1.0],
        target="at most 1.1" if ok is not None else "",
        ok=ok,
        floor=floor,
    )


@pytest.mark.parametrize(
    ("ok", "floor", "said"),
    [
        (True, "", "holds"),
        (False, "", "FAILS"),
        (False, "within 0.5 ms of X", "at its floor: within 0.5 ms of X"),
        (None, "", ""),
    ],
)
def test_each_verdict(ok: bool | None, floor: str, said: str) -> None:
    row = _row("a", ok, floor)
    assert verdict(row) == said
    assert format_row(row).endswith(said)


def test_a_floor_does_not_turn_a_held_target_or_a_miss_into_success() -> None:
    results = Results()
    results.rows = [
        _row("held", True, "ignored"),
        _row("floored", False, "F"),
        _row("missed", False),
        _row("shown", None),
    ]
    text = summary(results)
    assert text.splitlines()[0] == "1 of 3 targets hold."
    assert "  at its floor: 2 upload / POST 100 KB / floored: at most 1.1; F" in text
    assert "  not met: 2 upload / POST 100 KB / missed: at most 1.1" in text
    assert "held" not in text.split("\n", 1)[1]
    table = rst_table(results.rows)
    assert (
        "at most 1.1 — **fails**" in table
        and "at most 1.1 — at its floor: F" in table
        and "at most 1.1 — holds" in table
    )
