"""Settings: environment names, config files, defaults and one-line errors naming the fix."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from worker.errors import SettingsError
from worker.settings import WorkerSettings, check_against_bundle, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("TAGSTREAM_"):
            monkeypatch.delenv(key)


def base(monkeypatch, **env):
    monkeypatch.setenv("TAGSTREAM_BUNDLE_PATH", "/bundles/current")
    monkeypatch.setenv("TAGSTREAM_INPUT_TOPICS", "events")
    for key, value in env.items():
        monkeypatch.setenv(f"TAGSTREAM_{key.upper()}", value)


def test_defaults_match_the_contract(monkeypatch):
    """With only the required settings, every default is the one agreed in CONTRACTS.md section 4."""
    base(monkeypatch)
    s = load_settings()
    assert s.bootstrap_servers == "localhost:9092"
    assert s.security_protocol == "PLAINTEXT" and s.sasl_mechanism == "none"
    assert s.group_id == "tagstream"
    assert s.output_topic == "{topic}.labels" and s.dlq_topic == "{topic}.dlq" and s.routes == {}
    assert s.input_format == "json" and s.text_field == "text" and s.id_field == "id"
    assert s.max_payload_bytes == 1048576
    assert (s.max_batch_size, s.max_batch_tokens, s.max_wait_ms) == (64, 8192, 20)
    assert s.reload_interval_s == 5 and s.device == "auto" and s.dtype == "auto" and s.threads == 0
    assert s.top_k == 3 and s.metrics_port == 9100 and s.drain_timeout_s == 20
    assert (s.session_timeout_ms, s.heartbeat_interval_ms) == (45_000, 1_000)  # members hear of a rebalance within 1 s
    assert s.log_level == "INFO" and s.log_format == "json"
    assert s.isolation_level == "read_committed"  # records of aborted upstream transactions are skipped


def test_every_contract_variable_is_read(monkeypatch):
    """Each TAGSTREAM_* variable of the contract sets its field."""
    base(monkeypatch)
    env = {
        "BOOTSTRAP_SERVERS": "k1:9092,k2:9092", "GROUP_ID": "g", "OUTPUT_TOPIC": "results",
        "ROUTES": '{"spam": "mail.spam"}', "DLQ_TOPIC": "dead", "INPUT_FORMAT": "text", "TEXT_FIELD": "body",
        "ID_FIELD": "uuid", "MAX_PAYLOAD_BYTES": "1000", "MAX_BATCH_SIZE": "32", "MAX_BATCH_TOKENS": "4096",
        "MAX_WAIT_MS": "5", "RELOAD_INTERVAL_S": "0", "DEVICE": "cpu", "DTYPE": "bfloat16", "THREADS": "1",
        "TOP_K": "2", "METRICS_PORT": "9200", "DRAIN_TIMEOUT_S": "7", "LOG_LEVEL": "debug", "LOG_FORMAT": "console",
    }
    for key, value in env.items():
        monkeypatch.setenv(f"TAGSTREAM_{key}", value)
    s = load_settings()
    assert s.bootstrap_servers == "k1:9092,k2:9092" and s.group_id == "g" and s.output_topic == "results"
    assert s.routes == {"spam": "mail.spam"} and s.dlq_topic == "dead" and s.input_format == "text"
    assert (s.text_field, s.id_field, s.max_payload_bytes) == ("body", "uuid", 1000)
    assert (s.max_batch_size, s.max_batch_tokens, s.max_wait_ms) == (32, 4096, 5)
    assert (s.reload_interval_s, s.device, s.dtype, s.threads, s.top_k) == (0, "cpu", "bfloat16", 1, 2)
    assert (s.metrics_port, s.drain_timeout_s, s.log_level, s.log_format) == (9200, 7, "DEBUG", "console")


@pytest.mark.parametrize("raw", ["a,b, c", '["a", "b", "c"]'])
def test_input_topics_accept_commas_or_json(monkeypatch, raw):
    """TAGSTREAM_INPUT_TOPICS is a comma-separated list or a JSON list."""
    base(monkeypatch, input_topics=raw)
    assert load_settings().input_topics == ["a", "b", "c"]


def test_settings_are_frozen(monkeypatch):
    """The settings object cannot be changed after loading."""
    base(monkeypatch)
    s = load_settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.max_batch_size = 1  # type: ignore[misc]


def test_environment_overrides_the_config_file(monkeypatch, tmp_path):
    """A YAML file sets values; a TAGSTREAM_* variable beats the file."""
    base(monkeypatch, max_batch_size="16")
    config = tmp_path / "worker.yaml"
    config.write_text("max_batch_size: 8\nmax_wait_ms: 3\ngroup_id: from-file\n")
    s = load_settings(config)
    assert s.max_batch_size == 16 and s.max_wait_ms == 3 and s.group_id == "from-file"


def test_config_file_from_env_var_and_json(monkeypatch, tmp_path):
    """TAGSTREAM_CONFIG_FILE names a JSON file, whose keys may also be TAGSTREAM_* names."""
    base(monkeypatch)
    config = tmp_path / "worker.json"
    config.write_text(json.dumps({"TAGSTREAM_TOP_K": 1, "threads": 2}))
    monkeypatch.setenv("TAGSTREAM_CONFIG_FILE", str(config))
    s = load_settings()
    assert s.top_k == 1 and s.threads == 2


def test_unknown_key_in_config_file_is_named(monkeypatch, tmp_path):
    """A misspelt key in the config file fails with its name."""
    base(monkeypatch)
    config = tmp_path / "worker.yaml"
    config.write_text("max_batch_sise: 8\n")
    with pytest.raises(SettingsError, match="max_batch_sise"):
        load_settings(config)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"max_batch_size": "0"}, "TAGSTREAM_MAX_BATCH_SIZE=0"),
        ({"max_batch_size": "many"}, "TAGSTREAM_MAX_BATCH_SIZE=many"),
        ({"max_wait_ms": "-1"}, "TAGSTREAM_MAX_WAIT_MS"),
        ({"device": "gpu"}, "TAGSTREAM_DEVICE=gpu: must be auto, cpu, cuda or cuda:N"),
        ({"dtype": "int8"}, "TAGSTREAM_DTYPE=int8"),
        ({"routes": "{spam: x}"}, "TAGSTREAM_ROUTES"),
        ({"routes": '{"spam": "bad topic"}'}, "TAGSTREAM_ROUTES"),
        ({"output_topic": "{source}.out"}, "TAGSTREAM_OUTPUT_TOPIC"),
        ({"dlq_topic": "dl q"}, "TAGSTREAM_DLQ_TOPIC"),
        ({"bootstrap_servers": "localhost"}, "TAGSTREAM_BOOTSTRAP_SERVERS=localhost"),
        ({"input_pattern": "(unclosed"}, "TAGSTREAM_INPUT_PATTERN"),
        ({"metrics_port": "70000"}, "TAGSTREAM_METRICS_PORT=70000"),
        ({"security_protocol": "SASL_SSL"}, "TAGSTREAM_SASL_MECHANISM"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256"}, "TAGSTREAM_SASL_USERNAME"),
        ({"sasl_mechanism": "PLAIN"}, "TAGSTREAM_SECURITY_PROTOCOL"),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "TAGSTREAM_SSL_CAFILE"),
        ({"input_pattern": "events.*"}, "TAGSTREAM_INPUT_PATTERN"),  # both topics and a pattern
        ({"output_topic": "events"}, "TAGSTREAM_OUTPUT_TOPIC"),  # would consume its own results
        ({"isolation_level": "read_dirty"}, "TAGSTREAM_ISOLATION_LEVEL=read_dirty"),
        ({"processing_guarantee": "exactly_once", "isolation_level": "read_uncommitted"}, "TAGSTREAM_ISOLATION_LEVEL"),
        ({"heartbeat_interval_ms": "20000"}, "TAGSTREAM_HEARTBEAT_INTERVAL_MS=20000 is over a third of TAGSTREAM_SESSION_TIMEOUT_MS=45000"),
        ({"session_timeout_ms": "6000", "heartbeat_interval_ms": "2500"}, "lower it to 2000 or less"),
    ],
)
def test_invalid_settings_name_the_variable(monkeypatch, env, expected):
    """Each invalid setting fails with one line that names its environment variable."""
    base(monkeypatch, **env)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert expected in message
    assert len(message.splitlines()) == 1


def test_missing_bundle_path_says_what_to_set(monkeypatch):
    """Without TAGSTREAM_BUNDLE_PATH the error says it is required and what it is."""
    monkeypatch.setenv("TAGSTREAM_INPUT_TOPICS", "events")
    with pytest.raises(SettingsError, match="TAGSTREAM_BUNDLE_PATH is required: point it at a bundle"):
        load_settings()


def test_neither_topics_nor_pattern_is_an_error(monkeypatch):
    """A worker with nothing to read fails, naming both ways to say what to read."""
    monkeypatch.setenv("TAGSTREAM_BUNDLE_PATH", "/b")
    with pytest.raises(SettingsError, match=r"TAGSTREAM_INPUT_TOPICS.*TAGSTREAM_INPUT_PATTERN"):
        load_settings()


def test_secrets_are_masked_and_passed_to_kafka(monkeypatch):
    """The SASL password is masked when printed and handed to kafka-python in clear."""
    base(monkeypatch, security_protocol="sasl_plaintext", sasl_mechanism="scram-sha-512",
         sasl_username="alice", sasl_password="s3cret")
    s = load_settings()
    assert "s3cret" not in json.dumps(s.redacted()) and "s3cret" not in repr(s)
    kafka = s.kafka_security()
    assert kafka == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice", "sasl_plain_password": "s3cret",
    }


def test_topic_templates_and_routes(monkeypatch):
    """{topic} templates resolve per input topic; routes override the output topic per label."""
    base(monkeypatch, routes='{"spam": "mail.spam", "news": "{topic}.news"}')
    s = load_settings()
    assert s.output_topic_for("sms") == "sms.labels"
    assert s.dlq_topic_for("sms") == "sms.dlq"
    assert s.route_topic_for("sms", "spam") == "mail.spam"
    assert s.route_topic_for("sms", "news") == "sms.news"
    assert s.route_topic_for("sms", "ham") == "sms.labels"


def test_pattern_subscription_excludes_own_topics(monkeypatch):
    """The subscription regex matches whole names and never the worker's own outputs."""
    import re

    monkeypatch.setenv("TAGSTREAM_BUNDLE_PATH", "/b")
    monkeypatch.setenv("TAGSTREAM_INPUT_PATTERN", r"events\..*")
    s = load_settings()
    pattern = re.compile(s.subscription_pattern() or "")
    assert pattern.match("events.sms")
    assert not pattern.match("events.sms.labels")
    assert not pattern.match("events.sms.dlq")
    assert not pattern.match("other.events.x")


