"""One settings object, read from the environment (`LEDGER_*`) at the edges only."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the ledger; the names match CONTRACT section 7."""

    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore")

    broker: str | None = Field(None, description="Kafka bootstrap list; unset starts Tansu")
    topic_prefix: str = ""
    partitions: int = Field(4, ge=1, description="partitions of the topics the ledger creates")
    api_host: str = "127.0.0.1"
    api_port: int = 8642
    api_url: str = "http://127.0.0.1:8642"
    api_token: str | None = None
    clock: str | None = None
    overdue_days: int = Field(10, ge=0)
    overdue_unit: Literal["calendar", "business"] = "calendar"
    alert_interval: float = Field(60.0, gt=0)
    alert_webhooks: str = ""
    # webhook retries: exponential backoff from base to cap, with full jitter
    alert_retry_base_s: float = Field(1.0, gt=0)
    alert_retry_cap_s: float = Field(300.0, gt=0)
    alert_timeout_s: float = Field(10.0, gt=0)
    policy_file: Path | None = None
    # a team's own message templates (`<outcome>.txt`, Jinja), over the built-in ones
    templates_dir: Path | None = None
    data_dir: Path = Path(".ledger")
    # POST /events and `ledger publish` give up on an unreachable broker after this
    publish_timeout_s: float = Field(10.0, gt=0, le=300)
    # the embedded broker's port, the same at every start so publishers keep their
    # LEDGER_BROKER (0: any free port, and no durable copy: the demo's choice)
    embedded_port: int = Field(19092, ge=0, le=65535)
    # on Kafka: the replication of the topics the ledger creates (3 in production, with
    # min.insync.replicas 2 and producers' acks=all; the embedded broker has one node)
    # how often the embedded ledger's mirror brings its durable copy up to date: the
    # longest a raw Kafka producer's acknowledged record can wait to be on disk
    mirror_interval_s: float = Field(0.2, gt=0, le=60)
    # the SQL projection (issue 9): PostgreSQL when set (postgresql://user@host/db), else
    # DuckDB at LEDGER_DATA_DIR/ledger.duckdb; written every interval (DuckDB's file is
    # free for readers in between); states of this many subjects kept in memory
    sql_url: str | None = None
    sql_interval_s: float = Field(1.0, gt=0, le=60)
    sql_cache_states: int = Field(5000, ge=0)
    # request and customer states the projector keeps as objects (the rest as their JSON)
    cache_states: int = Field(20_000, ge=1)
    # the states an API process keeps parsed (the most recently asked; a miss parses one
    # state's JSON, ~0.1 ms): its memory, not its speed, grows with this
    api_cache_states: int = Field(2_000, ge=1)
    replication_factor: int = Field(1, ge=1)
    min_insync_replicas: int | None = Field(None, ge=1)
    # what a `python -m workers` process runs: both stages (`all`), or one, so that the
    # validator and the projector each have a core (`ledger up` starts one of each)
    worker_role: Literal["all", "validator", "projector"] = "all"
    store: Literal["memory", "rocksdb"] = Field(
        "memory", description="table store of the workers; rocksdb needs `pip install rocksdict`"
    )
    # Tansu delays a new group's first join by half the session timeout: keep it short.
    session_timeout_s: float = Field(8.0, gt=0)
    # records a processor takes per batch at most: a backlog folds in batches this big
    # (fewer changelog records per state, fewer sends and commits per record: `make bench`
    # 7.9 k -> 10.1 k events/s from 2,000 to 10,000); live traffic comes in smaller ones
    batch_size: int = Field(10_000, ge=1)
    # an event that overtook its predecessor is held this long before it is refused (0: never)
    reorder_grace_s: float = Field(300.0, ge=0, le=86400)
    # /health calls a stage stalled when records wait and its offsets have not moved for this
    stall_after_s: float = Field(60.0, gt=0)
    # SASL/TLS pass-through for a real cluster.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_a_topic_name(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("may only contain letters, digits, '.', '_' and '-'")
        return value

    @field_validator("clock")
    @classmethod
    def _clock_is_an_instant(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                instant = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError("must be an RFC 3339 timestamp") from None
            if instant.tzinfo is None:
                raise ValueError("must carry a UTC offset")
        return value

    def now(self) -> datetime:
        """`LEDGER_CLOCK` if set, else the wall clock."""
        return datetime.fromisoformat(self.clock) if self.clock else datetime.now(UTC)

    def webhooks(self) -> list[str]:
        return [url.strip() for url in self.alert_webhooks.split(",") if url.strip()]

    def kafka_client_options(self) -> dict[str, Any]:
        """Security options for aiokafka clients (empty for plain text)."""
        if self.security_protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.security_protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
                certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
            )
        return options
