"""The demo's Celery broker without a server: kombu's filesystem queue, each message whole.

kombu's filesystem transport creates a message file under its final name and then writes
it, and its consumer moves any file with that name away without taking the writer's lock.
A worker polling the folder can so read a message empty and stop (celery/kombu#1551).
Here a message is written under a name the consumer ignores and renamed into place: a
rename within one folder is atomic, so a consumer sees no file or the whole message.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        # The name kombu's own _put gives: its consumer sorts by it and matches the suffix.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".part"
        with open(partial, "wb") as f:
            f.write(str_to_bytes(dumps(payload)))
        os.replace(partial, final)


class Transport(filesystem.Transport):
    Channel = Channel