def test_bundle_checks_name_the_setting():
    """A token budget below the bundle's max_length, or routes for unknown labels, are refused."""
    s = WorkerSettings(bundle_path="/b", input_topics=["t"], max_batch_tokens=64, routes={"spam": "x"})
    with pytest.raises(SettingsError) as info:
        check_against_bundle(s, labels=["ham", "not-spam"], max_length=128)
    message = str(info.value)
    assert "TAGSTREAM_MAX_BATCH_TOKENS=64" in message and "at least 128" in message
    assert "TAGSTREAM_ROUTES" in message and "'spam'" in message


def test_check_says_how_long_an_input_topic_keeps_its_records():
    """`tagstream-worker check`'s retention line, from the topic's configs: time, size, no limit, compaction."""
    from worker.check import _kept

    def configs(**values: str) -> dict:
        return {name.replace("_", "."): {"value": v} for name, v in values.items()}

    assert _kept(configs(retention_ms="604800000", retention_bytes="-1", cleanup_policy="delete")) == "7 d"
    assert _kept(configs(retention_ms="5400000", cleanup_policy="delete")) == "1.5 h"
    assert _kept(configs(retention_ms="-1", retention_bytes="1073741824", cleanup_policy="delete")) == (
        "no time limit, at most 1,024 MiB a partition"
    )
    assert _kept(configs(retention_ms="3600000", cleanup_policy="compact")).startswith("compacted (compact)")
    assert _kept(configs(retention_ms="3600000", cleanup_policy="compact,delete")) == "1 h"


