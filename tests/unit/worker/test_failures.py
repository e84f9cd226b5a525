"""The failure table: every kind mapped to an action, a metric label and (when fatal) an exit code."""

from __future__ import annotations

import pytest
from kafka import errors as ke

from worker.errors import (
    DEAD_LETTER_REASONS,
    EXIT_BUNDLE,
    EXIT_KAFKA,
    EXIT_SETTINGS,
    Action,
    BrokerError,
    BundleLoadError,
    Failure,
    SettingsError,
    WorkerError,
)
from worker.kafka.kafkapython import failure_for_error
from worker.telemetry import Metrics


def test_every_failure_is_fully_mapped():
    """Each Failure has an action, a unique snake_case label, a meaning, and an exit code when fatal."""
    labels = [f.label for f in Failure]
    assert len(labels) == len(set(labels))
    for failure in Failure:
        assert isinstance(failure.action, Action)
        assert failure.label.replace("_", "").isalnum() and failure.label == failure.label.lower()
        assert failure.meaning
        if failure.action is Action.EXIT:
            assert failure.exit_code > 0, failure
        else:
            assert failure.exit_code == 0, failure


def test_every_failure_has_a_metric_from_the_start():
    """tagstream_failures_total has a series for every kind, and dead letters one per reason, at 0."""
    metrics = Metrics()
    for failure in Failure:
        assert metrics.registry.get_sample_value("tagstream_failures_total", {"kind": failure.label}) == 0.0
    for reason in DEAD_LETTER_REASONS:
        assert metrics.registry.get_sample_value("tagstream_dead_letters_total", {"reason": reason.label}) == 0.0


def test_counting_a_failure_leaves_delivered_dead_letters_alone():
    """A failure is counted when it happens; tagstream_dead_letters_total counts delivered dead letters only."""
    metrics = Metrics()
    metrics.count_failure(Failure.INVALID_JSON, 3)
    assert metrics.value("tagstream_failures_total", {"kind": "invalid_json"}) == 3
    assert metrics.value("tagstream_dead_letters_total", {"reason": "invalid_json"}) == 0


def test_bad_input_is_dead_lettered_never_fatal():
    """Every kind of bad input maps to DEAD_LETTER."""
    bad_input = {
        Failure.PAYLOAD_TOO_LARGE, Failure.EMPTY_PAYLOAD, Failure.INVALID_UTF8, Failure.INVALID_JSON,
        Failure.NOT_AN_OBJECT, Failure.MISSING_TEXT, Failure.TEXT_NOT_STRING, Failure.EMPTY_TEXT,
        Failure.INFERENCE_FAILED, Failure.RECORD_REJECTED, Failure.UNREADABLE_RECORD,
        Failure.INVALID_HEADER, Failure.STALLED_TWICE,
    }
    assert set(DEAD_LETTER_REASONS) == bad_input


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (ke.SaslAuthenticationFailedError(), Failure.AUTHENTICATION_FAILED),
        (ke.TopicAuthorizationFailedError(), Failure.AUTHORIZATION_FAILED),
        (ke.GroupAuthorizationFailedError(), Failure.AUTHORIZATION_FAILED),
        (ke.UnknownTopicOrPartitionError(), Failure.TOPIC_MISSING),
        (ke.CommitFailedError(), Failure.COMMIT_FAILED),
        (ke.RebalanceInProgressError(), Failure.COMMIT_FAILED),
        (ke.KafkaConnectionError(), Failure.BROKER_UNREACHABLE),
        (ke.NotLeaderForPartitionError(), Failure.KAFKA_TRANSIENT),
        (ke.RequestTimedOutError(), Failure.KAFKA_TRANSIENT),
        (ke.MessageSizeTooLargeError(), Failure.RECORD_REJECTED),
        (ke.RecordListTooLargeError(), Failure.RECORD_REJECTED),
        (ke.InvalidRecordError(), Failure.RECORD_REJECTED),
        (ke.FencedInstanceIdError(), Failure.INSTANCE_FENCED),
        (ke.ProducerFencedError(), Failure.PRODUCER_FENCED),
        (ke.TransactionAbortedError(), Failure.TRANSACTION_ABORTED),
        (ValueError("not kafka"), Failure.INTERNAL),
    ],
)
def test_kafka_errors_are_translated(exc, failure):
    """kafka-python exceptions map to the Failure kinds the worker acts on."""
    assert failure_for_error(exc) is failure


def test_exceptions_carry_their_failure_and_exit_code():
    """Typed exceptions default to their failure kind; exit codes follow the table."""
    assert SettingsError("x").exit_code == EXIT_SETTINGS
    assert BundleLoadError("x").exit_code == EXIT_BUNDLE
    assert BrokerError("x", Failure.TOPIC_MISSING).exit_code == EXIT_KAFKA
    assert BrokerError("x", Failure.TOPIC_MISSING).failure is Failure.TOPIC_MISSING
    assert WorkerError("x").exit_code == 1
