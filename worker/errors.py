"""Every way the worker can fail, what it does about it, and the exceptions that carry it.

One table, ``Failure``, maps each failure kind to its action and to the label it is counted
under in ``tagstream_failures_total{kind=...}`` (dead letters are also counted in
``tagstream_dead_letters_total{reason=...}`` under the same label). Nothing else in the worker
decides what a failure means: code that detects one names the ``Failure`` and looks up its
``action``.

    Action.DEAD_LETTER  the input cannot be classified: publish it to the dead-letter topic
                        (original bytes, key, and reason headers), then commit past it
    Action.RETRY        transient: log, count, try again (nothing is committed meanwhile)
    Action.SKIP         even a bounded dead-letter copy could not be delivered: count it in
                        tagstream_records_skipped_total, log it with its sha256, commit past it
    Action.REFUSE       keep serving with what we have (a new bundle failed verification)
    Action.EXIT         cannot continue safely: stop without committing anything unacknowledged
                        and exit non-zero so the orchestrator restarts the pod

Exceptions (third-party errors are translated at the boundary, ``raise ... from exc``)::

    WorkerError                 base: carries a Failure; its exit code comes from the table
    ├── SettingsError           a setting is invalid (one line naming it and the fix)
    ├── BrokerError             Kafka unreachable, authentication or authorization refused,
    │                           a topic missing, a result not delivered (client libraries'
    │                           exceptions are translated in worker/kafka/<client>.py)
    ├── BundleLoadError         the model bundle is missing, tampered with, or does not fit
    └── InferenceError          the model raised on a batch
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(enum.Enum):
    DEAD_LETTER = "dead_letter"
    RETRY = "retry"
    SKIP = "skip"
    REFUSE = "refuse"
    EXIT = "exit"


# Exit codes (documented in the README): 0 clean stop, 1 internal error, 2 settings,
# 3 model bundle, 4 Kafka (unreachable, refused, missing topic, undeliverable results).
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_SETTINGS = 2
EXIT_BUNDLE = 3
EXIT_KAFKA = 4


@dataclass(frozen=True)
class FailureSpec:
    label: str  # metric label and dead-letter reason; stable, snake_case
    action: Action
    exit_code: int  # only meaningful for Action.EXIT
    meaning: str  # one line for the README and the logs


class Failure(enum.Enum):
    """The single table of failure kinds. Values are ``FailureSpec``s; see the module docstring."""

    # -- bad input: never stops the worker, never lost (dead-letter topic) -------------------
    PAYLOAD_TOO_LARGE = FailureSpec(
        "payload_too_large", Action.DEAD_LETTER, 0, "the value is over TAGSTREAM_MAX_PAYLOAD_BYTES"
    )
    EMPTY_PAYLOAD = FailureSpec("empty_payload", Action.DEAD_LETTER, 0, "the record has no value (null or zero bytes)")
    INVALID_UTF8 = FailureSpec("invalid_utf8", Action.DEAD_LETTER, 0, "the value is not valid UTF-8")
    INVALID_JSON = FailureSpec("invalid_json", Action.DEAD_LETTER, 0, "input_format=json but the value is not JSON")
    NOT_AN_OBJECT = FailureSpec("not_an_object", Action.DEAD_LETTER, 0, "the JSON value is not an object")
    MISSING_TEXT = FailureSpec("missing_text", Action.DEAD_LETTER, 0, "the JSON object has no TAGSTREAM_TEXT_FIELD")
    TEXT_NOT_STRING = FailureSpec("text_not_string", Action.DEAD_LETTER, 0, "the text field is not a string")
    EMPTY_TEXT = FailureSpec("empty_text", Action.DEAD_LETTER, 0, "the text is empty or only whitespace")
    RECORD_REJECTED = FailureSpec(
        "record_rejected", Action.DEAD_LETTER, 0,
        "the producer or the broker refused this input's result record (too large for the producer's"
        " max_request_size or the topic's max.message.bytes, or invalid): the input is dead-lettered",
    )
    INVALID_HEADER = FailureSpec(
        "invalid_header", Action.DEAD_LETTER, 0,
        "a header key is not UTF-8 (other clients can send such keys): dead-lettered with its key and value,"
        " the undecodable headers left out",
    )
    UNREADABLE_RECORD = FailureSpec(
        "unreadable_record", Action.DEAD_LETTER, 0,
        "the Kafka client could not decode the record at all (a corrupt batch): its location is"
        " dead-lettered without its bytes, and reading goes on after it",
    )
    INFERENCE_FAILED = FailureSpec(
        "inference_failed", Action.DEAD_LETTER, 0,
        "the model, or its tokenizer, raised on this input alone (after its batch, or its poll's texts,"
        " failed and were retried one by one)",
    )
    STALLED_TWICE = FailureSpec(
        "stalled_twice", Action.DEAD_LETTER, 0,
        "a model call hung (TAGSTREAM_MODEL_STALL_S) on this input twice, the second time on it alone:"
        " it is not run again, so the worker stops restarting on it",
    )
    # -- transient: retried, nothing committed meanwhile --------------------------------------
    BATCH_FAILED = FailureSpec(
        "batch_failed", Action.RETRY, 0, "the model raised on a batch; it is retried one input at a time"
    )
    COMMIT_FAILED = FailureSpec(
        "commit_failed", Action.RETRY, 0,
        "an offset commit was rejected (usually a rebalance); the next commit covers it",
    )
    KAFKA_TRANSIENT = FailureSpec(
        "kafka_transient", Action.RETRY, 0, "a retriable Kafka error (leader change, timeout)"
    )
    TRANSACTION_ABORTED = FailureSpec(
        "transaction_aborted", Action.RETRY, 0,
        "exactly-once: a transaction was aborted (revocation or a failed commit); its inputs are read"
        " again from the last committed transaction",
    )
    BROKER_DOWN = FailureSpec(
        "broker_down", Action.RETRY, 0,
        "no broker answers (commits and heartbeats fail): not ready; fatal after TAGSTREAM_BROKER_OUTAGE_S",
    )
    # -- skipped past: counted in tagstream_records_skipped_total ----------------------------
    DEAD_LETTER_REJECTED = FailureSpec(
        "dead_letter_rejected", Action.SKIP, 0,
        "even the bounded dead-letter copy of an input was refused: logged with its topic, partition,"
        " offset, size and sha256, and committed past so it cannot block its partition",
    )
    # -- keep serving --------------------------------------------------------------------------
    RELOAD_REFUSED = FailureSpec(
        "reload_refused", Action.REFUSE, 0,
        "a new bundle at TAGSTREAM_BUNDLE_PATH failed verification; the loaded one keeps serving",
    )
    # -- fatal: exit non-zero, nothing unacknowledged is committed -----------------------------
    SETTINGS_INVALID = FailureSpec("settings_invalid", Action.EXIT, EXIT_SETTINGS, "a setting is invalid")
    BUNDLE_INVALID = FailureSpec(
        "bundle_invalid", Action.EXIT, EXIT_BUNDLE, "the bundle at start-up is missing or fails verification"
    )
    BROKER_UNREACHABLE = FailureSpec(
        "broker_unreachable", Action.EXIT, EXIT_KAFKA, "no broker answered at TAGSTREAM_BOOTSTRAP_SERVERS"
    )
    AUTHENTICATION_FAILED = FailureSpec(
        "authentication_failed", Action.EXIT, EXIT_KAFKA, "the broker refused the SASL/SSL credentials"
    )
    AUTHORIZATION_FAILED = FailureSpec(
        "authorization_failed", Action.EXIT, EXIT_KAFKA,
        "the broker's ACLs refuse a topic or the consumer group to these credentials",
    )
    TOPIC_MISSING = FailureSpec(
        "topic_missing", Action.EXIT, EXIT_KAFKA,
        "an input topic does not exist (the worker never creates inputs), or an output topic does not"
        " exist and the broker does not create topics on first use",
    )
    DELIVERY_FAILED = FailureSpec(
        "delivery_failed", Action.EXIT, EXIT_KAFKA,
        "the broker did not acknowledge a result or dead-letter record; its input is redelivered after restart",
    )
    BROKER_OUTAGE = FailureSpec(
        "broker_outage", Action.EXIT, EXIT_KAFKA,
        "no broker answered for longer than TAGSTREAM_BROKER_OUTAGE_S: exit so the orchestrator restarts us",
    )
    FINAL_COMMIT_FAILED = FailureSpec(
        "final_commit_failed", Action.EXIT, EXIT_KAFKA,
        "at shutdown the offsets of delivered results could not be committed: those inputs are"
        " redelivered (duplicates) after the restart",
    )
    INSTANCE_FENCED = FailureSpec(
        "instance_fenced", Action.EXIT, EXIT_KAFKA,
        "another worker joined the group with the same TAGSTREAM_GROUP_INSTANCE_ID; or (confluent) this"
        " worker's own session expired in a broker outage and librdkafka sent its stale commit (the message says so)",
    )
    PRODUCER_FENCED = FailureSpec(
        "producer_fenced", Action.EXIT, EXIT_KAFKA,
        "exactly-once: a newer worker with the same transactional id took over (this one is a zombie)",
    )
    KAFKA_FATAL = FailureSpec("kafka_fatal", Action.EXIT, EXIT_KAFKA, "a non-retriable Kafka client error")
    MODEL_FAILED = FailureSpec(
        "model_failed", Action.EXIT, EXIT_BUNDLE,
        "the model fails on every input of a batch, each alone too: the model or the device is broken",
    )
    MODEL_PROCESS_LOST = FailureSpec(
        "model_process_lost", Action.EXIT, EXIT_INTERNAL,
        "TAGSTREAM_PROCESSES > 1: the pod's model process died or stopped answering; the feeders drain what"
        " was acknowledged and the pod exits non-zero so the orchestrator restarts it",
    )
    MODEL_STALLED = FailureSpec(
        "model_stalled", Action.EXIT, EXIT_INTERNAL,
        "a model call ran longer than TAGSTREAM_MODEL_STALL_S (a hung device, a model process that stopped"
        " answering): the worker exits non-zero so the orchestrator restarts it",
    )
    INTERNAL = FailureSpec("internal", Action.EXIT, EXIT_INTERNAL, "a bug: an unexpected exception in a stage")

    @property
    def label(self) -> str:
        return self.value.label

    @property
    def action(self) -> Action:
        return self.value.action

    @property
    def exit_code(self) -> int:
        return self.value.exit_code

    @property
    def meaning(self) -> str:
        return self.value.meaning


DEAD_LETTER_REASONS = tuple(f for f in Failure if f.action is Action.DEAD_LETTER)
SKIP_REASONS = tuple(f for f in Failure if f.action is Action.SKIP)


class WorkerError(Exception):
    """Base of the worker's errors; ``failure`` says what it means and what to do."""

    failure: Failure = Failure.INTERNAL

    def __init__(self, message: str, failure: Failure | None = None) -> None:
        super().__init__(message)
        if failure is not None:
            self.failure = failure

    @property
    def exit_code(self) -> int:
        return self.failure.exit_code or EXIT_INTERNAL


class SettingsError(WorkerError):
    """A setting is invalid; the message names the environment variable and the fix."""

    failure = Failure.SETTINGS_INVALID


class BrokerError(WorkerError):
    """Kafka refused, could not be reached, or did not acknowledge."""

    failure = Failure.KAFKA_FATAL


class BundleLoadError(WorkerError):
    """The model bundle cannot be used."""

    failure = Failure.BUNDLE_INVALID


class InferenceError(WorkerError):
    """The model raised while classifying a batch."""

    failure = Failure.BATCH_FAILED


class ModelCallStalled(WorkerError):
    """The pod's model process gave up the model call this batch was in (TAGSTREAM_MODEL_STALL_S),
    or was lost during it (killed as unresponsive, or died): the feeder counts its inputs as
    stalled, as one process does (worker/model_stage.py). ``died``: the model process died in the
    call (a crash, the OOM killer, a kill from outside) rather than hanging in it past the limit;
    a death may come from outside the worker, so it convicts an input later than a hang does
    (worker/source.py, _after_stalls)."""

    failure = Failure.MODEL_STALLED

    def __init__(self, message: str, *, died: bool = False) -> None:
        super().__init__(message)
        self.died = died
