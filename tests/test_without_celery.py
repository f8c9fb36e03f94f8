"""A project without Celery: importing the app, its checks, a save and the sweeper never import it.

Each test runs a fresh Python in which Celery cannot be imported
(tests/without_celery/sitecustomize.py), on the test settings, which set
``TASKS`` (django-tasks-db) and, with no Celery app, choose Django Tasks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from queued_storage.models import FileRecord

WITHOUT_CELERY = Path(__file__).resolve().parent / "without_celery"
REPO = WITHOUT_CELERY.parent.parent


def run_without_celery(script: str, settings: str = "tests.settings", path: str = "") -> dict[str, Any]:
    """Run ``script`` where Celery cannot be imported; returns the JSON object it prints last."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings,
        "PYTHONPATH": os.pathsep.join(p for p in (str(WITHOUT_CELERY), str(REPO), path) if p),
    }
    env.pop("QS_QUEUE_BACKEND", None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


PRELUDE = """
import json, sys
try:
    import celery
except ImportError:
    pass
else:
    raise SystemExit("Celery is importable: the sitecustomize did not load")
import django
django.setup()
from django.core.checks import run_checks

def celery_loaded():
    return sorted(m for m, module in sys.modules.items() if m.split(".")[0] in ("celery", "kombu") and module)
"""


def test_the_app_its_checks_and_its_commands_load_without_celery():
    result = run_without_celery(
        PRELUDE
        + """
import queued_storage
from queued_storage import apps, checks, django_tasks, enqueuing, queues, routing, sweeper, views
from queued_storage.management.commands import queued_storage as command
print(json.dumps({
    "chosen": routing.chosen(),
    "checks": [m.id for m in run_checks()],
    "celery": celery_loaded(),
}))
"""
    )
    assert result == {"chosen": "tasks", "checks": [], "celery": []}


def test_without_celery_and_without_tasks_the_check_says_what_to_install(tmp_path):
    (tmp_path / "no_queue_settings.py").write_text("from tests.settings import *  # noqa\ndel TASKS\n")
    result = run_without_celery(
        PRELUDE
        + """
from queued_storage import routing
messages = [m for m in run_checks() if m.id.startswith("queued_storage.")]
print(json.dumps({"chosen": routing.chosen(), "ids": [m.id for m in messages],
                  "text": [m.msg + " " + m.hint for m in messages], "celery": celery_loaded()}))
""",
        settings="no_queue_settings",
        path=str(tmp_path),
    )
    assert (result["chosen"], result["ids"], result["celery"]) == ("celery", ["queued_storage.E004"], [])
    assert "Celery, which is not installed" in result["text"][0]
    assert "django-queued-remote-storage[tasks]" in result["text"][0]


@pytest.mark.django_db(transaction=True)
def test_a_save_and_the_sweeper_enqueue_django_tasks_without_celery(services):
    from django_tasks_db.models import DBTaskResult

    result = run_without_celery(
        PRELUDE
        + """
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from queued_storage.models import FileRecord
name = default_storage.save("no-celery/a.txt", ContentFile(b"a"))
FileRecord.objects.update(queued_at=None)
call_command("queued_storage", "requeue", "--older-than", "0")
print(json.dumps({"name": name, "celery": celery_loaded()}))
"""
    )
    assert result == {"name": "no-celery/a.txt", "celery": []}
    record = FileRecord.objects.get(name="no-celery/a.txt")
    tasks = DBTaskResult.objects.order_by("enqueued_at")
    # One task from the save's commit, one from the sweeper.
    assert [(t.task_path, t.args_kwargs["args"]) for t in tasks] == [
        ("queued_storage.django_tasks.transfer", [record.storage, record.name, record.version])
    ] * 2
