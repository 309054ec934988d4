"""The one Redis client factory, and the error a Redis outage raises.

Code above ``core`` reaches Redis only through :func:`redis_client` (an import-linter contract
keeps ``import redis`` here), so TLS, credentials and timeouts are set in one place.
"""

from __future__ import annotations

import redis
from redis.exceptions import RedisError as RedisUnavailable  # noqa: F401 - the outage callers catch

from core.settings import RedisSettings


def redis_client(settings: RedisSettings) -> redis.Redis:
    """A client for ``settings.url`` with the settings' timeouts, credentials and TLS."""
    kwargs = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
    }
    if settings.username:
        kwargs["username"] = settings.username
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    if settings.tls:
        kwargs["connection_class"] = redis.SSLConnection
        if settings.tls_ca_certs is not None:
            kwargs["ssl_ca_certs"] = str(settings.tls_ca_certs)
    return redis.Redis.from_url(settings.url, **kwargs)
