"""The one Redis client factory, and the error a Redis outage raises.

Code above ``core`` reaches Redis only through :func:`redis_client` (an import-linter contract
keeps ``import redis`` here), so TLS, credentials, timeouts and the topology (one node or a Redis
Cluster, ``settings.cluster``) are set in one place.

On a cluster, a command whose keys lie in several hash slots fails (CROSSSLOT): callers keep the
keys read together under one hash tag (:mod:`funnel.store`), and read keys spread on purpose with
:func:`mget_any`, which splits per slot on a cluster and is one MGET on a single node.
"""

from __future__ import annotations

import functools
import inspect

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import RedisClusterException
from redis.exceptions import RedisError as RedisUnavailable  # the outage callers catch
from redis.retry import Retry

from core.settings import RedisSettings

# A command to a failed primary is retried a few times, briefly (each retry re-reads the slot map),
# then fails: the scorer serves from what it holds rather than wait for the failover.
CLUSTER_RETRIES = 3


class ClusterUnavailable(RedisUnavailable):
    """The cluster could not serve a command (a slot not covered, no node reachable).

    redis-py raises those as ``RedisClusterException``, which is not a ``RedisError``: re-raised as
    this, one ``except RedisUnavailable`` covers a single node and a cluster alike.
    """


class _Guarded:
    """A cluster client (or one of its pipelines) whose calls raise :class:`ClusterUnavailable`
    where redis-py would raise ``RedisClusterException``; everything else passes through."""

    def __init__(self, target) -> None:
        self._target = target

    def __getattr__(self, name: str):
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            try:
                result = attr(*args, **kwargs)
            except RedisClusterException as exc:
                raise ClusterUnavailable(str(exc)) from exc
            if isinstance(result, ClusterPipeline):
                return _Guarded(result)
            return _guarded_iter(result) if inspect.isgenerator(result) else result

        return call


def _guarded_iter(items):
    try:
        yield from items
    except RedisClusterException as exc:
        raise ClusterUnavailable(str(exc)) from exc


def is_cluster(client) -> bool:
    return isinstance(client, _Guarded)


def mget_any(client, keys: list) -> list:
    """MGET of keys in any hash slots: one MGET per slot on a cluster, one MGET on a single node."""
    return client.mget_nonatomic(keys) if is_cluster(client) else client.mget(keys)


def redis_client(settings: RedisSettings):
    """A client for ``settings.url`` with the settings' timeouts, credentials and TLS; a cluster
    client (``url`` one startup node) when ``settings.cluster``."""
    kwargs = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
    }
    if settings.username:
        kwargs["username"] = settings.username
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    if settings.cluster:
        return _cluster_client(settings, kwargs)
    if settings.tls:
        kwargs["connection_class"] = redis.SSLConnection
        if settings.tls_ca_certs is not None:
            kwargs["ssl_ca_certs"] = str(settings.tls_ca_certs)
    return redis.Redis.from_url(settings.url, **kwargs)


def _cluster_client(settings: RedisSettings, kwargs: dict) -> _Guarded:
    """Slots not covered (a primary failing over) fail only their own commands: the client does not
    require full coverage, and the stack's nodes run with ``cluster-require-full-coverage no``."""
    if settings.tls:
        kwargs["ssl"] = True
        if settings.tls_ca_certs is not None:
            kwargs["ssl_ca_certs"] = str(settings.tls_ca_certs)
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), CLUSTER_RETRIES)
    try:
        client = RedisCluster.from_url(settings.url, require_full_coverage=False, retry=retry, **kwargs)
    except RedisClusterException as exc:
        raise ClusterUnavailable(str(exc)) from exc
    return _Guarded(client)
