"""Benchmarks of queued_storage against what a user would pick instead (``python -m benchmarks``)."""
