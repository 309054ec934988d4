"""The one settings object, read once at process start (env prefix ``PRERANK_``).

Nothing else in the project reads the environment: entry points call :func:`load_settings`
and pass the frozen object (or parts of it) down. Nested fields use ``__`` in variable
names, e.g. ``PRERANK_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:19092``.

>>> KafkaSettings().bootstrap_servers
'127.0.0.1:19092'
>>> TopicSettings(prefix="prerank.").name("score-requests")
'prerank.score-requests'
>>> RedisSettings(password="s3cret").password  # never printed in clear
SecretStr('**********')
"""

from __future__ import annotations

from types import MappingProxyType
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_FROZEN = ConfigDict(frozen=True, extra="forbid")


DEFAULT_FTRL_L1 = 0.5
# The largest l1 with a long-view AUC loss <= 0.005 at KuaiRand's full volume (every user, in
# process, bench/results/quality-l1-knee-28.json: 53% all-zero rows). The ranked mode uses nearly
# every row (4% zero at l1=0.5) and loses 0.0047 AUC and recall@100 0.97 -> 0.935 at 28
# (quality-ranked-l1-28.json), so it and the unmeasured modes keep DEFAULT_FTRL_L1.
FTRL_L1_KNEES = MappingProxyType({"impressions": 28.0})


class KafkaSettings(BaseModel):
    """Broker address and security; :mod:`core.kafka` renders them for every client."""

    model_config = _FROZEN

    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # How long a consumer's fetch may wait at the broker for data (every consumer of the
    # project: Faust's 1500 ms and the clients' 500 ms left requests queued behind a fetch in
    # flight; agents/transport.py says why). Lower: less latency, more fetches while idle.
    fetch_max_wait_ms: int = Field(default=20, ge=1, le=60_000)



class RedisSettings(BaseModel):
    """Item-vector cache (clients from :func:`core.redis.redis_client`). The password never appears in ``repr`` or logs."""

    model_config = _FROZEN

    url: str = "redis://127.0.0.1:16379/0"
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    tls_ca_certs: Path | None = None
    socket_timeout_s: float = 0.5
    key_prefix: str = "prerank"
    # a Redis Cluster: ``url`` names one startup node (the client learns the others), db 0 only
    cluster: bool = False



class TopicSettings(BaseModel):
    """Topic names (one prefix for all) and partition counts."""

    model_config = _FROZEN

    prefix: str = "prerank."
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=60_000)

    def name(self, topic: str) -> str:
        return f"{self.prefix}{topic}"


class StackSettings(BaseModel):
    """Where and how the embedded local stack runs (all on loopback)."""

    model_config = _FROZEN

    home: Path = Path(".stack")
    cache: Path = Path(".cache")
    host: str = "127.0.0.1"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_heap: str = "512m"
    # An extra client listener speaking TLS (off while no port is set), next to the plaintext one
    # the broker uses itself: a PKCS12 keystore holding the broker's key and certificate chain,
    # one password for the stores and the key. Clients connect with `kafka.security_protocol=SSL`
    # and `kafka.ssl_cafile`. With a truststore (PKCS12, the CAs of client certificates),
    # `kafka_ssl_client_auth` may ask for ("requested") or demand ("required") client certificates.
    kafka_ssl_port: int | None = None
    kafka_ssl_keystore: Path | None = None
    kafka_ssl_password: SecretStr | None = None
    kafka_ssl_truststore: Path | None = None
    kafka_ssl_client_auth: Literal["none", "requested", "required"] = "none"
    redis_port: int = 16379
    redis_cluster_port: int = 17001  # `stack up --redis-cluster`: 6 nodes on this port and the 5 after it
    prometheus_port: int = 19090
    with_prometheus: bool = False
    start_timeout_s: float = 90.0


class ModelSettings(BaseModel):
    """Student sizes and training mode; the defaults are the design's."""

    model_config = _FROZEN

    output_dim: int = Field(default=512, ge=8)
    hidden_dim: int = Field(default=512, ge=8)
    embedding_dim: int = Field(default=32, ge=4)
    mode: Literal["cascade", "distill", "impressions", "ranked"] = "cascade"
    top_n: int = Field(default=10, ge=1)
    easy_negatives: int = Field(default=20, ge=0)
    min_count: int = Field(default=1, ge=1)
    # FTRL's l1 on embedding rows; None: the mode's knee at full volume (FTRL_L1_KNEES, trainer_ftrl_l1)
    ftrl_l1: float | None = Field(default=None, ge=0.0)
    user_bias: bool = False  # a per-user logit offset (TwoTowerConfig.user_bias): same rank, calibrated across users
    head: Literal["cosine", "interaction"] = "cosine"  # the towers' meeting point (models.interaction)
    seed: int = 0

    @property
    def trainer_ftrl_l1(self) -> float:
        """The l1 the trainer uses: ``ftrl_l1`` if set, else the mode's measured knee."""
        return self.ftrl_l1 if self.ftrl_l1 is not None else FTRL_L1_KNEES.get(self.mode, DEFAULT_FTRL_L1)


