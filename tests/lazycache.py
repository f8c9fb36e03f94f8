"""The test settings' Redis cache, which starts the test run's Redis on first use."""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache
from django.utils.functional import cached_property


class LazyRedisCache(RedisCache):
    """Django's RedisCache; the first command starts Redis if this pytest run has not yet.

    In a Celery worker the tests started, Redis runs already and nothing is started.
    """

    @cached_property
    def _cache(self) -> Any:
        from . import plugin

        if plugin.SERVICES is not None:
            plugin.SERVICES.need("redis")
        return super()._cache
