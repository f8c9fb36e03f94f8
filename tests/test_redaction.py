"""Secrets in exception text never reach last_error, the logs or the status output."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.core.files.base import ContentFile

from queued_storage import operations
from queued_storage.redaction import redact
from queued_storage.tasks import Transfer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "URLError: <urlopen error ftp://bob:hunter2@ftp.example.com/a.bin refused>",
            "URLError: <urlopen error ftp://***@ftp.example.com/a.bin refused>",
        ),
        ("sftp://bob:p@ss:w0rd@files.example.com:22/up", "sftp://***@files.example.com:22/up"),
        ("sftp://deploy@host/x", "sftp://***@host/x"),
        (
            'Could not connect to the endpoint URL: "https://AKIAEXAMPLE:s3cr3t@s3.example.com/b/k"',
            'Could not connect to the endpoint URL: "https://***@s3.example.com/b/k"',
        ),
        (
            "GET https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAEXAMPLE%2F20250101%2Fus-east-1%2Fs3%2Faws4_request"
            "&X-Amz-Date=20250101T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token=FwoGZX"
            "&X-Amz-Signature=0123abcd failed",
            "GET https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=***&X-Amz-Date=20250101T000000Z&X-Amz-Expires=3600"
            "&X-Amz-Security-Token=***&X-Amz-Signature=*** failed",
        ),
        (
            "https://s3.amazonaws.com/b/k?AWSAccessKeyId=AKIAEXAMPLE&Signature=a%2Bb%3D&Expires=1",
            "https://s3.amazonaws.com/b/k?AWSAccessKeyId=***&Signature=***&Expires=1",
        ),
        (
            "https://acct.blob.core.windows.net/c/b?sv=2024-01-01&sig=abc%2Bdef&se=2025",
            "https://acct.blob.core.windows.net/c/b?sv=2024-01-01&sig=***&se=2025",
        ),
        (
            "Authorization: AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20250101/us-east-1/s3/aws4_request, "
            "SignedHeaders=host, Signature=deadbeef",
            "Authorization: AWS4-HMAC-SHA256 Credential=***, SignedHeaders=host, Signature=***",
        ),
        ("https://api.example.com/up?token=abc&page=2", "https://api.example.com/up?token=***&page=2"),
        ("login failed with password=hunter2 for bob", "login failed with password=*** for bob"),
        # Nothing secret: unchanged.
        (
            "Could not connect to the endpoint URL: http://127.0.0.1:9000/bucket/a@b.txt",
            "Could not connect to the endpoint URL: http://127.0.0.1:9000/bucket/a@b.txt",
        ),
        ("mail admin@example.com; see https://example.com/?page=2", None),
        ("The remote copy of 'a.txt' has 3 bytes, the local file 4", None),
    ],
)
def test_redact(text: str, expected: str | None) -> None:
    assert redact(text) == (text if expected is None else expected)


class LeaksCredentials(Transfer):
    """Fails the way an FTP or SFTP storage does: its URL, password and all, in the message."""

    def transfer(self, name: str, local: Any, remote: Any, **kwargs: Any) -> bool:
        raise ConnectionRefusedError(
            f"could not store {name} at ftp://bob:hunter2@ftp.example.com/{name}?X-Amz-Signature=feedface"
        )


@pytest.mark.django_db(transaction=True)
def test_a_failed_transfer_stores_and_logs_the_error_without_its_credentials(make, eager, settings, caplog):
    settings.QUEUED_STORAGE_RETRIES = 1
    caplog.set_level(logging.INFO)
    storage = make(task="tests.test_redaction.LeaksCredentials")
    name = storage.save("secret.txt", ContentFile(b"abc"))
    status = storage.status(name)
    assert status.state == "failed"
    assert status.last_error == (
        "ConnectionRefusedError: could not store secret.txt at "
        "ftp://***@ftp.example.com/secret.txt?X-Amz-Signature=***"
    )
    assert "retry 1 of 1" in caplog.text and "failed for good" in caplog.text  # both log lines seen
    assert "ftp://***@ftp.example.com" in caplog.text
    assert "hunter2" not in caplog.text and "feedface" not in caplog.text
    (shown,) = operations.summary()["last_errors"]
    assert shown["error"] == status.last_error
