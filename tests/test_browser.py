"""The demo in a real browser: upload an image, watch it move to S3 and its thumbnail follow.

Starts ``example_project/run_demo.py`` exactly as a newcomer would (its own
moto server, filesystem broker, Celery worker and web server on free ports),
and once more with ``--queue tasks`` (Django Tasks: two ``db_worker``
processes, the queue in SQLite), and drives Debian's Chromium through Playwright.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .services import REPO_ROOT, free_port

CHROMIUM = "/usr/bin/chromium"
# Without the networking flags Chromium waits on services this closed network cannot reach.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "artifacts"
BUCKET = "queued-storage-demo"

# The demo in a real browser: run once per test command, not in every tox env.
pytestmark = [pytest.mark.services, pytest.mark.e2e]


@dataclass
class Demo:
    url: str
    s3: str
    data_dir: Path
    queue: str


def _demo_processes(data_dir: Path) -> list[int]:
    """Pids of every process the demo started (they carry its data directory in their environment)."""
    marker = f"DEMO_DATA_DIR={data_dir}".encode()
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module", params=["celery", "tasks"])
def demo(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Demo]:
    queue = request.param
    data_dir = tmp_path_factory.mktemp("demo")
    output = data_dir / "run_demo.out"
    port = free_port()
    # The embedded defaults, whatever this shell points at.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "QS_", "DJANGO_", "CELERY_")) and k != "REDIS_URL"
    }
    # 50 KB/s: the test image stays `transferring` for about five seconds, its progress bar
    # moving at each beat of the worker's lease keeper (a third of the demo's 3 s lease), so
    # at least three mid-way widths reach a page that polls every half second, however late
    # it first sees the row transferring.
    cmd = [
        sys.executable,
        str(REPO_ROOT / "example_project" / "run_demo.py"),
        *("--port", str(port), "--data-dir", str(data_dir), "--bandwidth", "50000", "--quiet"),
        *("--queue", queue),
    ]
    with open(output, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while "Press Ctrl-C" not in output.read_text():
            assert proc.poll() is None, f"run_demo.py exited ({proc.returncode}):\n{output.read_text()}"
            assert time.monotonic() < deadline, f"run_demo.py not ready after 90 s:\n{output.read_text()}"
            time.sleep(0.2)
        banner = output.read_text()
        s3 = re.search(r"S3: (http://\S+), bucket", banner)
        assert s3, banner
        yield Demo(url=f"http://127.0.0.1:{port}/", s3=s3.group(1), data_dir=data_dir, queue=queue)
    finally:
        # What Ctrl-C does in a terminal.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log = output.read_text()
    assert proc.returncode == 0, log
    assert "Stopped." in log
    assert _demo_processes(data_dir) == [], f"processes left behind after Ctrl-C:\n{log}"


def _png(size: int = 300) -> bytes:
    from PIL import Image

    # Noise does not compress: about 270 KB, about five seconds at the test's throttled 50 KB/s.
    image = Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _progress_between(page: Any, bar: Any, above: float) -> float:
    """The bar's width (percent) once it is above ``above`` and below 100 while the row is transferring."""
    handle = page.wait_for_function(
        "([bar, above]) => {"
        "  const width = parseFloat(bar.style.width);"
        "  const row = bar.closest('li');"
        "  return row.dataset.state === 'transferring' && !row.querySelector('.progress').hidden"
        "    && width > above && width < 100 ? width : null;"
        "}",
        arg=[bar, above],
        timeout=20_000,
        polling=50,
    )
    return float(handle.json_value())


def test_upload_image_moves_to_s3_in_the_browser(demo: Demo, tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium` "
            "(python3 tools/run.py test does it when run as root)."
        )
    from playwright.sync_api import expect, sync_playwright

    image = tmp_path / "photo.png"
    image.write_bytes(_png())
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.goto(demo.url)
            expect(page.locator("h1")).to_contain_text("queued_storage")
            page.set_input_files("input[name=images]", str(image))
            page.click("#upload-form button[type=submit]")

            row = page.locator("#uploads li[data-name='photo.png']")
            expect(row.locator(".badge")).to_have_text("transferring", timeout=30_000)
            expect(row.locator(".url")).to_have_text("/media/images/photo.png")
            assert row.locator("img.thumb").get_attribute("src") == "/media/images/photo.png"
            # The bar moves while the worker copies: two widths seen in a row, both mid-way.
            bar = row.locator(".progress .bar").element_handle()
            first = _progress_between(page, bar, 0)
            second = _progress_between(page, bar, first)
            assert 0 < first < second < 100

            expect(row).to_have_attribute("data-state", "remote", timeout=30_000)
            remote = f"{demo.s3}/{BUCKET}/images/photo.png"
            expect(row.locator(".url")).to_have_text(re.compile("^" + re.escape(remote)))
            thumb = row.locator("img.thumb")
            thumb.evaluate(
                "(img, remote) => new Promise((resolve, reject) => {"
                "  const check = () => img.src.startsWith(remote) && img.complete && img.naturalWidth > 0;"
                "  if (check()) return resolve(true);"
                "  const started = Date.now();"
                "  const timer = setInterval(() => {"
                "    if (check()) { clearInterval(timer); resolve(true); }"
                "    else if (Date.now() - started > 15000) { clearInterval(timer); reject(img.src); }"
                "  }, 100);"
                "})",
                remote,
            )
            assert thumb.evaluate("img => img.naturalWidth") == 300
            assert (thumb.get_attribute("src") or "").startswith(remote)
            shot = "demo.png" if demo.queue == "celery" else f"demo-{demo.queue}.png"
            page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
        finally:
            browser.close()