class WorkerSettings(BaseModel):
    """Faust workers and the agents' knobs."""

    model_config = _FROZEN

    app_id: str = "prerank"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    web_tables_enabled: bool = False  # Faust's /table/... views expose stored user profiles: off unless asked
    metrics_port: int = 9464
    metrics_host: str = "127.0.0.1"
    store: str = "memory://"
    data_dir: Path = Path(".stack/faust")
    join_window_s: float = 600.0
    join_idle_flush_s: float = Field(default=2.0, gt=0)  # joiner idle this long: close the open windows
    trainer_dedupe_requests: int = Field(default=100_000, ge=1)  # recent request ids the trainer drops again
    train_batch_requests: int = Field(default=32, ge=1)
    train_batch_timeout_s: float = Field(default=0.5, gt=0)
    # Data-parallel trainers (torch.distributed): rank R of W owns the training-samples partitions
    # p with p % W == R and the embedding rows whose id hashes to R; rank 0 rendezvous and publishes.
    trainer_world_size: int = Field(default=1, ge=1)
    trainer_rank: int = Field(default=0, ge=0)
    trainer_master_addr: str = "127.0.0.1"
    trainer_master_port: int = Field(default=29400, ge=1, le=65535)
    trainer_group_timeout_s: float = Field(default=60.0, gt=0)  # a collective waiting longer fails the group
    checkpoint_dir: Path = Path(".stack/checkpoints")
    checkpoint_interval_s: float = Field(default=30.0, gt=0)
    publish_interval_s: float = Field(default=2.0, gt=0)
    hot_items: int = Field(default=20_000, ge=1)
    vector_dtype: Literal["float32", "float16"] = "float16"
    version_ttl_s: int = Field(default=3600, ge=10)
    max_candidates: int = Field(default=5000, ge=1)
    max_k: int = Field(default=1000, ge=1)
    local_cache_items: int = Field(default=50_000, ge=0)  # vectors the scorer computes per version (unpublished items)
    scorer_batch: int = Field(default=32, ge=1)  # score requests taken per agent step (one user-tower pass)
    scorer_batch_wait_s: float = Field(default=0.003, gt=0)  # the most a request waits for its batch to fill
    joiner_batch: int = Field(default=64, ge=1)  # rank-scores / impressions taken per joiner step (one close, one changelog flush)
    joiner_batch_wait_s: float = Field(default=0.005, gt=0)  # the most an event waits for its joiner batch to fill
    catalog_items: int = Field(default=200_000, ge=1)  # item features held per worker (LRU over Redis)
    torch_threads: int = Field(default=1, ge=1)  # per worker process: workers share the cores
    gc_young_objects: int = Field(default=50_000, ge=100)  # allocations between young collections (core.memory)
    teacher_path: Path | None = None  # the simulated fine ranker's model (written by `prerank replay`)
    rank_k: int = Field(default=100, ge=1)  # how many of the pre-ranker's top items the fine ranker scores
    audit_every: int = Field(default=20, ge=0)  # 1 in N responses carries every candidate (0: never)

    @model_validator(mode="after")
    def _rank_in_group(self) -> WorkerSettings:
        if self.trainer_rank >= self.trainer_world_size:
            raise ValueError(f"trainer_rank {self.trainer_rank} is not below trainer_world_size {self.trainer_world_size}")
        return self


class Settings(BaseSettings):
    """Everything configurable, frozen after start."""

    model_config = SettingsConfigDict(
        env_prefix="PRERANK_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    topics: TopicSettings = TopicSettings()
    stack: StackSettings = StackSettings()
    model: ModelSettings = ModelSettings()
    worker: WorkerSettings = WorkerSettings()
    data: Path = Path("../shared/data/kuairand-pure")
    require_services: bool = False


def load_settings(**overrides: Any) -> Settings:
    """Read the environment once; keyword overrides win (used by the CLI and tests)."""
    return Settings(**overrides)
