"""The demo's filesystem broker: a consumer never sees a message before it is whole."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from kombu import Connection

from .services import REPO_ROOT


def _load_broker() -> Any:
    """example_project/demo/broker.py alone: the demo's package would set up its own Celery app."""
    path = REPO_ROOT / "example_project" / "demo" / "broker.py"
    spec = importlib.util.spec_from_file_location("demo_broker", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


broker = _load_broker()


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[Any]:
    options = {
        "data_folder_in": str(tmp_path),
        "data_folder_out": str(tmp_path),
        "control_folder": str(tmp_path / "control"),
        "store_processed": False,
    }
    (tmp_path / "control").mkdir()
    with Connection("filesystem://", transport=broker.Transport, transport_options=options) as conn:
        yield conn.default_channel


def test_a_message_is_invisible_until_it_is_whole(channel: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    replace = os.replace
    polled: list[str] = []
    seen_before: list[object] = []

    def replace_after_a_poll(src: str, dst: str) -> None:
        # The file is written under its temporary name; a poll now must find nothing.
        assert Path(src).read_bytes()
        polled.append(src)
        with contextlib.suppress(Empty):
            seen_before.append(channel._get("celery"))
        replace(src, dst)

    monkeypatch.setattr(broker.os, "replace", replace_after_a_poll)
    channel._put("celery", {"body": "x" * 10_000})
    assert len(polled) == 1
    assert seen_before == []
    assert channel._get("celery") == {"body": "x" * 10_000}
    with pytest.raises(Empty):
        channel._get("celery")


def test_a_consumer_polling_while_messages_are_written_reads_each_whole(channel: Any) -> None:
    count = 300
    writer = threading.Thread(
        target=lambda: [channel._put("celery", {"n": n, "pad": "y" * 4096}) for n in range(count)]
    )
    writer.start()
    got: list[int] = []
    while len(got) < count:
        try:
            got.append(channel._get("celery")["n"])
        except Empty:
            if not writer.is_alive():
                break
    writer.join()
    while True:
        try:
            got.append(channel._get("celery")["n"])
        except Empty:
            break
    assert sorted(got) == list(range(count))
