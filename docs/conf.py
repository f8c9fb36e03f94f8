"""Sphinx configuration; the build runs with -W in the test command, so warnings are errors."""

from __future__ import annotations

project = "queued_storage"
author = "queued_storage developers"
copyright = "queued_storage developers"
release = "1.0.0"
extensions: list[str] = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