def test_an_empty_pattern_variable_is_unset_and_the_topics_are_read(monkeypatch):
    """TAGSTREAM_INPUT_PATTERN="" (a manifest's empty value) beside TAGSTREAM_INPUT_TOPICS: the topics are read.
    It was taken for a pattern that matched no topic, and the worker waited for ever."""
    monkeypatch.setenv("TAGSTREAM_BUNDLE_PATH", "/b")
    monkeypatch.setenv("TAGSTREAM_INPUT_TOPICS", "events")
    monkeypatch.setenv("TAGSTREAM_INPUT_PATTERN", "")
    settings = load_settings()
    assert settings.input_pattern is None and settings.subscription_pattern() is None
    assert settings.input_topics == ["events"]


def test_the_state_folder_defaults_under_tmp_and_an_empty_value_turns_it_off(monkeypatch):
    """TAGSTREAM_STATE_DIR holds the model-call journal (worker/call_journal.py): /tmp/tagstream by
    default (the manifest's /tmp is an emptyDir, which outlives container restarts); "" is off."""
    base(monkeypatch)
    assert load_settings().state_dir is not None and str(load_settings().state_dir) == "/tmp/tagstream"
    monkeypatch.setenv("TAGSTREAM_STATE_DIR", "/var/lib/tagstream")
    assert str(load_settings().state_dir) == "/var/lib/tagstream"
    monkeypatch.setenv("TAGSTREAM_STATE_DIR", "")
    assert load_settings().state_dir is None
