"""One `Settings` for the whole mesh, read from the environment and `.env`.

The variables and validations are the original plan's (so its `.env` files keep working), plus what a
mesh needs: gRPC ports and addresses, `NATS_URL`, the data directory and the API token. Empty
`DATABASE_URL` / `NATS_URL` mean "start the embedded servers under `AMELIA_DATA_DIR`".
"""

from __future__ import annotations

import ipaddress
import logging
import os
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_log = logging.getLogger("amelia.settings")

DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-4-5-20250929"
DEFAULT_OPENAI_MODEL = "openai:gpt-4o-mini"
DEFAULT_LOCAL_MODEL = "qwen2.5-coder-0.5b"
# The models PyPI packages carry (amelia_common.local_model fetches and verifies them by name).
PACKAGED_LOCAL_MODELS = (DEFAULT_LOCAL_MODEL, "qwen2.5-coder-1.5b")
LOCAL_MODEL_OFF = "off"


class Environment(StrEnum):
    """Where the mesh runs; changes defaults such as log format, never behaviour."""

    DEVELOPMENT = "development"
    TESTING = "testing"
    PRODUCTION = "production"


# A price of MODEL_PRICES: USD per million tokens.
UsdPerMillion = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Settings(BaseSettings):
    """Every setting of every service; each service reads the ones it needs."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", case_sensitive=False, extra="ignore"
    )

    # Environment
    ENVIRONMENT: Environment = Environment.DEVELOPMENT
    APP_NAME: str = "Amelia"
    DEBUG: bool = False
    LOG_LEVEL: str = "INFO"
    LOG_FORMAT: str = Field(default="auto", pattern="^(auto|json|console)$")

    # Network: every service binds HOST; the gateway's HTTP port is PORT.
    HOST: str = "127.0.0.1"
    PORT: int = Field(default=8000, ge=0, le=65535)
    RELOAD: bool = False
    EVENTS_GRPC_PORT: int = Field(default=50051, ge=0, le=65535)
    AGENTS_GRPC_PORT: int = Field(default=50052, ge=0, le=65535)
    RAG_GRPC_PORT: int = Field(default=50053, ge=0, le=65535)
    # Prometheus `/metrics` of each service process (0: not served; the gateway serves them on
    # PORT). A port already taken is logged and skipped. See docs/observability.md.
    EVENTS_METRICS_PORT: int = Field(default=9464, ge=0, le=65535)
    AGENTS_METRICS_PORT: int = Field(default=9465, ge=0, le=65535)
    RAG_METRICS_PORT: int = Field(default=9466, ge=0, le=65535)
    WORKER_METRICS_PORT: int = Field(default=9467, ge=0, le=65535)
    # Where clients (other services, the gateway, the CLI) reach each service.
    EVENTS_ADDRESS: str = "127.0.0.1:50051"
    AGENTS_ADDRESS: str = "127.0.0.1:50052"
    RAG_ADDRESS: str = "127.0.0.1:50053"
    GRPC_MAX_MESSAGE_BYTES: int = Field(default=32 * 1024 * 1024, ge=1024)
    GRPC_SHUTDOWN_GRACE_SECONDS: float = Field(default=10.0, ge=0)
    # `amelia up`: the first wait before a crashed part is started again; it doubles with each
    # crash within a minute (at most 30 s), and five crashes in a minute give the part up.
    RESTART_DELAY_SECONDS: float = Field(default=1.0, gt=0, le=30)
    AMELIA_API_TOKEN: SecretStr = SecretStr("")

    # CORS (gateway)
    CORS_ORIGINS: Annotated[list[str], NoDecode] = [
        "http://localhost:5173",
        "http://localhost:3000",
        "http://127.0.0.1:5173",
        "http://127.0.0.1:3000",
    ]

    # Data: embedded servers, uploads, worktrees live under here.
    AMELIA_DATA_DIR: Path = Path(".amelia")

    # Database (empty: embedded PostgreSQL under the data dir)
    DATABASE_URL: str = ""
    # Per process; an agents process adds 2 per worker loop (amelia_common.connections): the
    # default mesh at `--replicas 3` opens at most 90, under a stock max_connections of 100.
    DATABASE_POOL_SIZE: int = 2
    DATABASE_MAX_OVERFLOW: int = 2
    # A frozen or overloaded PostgreSQL: a new connection that gets no answer within
    # DATABASE_CONNECT_TIMEOUT_SECONDS, or a call that waits DATABASE_POOL_TIMEOUT_SECONDS for a
    # pooled connection (all busy), fails UNAVAILABLE naming PostgreSQL instead of waiting.
    DATABASE_CONNECT_TIMEOUT_SECONDS: float = Field(default=5, gt=0)
    DATABASE_POOL_TIMEOUT_SECONDS: float = Field(default=10, gt=0)

    # NATS (empty: embedded nats-server with JetStream under the data dir)
    NATS_URL: str = ""
    EMBEDDED_NATS_PORT: int = Field(default=4222, ge=0, le=65535)
    EVENTS_STREAM: str = "AMELIA_EVENTS"
    EVENTS_MAX_AGE_SECONDS: float = Field(default=7 * 24 * 3600, ge=0)
    EVENTS_MAX_BYTES: int = Field(default=1024 * 1024 * 1024, ge=-1)
    EVENTS_DEDUP_WINDOW_SECONDS: float = Field(default=120, gt=0)
    EVENTS_MAX_DATA_BYTES: int = Field(default=512 * 1024, ge=1024)
    EVENTS_PUBLISH_BUFFER: int = Field(default=10_000, ge=1)
    EVENTS_PUBLISH_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0)
    # Copies JetStream keeps of the events stream: 1 on one nats-server, 3 on a NATS cluster (an
    # acknowledged event then survives losing a node). Changing it re-replicates the stream.
    EVENTS_STREAM_REPLICAS: int = Field(default=1, ge=1, le=5)
    # StreamEvents calls one events service process serves at once; one more is
    # RESOURCE_EXHAUSTED naming this limit. Each call holds at most ~3 MiB whatever its client
    # does (docs/events.md, "Flow control"), so this bounds the process's memory. 0: no limit.
    EVENTS_MAX_STREAMS: int = Field(default=1000, ge=0)
    # The events stream's `max_consumers` (every open reader of the log holds a JetStream
    # consumer). 0: set none, so nats-server's default applies (1000 a stream since 2.15; none on
    # 2.10) or the limit the stream was given by hand. nats-server before 2.12 cannot change it on
    # an existing stream: the service then keeps the stream's and logs a warning.
    EVENTS_MAX_CONSUMERS: int = Field(default=0, ge=0)

    # LLM providers
    ANTHROPIC_API_KEY: SecretStr = SecretStr("")
    ANTHROPIC_BASE_URL: str = ""
    OPENAI_API_KEY: SecretStr = SecretStr("")
    OPENROUTER_API_KEY: SecretStr = SecretStr("")
    OLLAMA_BASE_URL: str = "http://localhost:11434"

    # Default LLM settings. An empty DEFAULT_MODEL resolves (see `_resolve_default_model`) to
    # Claude with ANTHROPIC_API_KEY, else OpenAI with OPENAI_API_KEY, else the local model.
    DEFAULT_MODEL: str = ""
    # Left unset, it is LOCAL_MODEL_TEMPERATURE when the default model is a local one.
    DEFAULT_TEMPERATURE: float = Field(default=0.7, ge=0, le=2)
    # Left unset, it is LOCAL_MODEL_MAX_TOKENS when the default model is a local one.
    DEFAULT_MAX_TOKENS: int = Field(default=4096, ge=1)
    # USD per million input and output tokens, by model string; `prefix*` matches a family and
    # the longest match wins, e.g. {"anthropic:claude-sonnet-4-5": [3, 15], "local:*": [0, 0]}.
    # A node's cost is shown only when every model it called has a price here.
    MODEL_PRICES: dict[str, tuple[UsdPerMillion, UsdPerMillion]] = {}

    # Local model (llama.cpp through xllamacpp, see amelia_common.local_model / llama_server):
    # `qwen2.5-coder-0.5b` (fetched by `make install`), `qwen2.5-coder-1.5b` (fetched when named),
    # the path of any .gguf, or `off`.
    LOCAL_MODEL: str = DEFAULT_LOCAL_MODEL
    # Where the fetched model is kept (default: $XDG_CACHE_HOME/amelia/models).
    LOCAL_MODEL_DIR: Path | None = None
    # An OpenAI-compatible llama.cpp server already running (…/v1); empty: the embedded one.
    LOCAL_MODEL_URL: str = ""
    LOCAL_MODEL_PORT: int = Field(default=8081, ge=0, le=65535)
    # CPU threads for generation and prompt reading: 1 keeps the mesh responsive on 2 cores.
    LOCAL_MODEL_THREADS: int = Field(default=1, ge=1)
    # Context tokens in total, shared by the slots (requests generated at the same time).
    LOCAL_MODEL_CONTEXT: int = Field(default=8192, ge=512)
    LOCAL_MODEL_SLOTS: int = Field(default=2, ge=1)
    # The default temperature when the default model is local (DEFAULT_TEMPERATURE unset): 0,
    # greedy. The 0.5B model ranks "Canberra" barely above "Sydney" for Australia's capital:
    # sampled even at 0.05 it answered Sydney 4 times in 20, greedy never.
    LOCAL_MODEL_TEMPERATURE: float = Field(default=0.0, ge=0, le=2)
    # The default max_tokens for the local model (DEFAULT_MAX_TOKENS unset). Greedy, the 0.5B
    # model can repeat itself until the limit ("Write 150 words about the sea" ran 700 of 700
    # tokens, a sentence over and over; penalties did not make it stop and made it write a script
    # instead of counting): 1024 bounds such a reply to about a minute on one thread.
    LOCAL_MODEL_MAX_TOKENS: int = Field(default=1024, ge=1)

    # Agents' workers
    # Worker loops per agents process: a loop waiting on a model costs little (no thread, two
    # held PostgreSQL connections), so quick runs are not queued behind slow ones.
    AGENT_WORKERS: int = Field(default=10, ge=0)
    # Eager start: a CreateRun taken by a process with an idle worker loop starts the run there,
    # right after its commit, without waiting for its job to come round (docs/agents.md). Off by
    # default, as Temporal's eager workflow start is opt-in: on a quiet machine it measured slower.
    AGENT_EAGER_START: bool = False
    RUN_ACK_WAIT_SECONDS: float = Field(default=30, gt=0)
    # JetStream work-queue stream the runs wait in (separate from the events stream).
    RUNS_QUEUE_STREAM: str = Field(default="AMELIA_RUNS", pattern=r"^[A-Za-z0-9_-]+$")
    # Copies of the run queue, as EVENTS_STREAM_REPLICAS (3 on a NATS cluster).
    RUNS_QUEUE_REPLICAS: int = Field(default=1, ge=1, le=5)
    # A worker that has not heartbeated (checked its run on its lock's connection, every second)
    # for this long loses its runs: a worker that then finds the run's lock taken terminates the
    # silent holder's connection and continues the run (a frozen process: SIGSTOP, a VM pause).
    # Above the longest silence of a live holder (up to ~6 s while a claim waits for CreateRun).
    RUN_HEARTBEAT_TIMEOUT_SECONDS: float = Field(default=30, gt=0)
    # A run whose worker died this many times fails instead of being picked up again.
    RUN_MAX_ATTEMPTS: int = Field(default=5, ge=1)
    # First wait before retrying a transient LLM error; doubles on each retry.
    LLM_RETRY_BACKOFF_SECONDS: float = Field(default=0.5, ge=0)
    # How long a model server that cannot be reached (refused, reset, cut mid-reply, loading)
    # is tried again before the call fails: covers a supervised restart of the local server.
    LLM_RECONNECT_SECONDS: float = Field(default=30, ge=0)
    # How long an OpenAI-compatible model server (the local one too) may send nothing — before
    # its reply starts or between two chunks — before the call counts it unreachable (and
    # waits for it as above): a frozen server otherwise holds a run for the SDK's 600 s.
    LLM_STREAM_IDLE_SECONDS: float = Field(default=60, gt=0)
    # Extra Python modules imported at start that register workflows (plugins).
    AGENT_WORKFLOW_MODULES: Annotated[list[str], NoDecode] = []
    # The run reconciler: every RUN_SWEEP_INTERVAL_SECONDS it re-queues each run left QUEUED or
    # RUNNING for RUN_REQUEUE_AFTER_SECONDS with no job in the queue and no worker holding it
    # (a job lost with NATS, a publish whose acknowledgement was lost, a purged queue).
    RUN_SWEEP_INTERVAL_SECONDS: float = Field(default=10, gt=0)
    RUN_REQUEUE_AFTER_SECONDS: float = Field(default=30, ge=0)
    # First wait before a run whose pick-up met a PostgreSQL/NATS outage is tried again; doubles
    # each time, up to RUN_ACK_WAIT_SECONDS (a try an outage stopped is not one of RUN_MAX_ATTEMPTS).
    RUN_RETRY_BACKOFF_SECONDS: float = Field(default=1, gt=0)
    # More environment variables the `code` workflow's CLI may see (comma-separated names, e.g.
    # AWS_PROFILE for Claude Code on Bedrock); see docs/agents.md for the ones it always gets.
    CODE_ENV_PASSTHROUGH: str = ""

    # Embeddings
    EMBEDDING_PROVIDER: str = Field(default="local", pattern="^(local|openai)$")
    EMBEDDING_MODEL: str = "sentence-transformers/all-MiniLM-L6-v2"
    EMBEDDING_BASE_URL: str = ""
    EMBEDDING_DIMENSION: int = Field(default=384, ge=1)
    # Texts per model forward pass (local) or per request (openai). Small batches pad less on
    # CPU: chunks of mixed length run ~20% faster at 16 than at 64 (bench/rag.py).
    EMBEDDING_BATCH_SIZE: int = Field(default=16, ge=1)
    CHUNK_SIZE: int = 800
    CHUNK_OVERLAP: int = 200
    MAX_DOCUMENT_BYTES: int = Field(default=50 * 1024 * 1024, ge=1)
    MAX_INLINE_DOCUMENT_BYTES: int = Field(default=4 * 1024 * 1024, ge=1)

    # RAG
    RAG_TOP_K: int = Field(default=5, ge=1)
    # Cosine similarity a vector hit needs (Search.min_score when a request leaves it out).
    # 0: no cut-off in practice. all-MiniLM-L6-v2 gives right answers 0.3–0.6 (eval/), so the
    # seed's 0.7 dropped most of them; ranking, not a threshold, decides what comes first.
    RAG_SIMILARITY_THRESHOLD: float = Field(default=0.0, ge=-1, le=1)

    # Claude Code
    CLAUDE_CODE_PATH: str = "claude"
    CLAUDE_CODE_TIMEOUT: int = Field(default=300, ge=1)
    GIT_WORKTREE_DIR: Path | None = None
    CODE_ALLOWED_ROOTS: Annotated[list[Path], NoDecode] = []

    # WebSocket (gateway)
    WS_HEARTBEAT_INTERVAL: float = Field(default=30, gt=0)
    WS_MAX_CONNECTIONS: int = Field(default=100, ge=1)
    WS_SEND_QUEUE: int = Field(default=1000, ge=1)
    # Bytes of event text one socket may hold: its send queue and the live events its catch-up
    # subscriptions buffer while they replay. A socket over it is closed as a slow consumer
    # (4008, with the sequence to resume from). At least 4 MiB: a message is taken whole while
    # half the budget is free, and one upstream message holds up to 1 MiB of events and one more
    # (an event up to 1 MiB), so half of it must hold one for the budget to bound the socket.
    WS_SEND_QUEUE_BYTES: int = Field(default=16 * 1024 * 1024, ge=4 * 1024 * 1024)
    # Milliseconds a `"batch": true` subscription's live events may wait to go out together (one
    # socket message per window, not per upstream message); 0 sends each at once. At most 50.
    WS_BATCH_WINDOW_MS: float = Field(default=10, ge=0, le=50)
    # The gateway's readers of the event log (each a JetStream consumer; nats-server 2.15 gives a
    # stream 1000 unless it sets its own, and one client filled them, QA s24 F4): distinct
    # filters followed at once, in the gateway and per socket (a subscribe needing one more is
    # refused, RESOURCE_EXHAUSTED), and catch-up replays at once, in the gateway and per socket
    # (more wait their turn). At the defaults one gateway holds at most 200 + 2 × 64 consumers,
    # a third of a stream's (docs/gateway.md, "Limits on readers of the event log").
    GATEWAY_MAX_FILTERS: int = Field(default=200, ge=1)
    GATEWAY_MAX_REPLAYS: int = Field(default=64, ge=1)
    WS_MAX_FILTERS: int = Field(default=20, ge=1)
    WS_MAX_REPLAYS: int = Field(default=4, ge=1)
    # NDJSON streams (`/v1/events:stream`, `/v1/runs/{run}:stream`, `/v1/runs:stream`) open at
    # once in the gateway: each is an upstream call of its own (a reader of the event log or of a
    # run), which one client looping `curl -N` could otherwise open until the events service's
    # EVENTS_MAX_STREAMS was all theirs. One more is refused (429, RESOURCE_EXHAUSTED).
    GATEWAY_MAX_HTTP_STREAMS: int = Field(default=100, ge=1)
    MAX_REQUEST_BYTES: int = Field(default=8 * 1024 * 1024, ge=1024)
    # Gateway: default deadline of a unary call passed upstream (a client may send its own with
    # `X-Request-Timeout` / `grpc-timeout`), and of a streamed document upload.
    GATEWAY_TIMEOUT_SECONDS: float = Field(default=60, gt=0)
    GATEWAY_UPLOAD_TIMEOUT_SECONDS: float = Field(default=600, gt=0)

    @field_validator("CORS_ORIGINS", "CODE_ALLOWED_ROOTS", "AGENT_WORKFLOW_MODULES", mode="before")
    @classmethod
    def _split_list(cls, v: object) -> object:
        """Accept a comma-separated string or a JSON list."""
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                import json

                return json.loads(v)
            return [item.strip() for item in v.split(",") if item.strip()]
        return v

    @field_validator("GIT_WORKTREE_DIR", "LOCAL_MODEL_DIR", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("ANTHROPIC_API_KEY")
    @classmethod
    def _validate_anthropic_key(cls, v: SecretStr) -> SecretStr:
        key = v.get_secret_value()
        if not key:
            return v
        if not key.startswith("sk-ant-"):
            raise ValueError("ANTHROPIC_API_KEY must start with 'sk-ant-'")
        return v

    @field_validator("OPENROUTER_API_KEY")
    @classmethod
    def _validate_openrouter_key(cls, v: SecretStr) -> SecretStr:
        key = v.get_secret_value()
        if key and not key.startswith("sk-or-"):
            _log.warning("OPENROUTER_API_KEY should start with 'sk-or-'")
        return v

    @field_validator("LOCAL_MODEL")
    @classmethod
    def _validate_local_model(cls, v: str) -> str:
        v = v.strip()
        if v in (*PACKAGED_LOCAL_MODELS, LOCAL_MODEL_OFF):
            return v
        if v.endswith(".gguf") or "/" in v:
            # Absolute, so every process (and `local:<path>`) means the same file.
            return str(Path(v).expanduser().resolve())
        raise ValueError(
            f"LOCAL_MODEL must be one of {', '.join(map(repr, PACKAGED_LOCAL_MODELS))}, "
            f"'{LOCAL_MODEL_OFF}' or the path of a .gguf file"
        )

    @field_validator("DATABASE_URL")
    @classmethod
    def _validate_database_url(cls, v: str) -> str:
        if v and not v.startswith(("postgresql://", "postgresql+asyncpg://")):
            raise ValueError("DATABASE_URL must be a PostgreSQL connection string")
        return v

    @field_validator("NATS_URL")
    @classmethod
    def _validate_nats_url(cls, v: str) -> str:
        for url in filter(None, (u.strip() for u in v.split(","))):
            if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(
                    "NATS_URL must be nats://host:port (comma-separated for a cluster)"
                )
        return v

    @field_validator("CHUNK_SIZE")
    @classmethod
    def _validate_chunk_size(cls, v: int) -> int:
        if v < 100:
            raise ValueError("CHUNK_SIZE too small - minimum 100 characters")
        if v > 4000:
            _log.warning("CHUNK_SIZE %s is very large - may exceed model context limits", v)
        return v

    @model_validator(mode="after")
    def _validate_chunk_overlap(self) -> Settings:
        if self.CHUNK_OVERLAP < 0:
            raise ValueError("CHUNK_OVERLAP cannot be negative")
        if self.CHUNK_OVERLAP >= self.CHUNK_SIZE:
            raise ValueError("CHUNK_OVERLAP must be less than CHUNK_SIZE")
        return self

    @model_validator(mode="after")
    def _validate_pool_settings(self) -> Settings:
        if self.DATABASE_POOL_SIZE < 1:
            raise ValueError("DATABASE_POOL_SIZE must be at least 1")
        if self.DATABASE_MAX_OVERFLOW < 0:
            raise ValueError("DATABASE_MAX_OVERFLOW cannot be negative")
        return self

    @model_validator(mode="after")
    def _resolve_default_model(self) -> Settings:
        self.DEFAULT_MODEL = self.DEFAULT_MODEL.strip()
        if self.DEFAULT_MODEL:
            return self
        if self.ANTHROPIC_API_KEY.get_secret_value():
            self.DEFAULT_MODEL = DEFAULT_ANTHROPIC_MODEL
        elif self.OPENAI_API_KEY.get_secret_value():
            self.DEFAULT_MODEL = DEFAULT_OPENAI_MODEL
        elif self.LOCAL_MODEL != LOCAL_MODEL_OFF:
            self.DEFAULT_MODEL = f"local:{self.LOCAL_MODEL}"
        else:
            # No model at all: runs fail saying which key to set.
            self.DEFAULT_MODEL = DEFAULT_ANTHROPIC_MODEL
        return self

    @model_validator(mode="after")
    def _resolve_default_temperature(self) -> Settings:
        """A local default model samples at LOCAL_MODEL_TEMPERATURE unless DEFAULT_TEMPERATURE
        is set, and stops at LOCAL_MODEL_MAX_TOKENS unless DEFAULT_MAX_TOKENS is: what an agent
        or a run leaves out is then the small model's safe choice."""
        if "DEFAULT_TEMPERATURE" not in self.model_fields_set and self.DEFAULT_MODEL.startswith(
            "local:"
        ):
            self.DEFAULT_TEMPERATURE = self.LOCAL_MODEL_TEMPERATURE
        if "DEFAULT_MAX_TOKENS" not in self.model_fields_set and self.DEFAULT_MODEL.startswith(
            "local:"
        ):
            self.DEFAULT_MAX_TOKENS = self.LOCAL_MODEL_MAX_TOKENS
        return self

    # Helpers -------------------------------------------------------------------------------

    @property
    def is_development(self) -> bool:
        return self.ENVIRONMENT == Environment.DEVELOPMENT

    @property
    def is_testing(self) -> bool:
        return self.ENVIRONMENT == Environment.TESTING

    @property
    def is_production(self) -> bool:
        return self.ENVIRONMENT == Environment.PRODUCTION

    @property
    def api_token(self) -> str:
        return self.AMELIA_API_TOKEN.get_secret_value()

    @property
    def data_dir(self) -> Path:
        return self.AMELIA_DATA_DIR.expanduser().resolve()

    @property
    def worktree_dir(self) -> Path:
        return (self.GIT_WORKTREE_DIR or self.data_dir / "worktrees").expanduser().resolve()

    @property
    def local_model_dir(self) -> Path:
        if self.LOCAL_MODEL_DIR is not None:
            return self.LOCAL_MODEL_DIR.expanduser().resolve()
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(cache).expanduser().resolve() / "amelia" / "models"

    @property
    def local_model_url(self) -> str:
        """The local model server's OpenAI-compatible base URL (…/v1)."""
        return self.LOCAL_MODEL_URL.rstrip("/") or f"http://127.0.0.1:{self.LOCAL_MODEL_PORT}/v1"

    @property
    def bind_host(self) -> str:
        """HOST, except that without an API token the mesh only listens on loopback."""
        if self.api_token or _is_loopback(self.HOST):
            return self.HOST
        return "127.0.0.1"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
