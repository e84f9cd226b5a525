"""The worker's settings: one frozen object, loaded once in ``main`` and passed down.

Sources, highest priority first: environment variables ``TAGSTREAM_<FIELD>``, then an optional
YAML or JSON file (``--config FILE`` or ``TAGSTREAM_CONFIG_FILE``; keys are the field names),
then the defaults below. Every field's description says what it trades off; ``tagstream-worker
run --help`` prints them.

Invalid settings fail at start with one line per problem naming the environment variable and
the fix (``SettingsError``). Checks that need the model bundle (token budget against the
bundle's maximum length, routes against its labels) are in ``check_against_bundle``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from worker.errors import SettingsError

ENV_PREFIX = "TAGSTREAM_"
CONFIG_FILE_ENV = "TAGSTREAM_CONFIG_FILE"
TOPIC_PLACEHOLDER = "{topic}"
_INSTANCE_ID_CHARS = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# Feeder processes per pod: each is a consumer-group member with its own connections; beyond a
# few dozen the group's rebalances, not the CPUs, become the limit.
MAX_PROCESSES = 64
# Room for a dead letter's key and headers above its value, in the producer's request limit.
DEAD_LETTER_HEADROOM_BYTES = 64 * 1024
# Kafka's legal topic characters; '{' and '}' are allowed in templates only as {topic}.
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["none", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


class WorkerSettings(BaseSettings):
    """Everything the worker can be told. Frozen: read it, never change it."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        case_sensitive=False,
        validate_default=True,
    )

    # -- Kafka connection ------------------------------------------------------------------
    bootstrap_servers: str = Field(
        "localhost:9092",
        description="Comma-separated host:port list of brokers to bootstrap from.",
    )
    security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="How to talk to the brokers: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_mechanism: SaslMechanism = Field(
        "none", description="SASL mechanism when security_protocol is SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."
    )
    sasl_username: str | None = Field(None, description="SASL user name (with sasl_mechanism).")
    sasl_password: SecretStr | None = Field(None, description="SASL password; never logged or printed.")
    ssl_cafile: Path | None = Field(None, description="PEM file of the CA that signed the brokers' certificates.")
    ssl_certfile: Path | None = Field(None, description="PEM client certificate, for brokers that require mTLS.")
    ssl_keyfile: Path | None = Field(None, description="PEM private key of ssl_certfile.")
    kafka_client: Literal["kafka-python", "confluent"] = Field(
        "kafka-python",
        description="The Kafka client library: kafka-python (pure Python, the default) or confluent"
        " (librdkafka through confluent-kafka, the [confluent] extra): several times less CPU per event,"
        " for workers that must keep a GPU fed.",
    )

    # -- what to read and where results go ---------------------------------------------------
    input_topics: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Topics to consume (comma-separated or a JSON list). Give this or input_pattern.",
    )
    input_pattern: str | None = Field(
        None,
        description="Regex that must match a whole topic name, instead of input_topics; "
        "the worker's own output and dead-letter topics are always excluded.",
    )
    group_id: str = Field(
        "tagstream",
        description="Consumer group: workers with the same group split the partitions between them.",
    )
    output_topic: str = Field(
        "{topic}.labels",
        description="Where results go: a topic name, or a template where {topic} is the input topic.",
    )
    routes: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description='Per-label output topics as a JSON object, e.g. {"spam": "mail.spam"}; '
        "labels not listed go to output_topic. Values may use {topic}.",
    )
    dlq_topic: str = Field(
        "{topic}.dlq",
        description="Dead-letter topic (template like output_topic) for inputs that cannot be classified.",
    )
    group_instance_id: str | None = Field(
        default_factory=lambda: _default_instance_id(os.environ),
        description="Static group membership (KIP-345): a restarted worker with the same id gets its partitions"
        " back at once instead of after session_timeout_ms. Default: the pod's hostname in Kubernetes, else"
        " unset (dynamic membership); 'none' turns it off. Must be unique within the group.",
    )
    leave_group_on_stop: bool = Field(
        True,
        description="With group_instance_id: leave the group on SIGTERM so its partitions move at once (scale-down,"
        " Deployment rollouts). false keeps them for a StatefulSet pod coming back under the same name.",
    )
    session_timeout_ms: int = Field(
        45_000, ge=6_000, le=300_000,
        description="How long the group waits for a silent member before moving its partitions: shorter"
        " reassigns a dead worker's partitions sooner, longer tolerates pauses (GC, slow networks).",
    )
    heartbeat_interval_ms: int = Field(
        1_000, ge=100, le=100_000,
        description="How often a worker tells its group it is alive, and so how soon it hears of a rebalance:"
        " when a worker or feeder joins or leaves, the others let go of their partitions at their next"
        " heartbeat. The clients' default, 3 s, left every new member (a pod's second feeder, a scaled-up"
        " worker) waiting that long while the others held its partitions. At most a third of"
        " session_timeout_ms.",
    )
    metadata_refresh_s: float = Field(
        30.0, ge=1.0, le=3600.0,
        description="How often the Kafka clients refresh topic metadata: partitions added to an input topic"
        " (to scale out further) are read, and new topics matching TAGSTREAM_INPUT_PATTERN found, within this"
        " time. The clients' own default, 5 min, left records on added partitions unread that long. Each"
        " refresh is one metadata request per client; raise it on clusters of very many topics.",
    )
    output_topic_idle_s: float = Field(
        300.0, ge=1.0, le=86_400.0,
        description="A result or dead-letter topic the worker has not written to for this long is forgotten by"
        " its producer (Java's metadata.max.idle.ms, 5 min): deleted after that (its input gone), no running"
        " worker creates it again. Until then the producer's metadata refresh creates a deleted topic again"
        " on a broker with auto.create.topics.enable. Exactly-once workers with the confluent client keep"
        " every topic until they restart.",
    )
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="at_least_once: commit after the broker acknowledged each output (duplicates possible"
        " after a crash); exactly_once: outputs and offsets in one Kafka transaction per commit interval,"
        " readers with isolation_level=read_committed see each input's outcome once (costs throughput).",
    )
    transaction_timeout_ms: int = Field(
        60_000, ge=1_000, le=900_000,
        description="exactly_once: how long the broker keeps a transaction open before aborting it; a crashed"
        " worker that no successor replaces (the same group_instance_id, or without one the same state_dir"
        " folder) holds back read_committed readers this long.",
    )
    max_poll_interval_ms: int = Field(
        300_000, ge=1_000,
        description="The longest gap between polls before the group evicts this member. The worker polls every"
        " 100 ms even while the model is busy, so a slow model never trips it.",
    )
    isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        "read_committed",
        description="Which input records the worker reads: read_committed skips records of aborted"
        " transactions (an upstream exactly-once producer retried them; labelling them gave results for"
        " inputs no other reader ever sees) and waits for open transactions; read_uncommitted reads"
        " everything at once. Same for both clients. exactly_once needs read_committed.",
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest",
        description="Where a group with no committed offset starts: earliest (nothing missed) or latest.",
    )

    # -- input records ------------------------------------------------------------------------
    input_format: Literal["json", "text"] = Field(
        "json", description="json: an object holding text_field (and id_field); text: the value is the text."
    )
    text_field: str = Field("text", description="JSON field holding the text to classify.")
    id_field: str = Field(
        "id", description="JSON field holding the event id; without it the id is topic:partition:offset."
    )
    max_payload_bytes: int = Field(
        1_048_576, ge=1,
        description="Larger values are dead-lettered unread, as a bounded copy (protects memory and latency)."
        " The producer's max_request_size is set from it (see the README on record sizes).",
    )
    dead_letter_max_bytes: int = Field(
        65_536, ge=1_024,
        description="A dead letter too large to publish whole (over max_payload_bytes, or refused by the"
        " producer or the topic) is published as its first N bytes plus headers with its size and sha256.",
    )

    # -- batching -----------------------------------------------------------------------------
    max_batch_size: int = Field(
        64, ge=1, le=4096, description="Most inputs in one model call: larger batches raise throughput and latency."
    )
    max_batch_tokens: int = Field(
        8192, ge=1,
        description="Most padded tokens (longest x count) in one model call: bounds the memory and time of a batch.",
    )
    max_wait_ms: float = Field(
        20, ge=0, le=60_000,
        description="Longest an input waits for its batch to fill: the latency paid for batching at low load.",
    )
    max_pending_events: int = Field(
        1024, ge=1,
        description="Inputs read but not yet batched before the consumer pauses (backpressure; bounds memory).",
    )

    # -- model --------------------------------------------------------------------------------
    bundle_path: Path = Field(..., description="Model bundle folder (from tagstream-train); watched for updates.")
    reload_interval_s: float = Field(
        5, ge=0, description="How often the bundle folder is checked for a new version (looked at once the folder has"
        " stayed the same for 2 s, so that a copy in progress is not refused midway); 0 turns reloading off."
    )
    device: str = Field("auto", description="auto (a GPU when there is one), cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Compute precision: auto is float32 on CPU and bfloat16 (or float16) autocast on GPU;"
        " bfloat16 is recommended on CPUs with AVX512-BF16/AMX (1.3-2.3x the throughput, same accuracy).",
    )
    cuda_graphs: bool = Field(
        True,
        description="On a GPU, run the model as CUDA graphs captured at warm-up, one per batch-shape bucket (a batch"
        " is padded up to the nearest: rows to 1, 2, 3, 4, 6, 8, 12, ..., lengths to a multiple of 16): one launch"
        " instead of ~100 per batch. false = eager calls. No effect on a CPU.",
    )
    threads: int = Field(
        0, ge=0, description="CPU threads for the model; 0 = all cores. Fewer leaves room for Kafka I/O."
    )
    inference_streams: int = Field(
        0, ge=0, le=64,
        description="Batches the model runs at once, each on threads/streams CPU threads; 0 = auto: 2 on a"
        " CPU with 2+ threads (keeps every core busy while Kafka work preempts one), 1 on a GPU.",
    )
    fast_tokenizer: bool = Field(
        True,
        description="Tokenize ASCII texts with flash-tokenizer's C++ WordPiece where it gives exactly HF tokenizers'"
        " ids (BERT-layout tokenizers; checked at load; about 7x less CPU per text); false = HF tokenizers for every"
        " text. Other texts and tokenizers always use HF tokenizers.",
    )
    top_k: int = Field(3, ge=1, description="How many label scores each result carries (at most the label count).")
    cpu_pinning: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Run a worker's threads on one CPU (feeder i on the i-th CPU of the mask; a CPU model's threads"
        " stay free): a process with every thread on one core used a quarter to a third less CPU per event, measured."
        " auto = only where the pod owns its CPUs (affinity mask within the cgroup CPU limit: Kubernetes' static CPU"
        " manager policy); on = always (a dedicated machine); off = never.",
    )
    processes: int | Literal["auto"] = Field(
        1,
        description="Processes per pod: 1 runs everything in one process; N (2-64) runs N feeder processes (each a"
        " consumer-group member that polls, parses, tokenizes, produces and commits) around one model process that"
        " holds the model once and merges their batches; auto = min(CPUs - 1, 8) with a GPU, 1 without. More"
        " feeders keep a fast GPU busy; each is one more group member (partitions >= pods x feeders).",
    )

    # -- operations -----------------------------------------------------------------------------
    metrics_port: int = Field(
        9100, ge=0, le=65535,
        description="Port for /metrics, /healthz and /readyz; 0 picks a free port (logged).",
    )
    broker_outage_s: float = Field(
        180, gt=0,
        description="How long the worker waits out a broker it cannot reach (not ready meanwhile), counted"
        " from the broker's last answer, before /healthz fails and it exits non-zero so the orchestrator"
        " restarts it.",
    )
    model_stall_s: float = Field(
        120, ge=0,
        description="How long one model call may run before the worker counts its device or model process as"
        " hung: /healthz fails and it exits non-zero so the orchestrator restarts it (a hung call never returns,"
        " and its partitions would wait for ever). Above the longest batch the model takes; 0 turns it off.",
    )
    state_dir: Path | None = Field(
        Path("/tmp/tagstream"),
        description="Folder for what must outlive the worker's process: the inputs of each model call while it"
        " runs, so that a worker that dies in a call (OOM killer, a crash in a kernel, a liveness probe's kill)"
        " counts them when it starts again, and runs them alone, then dead-letters the one that kills it"
        " (stalled_twice) instead of restarting on it for ever. Without static membership it also names the"
        " exactly_once transactional id (its folder-id file). Keep it across restarts: Kubernetes' emptyDir"
        " does (the manifest's /tmp). Empty turns it off.",
    )
    drain_timeout_s: float = Field(
        20, gt=0,
        description="On SIGTERM, how long to finish in-flight batches, flush and commit before exiting.",
    )
    commit_interval_ms: int = Field(
        200, ge=10,
        description="How often acknowledged offsets are committed: shorter means fewer duplicates after a crash.",
    )
    stage_timing: bool = Field(
        False,
        description="Count CPU seconds per pipeline stage in tagstream_stage_cpu_seconds_total (for finding where"
        " time goes; bench/kafka_path_bench.py turns it on). Costs a few clock reads per poll and batch.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Least severe log level shown.")
    log_format: Literal["json", "console"] = Field(
        "json", description="json: one object a line (for collectors); console: readable text."
    )

    # -- parsing and single-field checks --------------------------------------------------------
    @field_validator("input_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"not a JSON list ({exc.msg}); use a,b,c or [\"a\",\"b\"]") from None
            else:
                value = [t.strip() for t in text.split(",") if t.strip()]
        return value

    @field_validator("input_topics")
    @classmethod
    def _check_topics(cls, value: list[str]) -> list[str]:
        for topic in value:
            if not _TOPIC_CHARS.match(topic):
                raise ValueError(f"{topic!r} is not a valid topic name (letters, digits, '.', '_', '-')")
        if len(set(value)) != len(value):
            raise ValueError("lists a topic twice")
        return value

    @field_validator("state_dir", mode="before")
    @classmethod
    def _empty_is_off(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("routes", mode="before")
    @classmethod
    def _parse_routes(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f'not a JSON object ({exc.msg}); write it like {{"spam": "mail.spam"}}') from None
        if not isinstance(value, dict):
            raise ValueError('must be a JSON object of label -> topic, like {"spam": "mail.spam"}')
        return value

    @field_validator("routes")
    @classmethod
    def _check_routes(cls, value: dict[str, str]) -> dict[str, str]:
        for label, template in value.items():
            _check_template(template, f"the topic for label {label!r}")
        return value

    @field_validator("output_topic", "dlq_topic")
    @classmethod
    def _check_output_templates(cls, value: str) -> str:
        _check_template(value, "the topic")
        return value

    @field_validator("input_pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None  # an empty variable (a template's value: "") is unset, not a pattern matching nothing
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"is not a valid regular expression ({exc})") from None
        return value

    @field_validator("group_instance_id")
    @classmethod
    def _check_instance_id(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "none"):
            return None
        value = value.strip()
        if not _INSTANCE_ID_CHARS.match(value) or value in (".", ".."):
            raise ValueError(f"{value!r}: use 1-249 of letters, digits, '.', '_', '-' (or none to turn it off)")
        return value

    @field_validator("processes", mode="before")
    @classmethod
    def _parse_processes(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return text
            if not text.isdigit():
                raise ValueError("use auto or a whole number from 1 to 64")
            value = int(text)
        if isinstance(value, int) and not 1 <= value <= MAX_PROCESSES:
            raise ValueError(f"use auto or a whole number from 1 to {MAX_PROCESSES}")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("must be auto, cpu, cuda or cuda:N (N a GPU index)")
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_servers(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server.strip()!r} is not host:port")
        return value

    @field_validator("sasl_mechanism", mode="before")
    @classmethod
    def _upper_mechanism(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) and value.lower() != "none" else value

    @field_validator("security_protocol", "log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    # -- checks across fields -------------------------------------------------------------------
    @model_validator(mode="after")
    def _check_combinations(self) -> WorkerSettings:
        if bool(self.input_topics) == bool(self.input_pattern):
            raise ValueError(
                f"give exactly one of {env_name('input_topics')} (e.g. events) or {env_name('input_pattern')}"
                f" (e.g. 'events\\..*'){' (both are set)' if self.input_topics else ' (neither is set)'}"
            )
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                f"{env_name('heartbeat_interval_ms')}={self.heartbeat_interval_ms} is over a third of"
                f" {env_name('session_timeout_ms')}={self.session_timeout_ms}: two late heartbeats would take"
                f" a live worker's partitions away; lower it to {self.session_timeout_ms // 3} or less"
            )
        uses_sasl = self.security_protocol.startswith("SASL_")
        if uses_sasl and self.sasl_mechanism == "none":
            raise ValueError(
                f"{env_name('security_protocol')}={self.security_protocol} needs {env_name('sasl_mechanism')}"
                " (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
            )
        if uses_sasl and (not self.sasl_username or self.sasl_password is None):
            raise ValueError(
                f"{env_name('sasl_mechanism')}={self.sasl_mechanism} needs {env_name('sasl_username')}"
                f" and {env_name('sasl_password')}"
            )
        if not uses_sasl and self.sasl_mechanism != "none":
            raise ValueError(
                f"{env_name('sasl_mechanism')}={self.sasl_mechanism} has no effect with"
                f" {env_name('security_protocol')}={self.security_protocol}: set it to SASL_PLAINTEXT or"
                f" SASL_SSL, or unset {env_name('sasl_mechanism')}"
            )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{env_name(name)}={path}: no such file")
        if self.kafka_client == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
            raise ValueError(
                f"{env_name('kafka_client')}=confluent needs the confluent-kafka package: install the"
                " confluent extra (pip install 'tagstream[confluent]'; make install has it), or use kafka-python"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError(f"set both {env_name('ssl_certfile')} and {env_name('ssl_keyfile')}, or neither")
        if self.processing_guarantee == "exactly_once" and self.isolation_level != "read_committed":
            raise ValueError(
                f"{env_name('processing_guarantee')}=exactly_once needs {env_name('isolation_level')}=read_committed"
                " (a transaction's outputs must follow inputs that were committed)"
            )
        if self.processing_guarantee == "exactly_once" and self.commit_interval_ms >= self.transaction_timeout_ms:
            raise ValueError(
                f"{env_name('commit_interval_ms')}={self.commit_interval_ms} must be shorter than"
                f" {env_name('transaction_timeout_ms')}={self.transaction_timeout_ms}: each commit interval is one"
                " transaction"
            )
        # A worker must never consume what it produces: that would loop forever.
        for topic in self.input_topics:
            own = {self.output_topic_for(topic), self.dlq_topic_for(topic)}
            own |= {self.route_topic_for(topic, label) for label in self.routes}
            looping = sorted(own & set(self.input_topics))
            if looping:
                raise ValueError(
                    f"output topic {looping[0]!r} is also an input topic ({env_name('input_topics')}): the worker"
                    f" would classify its own results; change {env_name('output_topic')}, {env_name('routes')}"
                    f" or {env_name('dlq_topic')}"
                )
        return self

    # -- derived values -------------------------------------------------------------------------
    def output_topic_for(self, source_topic: str) -> str:
        return self.output_topic.replace(TOPIC_PLACEHOLDER, source_topic)

    def dlq_topic_for(self, source_topic: str) -> str:
        return self.dlq_topic.replace(TOPIC_PLACEHOLDER, source_topic)

    def route_topic_for(self, source_topic: str, label: str) -> str:
        template = self.routes.get(label)
        if template is None:
            return self.output_topic_for(source_topic)
        return template.replace(TOPIC_PLACEHOLDER, source_topic)

    def own_topic_regex(self) -> str:
        """A regex matching every topic this worker writes to (outputs, routes, dead letters)."""
        parts = []
        for template in (self.output_topic, self.dlq_topic, *self.routes.values()):
            pieces = [re.escape(p) for p in template.split(TOPIC_PLACEHOLDER)]
            parts.append(".+".join(pieces))
        return "|".join(sorted(set(parts)))

    def subscription_pattern(self) -> str | None:
        """The input pattern, anchored to whole names and excluding the worker's own topics.

        kafka-python matches patterns with ``re.match`` (anchored at the start only); the
        trailing ``$`` makes it a whole-name match, as in the Java client.
        """
        if self.input_pattern is None:
            return None
        return f"(?!(?:{self.own_topic_regex()})$)(?:{self.input_pattern})$"

    def producer_max_request_bytes(self) -> int:
        """The producer's largest request: a whole dead letter of max_payload_bytes plus its headers."""
        return max(1_048_576, self.max_payload_bytes + DEAD_LETTER_HEADROOM_BYTES)

    def kafka_security(self) -> dict[str, Any]:
        """kafka-python keyword arguments for the connection's security settings."""
        config: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL_"):
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_username
            config["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.security_protocol in ("SSL", "SASL_SSL"):
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name) is not None:
                    config[name] = str(getattr(self, name))
        return config

    def redacted(self) -> dict[str, Any]:
        """The resolved settings for printing: secrets masked, paths as strings."""
        data = self.model_dump(mode="json")
        if self.sasl_password is not None:
            data["sasl_password"] = "**********"
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit arguments, then TAGSTREAM_* variables, then the config file.
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))


# The config file's values for the load_settings call in progress (see _ConfigFileSource).
_FILE_VALUES: ContextVar[Mapping[str, Any]] = ContextVar("_FILE_VALUES", default=MappingProxyType({}))


class _ConfigFileSource(PydanticBaseSettingsSource):
    """The lowest-priority source: values read from --config / TAGSTREAM_CONFIG_FILE."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return _FILE_VALUES.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get())


def _default_instance_id(environ: Mapping[str, str]) -> str | None:
    """In Kubernetes, the pod's hostname (its name): stable across container restarts, and for a
    StatefulSet across pod replacements too. Elsewhere none: two workers on one host would share it."""
    if environ.get("KUBERNETES_SERVICE_HOST") and environ.get("HOSTNAME"):
        return environ["HOSTNAME"]
    return None


def _check_template(template: str, what: str) -> None:
    if re.search(r"\{(?!topic\})[^}]*\}", template) or template.count("{") != template.count(TOPIC_PLACEHOLDER):
        raise ValueError(f"{template!r}: {what} may only use the placeholder {{topic}}")
    sample = template.replace(TOPIC_PLACEHOLDER, "t")
    if not _TOPIC_CHARS.match(sample):
        raise ValueError(f"{template!r} does not give a valid topic name (letters, digits, '.', '_', '-')")


# What to tell the user for each field when pydantic's own message is all we have.
_FIX_HINTS: dict[str, str] = {
    "bundle_path": "point it at a bundle folder written by tagstream-train (it holds manifest.json)",
    "max_batch_size": "use a whole number from 1 to 4096 (64 is a good start on CPU)",
    "max_batch_tokens": "use a whole number at least the bundle's max_length (8192 is the default)",
    "max_wait_ms": "use milliseconds from 0 to 60000 (20 is the default)",
    "metrics_port": "use a port from 1 to 65535, or 0 for any free port",
    "processes": "use auto or a whole number from 1 to 64",
}


def _describe(error: Mapping[str, Any]) -> str:
    loc = [str(p) for p in error.get("loc", ()) if not isinstance(p, int)]
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if not loc:  # a model-level check: its message already names the variables
        return f"invalid settings: {message}"
    field = loc[0]
    name = env_name(field)
    if error.get("type") == "missing":
        return f"{name} is required: {_FIX_HINTS.get(field, 'set it')}"
    if error.get("type") == "extra_forbidden":
        return f"unknown setting {field!r} in the config file: remove it or check its spelling"
    value = error.get("input")
    shown = "" if isinstance(value, dict | list) or value is None else f"={value}"
    if field == "sasl_password":
        shown = ""
    hint = _FIX_HINTS.get(field)
    return f"{name}{shown}: {message}" + (f"; {hint}" if hint and hint not in message else "")


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> WorkerSettings:
    """Build the settings from ``overrides``, the environment and an optional config file.

    ``overrides`` (for tests and tools) take precedence over everything; the file, from
    ``config_file`` or ``TAGSTREAM_CONFIG_FILE``, has the lowest priority. Raises
    ``SettingsError`` with one line per problem.
    """
    path = config_file or os.environ.get(CONFIG_FILE_ENV)
    token = _FILE_VALUES.set(_read_config_file(Path(path)) if path else {})
    try:
        return WorkerSettings(**overrides)
    except ValidationError as exc:
        raise SettingsError("\n".join(_describe(e) for e in exc.errors())) from None
    except SettingsError:
        raise
    except Exception as exc:  # pydantic-settings' own parse errors
        raise SettingsError(f"invalid settings: {exc}") from exc
    finally:
        _FILE_VALUES.reset(token)


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SettingsError(f"{CONFIG_FILE_ENV} / --config: {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise SettingsError(f"config file {path}: use a .yaml, .yml or .json file")
    except SettingsError:
        raise
    except Exception as exc:
        raise SettingsError(f"config file {path} cannot be parsed: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of setting names to values")
    # Accept both field names and TAGSTREAM_* names in files.
    return {str(k).lower().removeprefix(ENV_PREFIX.lower()): v for k, v in data.items()}


def check_against_bundle(settings: WorkerSettings, *, labels: list[str], max_length: int) -> None:
    """Refuse settings that cannot work with this bundle; each message names the setting."""
    problems = []
    if settings.max_batch_tokens < max_length:
        problems.append(
            f"{env_name('max_batch_tokens')}={settings.max_batch_tokens} is below the bundle's max_length"
            f" {max_length}: one long text would not fit in a batch; raise it to at least {max_length}"
        )
    unknown = sorted(set(settings.routes) - set(labels))
    if unknown:
        problems.append(
            f"{env_name('routes')} names labels {unknown} that the bundle does not have"
            f" (it has {labels}); fix the label names"
        )
    if problems:
        raise SettingsError("\n".join(problems))
