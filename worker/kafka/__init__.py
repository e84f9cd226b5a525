"""The Kafka client seam: the pipeline talks to these interfaces, never to a client library.

    worker/kafka/base.py          the interfaces (ConsumerClient, ProducerClient), TopicPartition,
                                  the rebalance handler the source implements
    worker/kafka/kafkapython.py   kafka-python (the default): clients and its error translation
    worker/kafka/confluent/       confluent-kafka (librdkafka, the [confluent] extra): clients and its
                                  error table, a module each; several times less CPU per event
    worker/kafka/diagnose.py      why a connection failed, in words that name the setting to fix
    worker/kafka/topic_use.py     which topics a producer stopped writing to, so that it forgets them

``open_clients(settings)`` builds the consumer and producer of the client named by
``TAGSTREAM_KAFKA_CLIENT``. Everything a client library raises is translated at this boundary
into ``worker.errors.BrokerError`` carrying a ``Failure``; record-specific refusals (a record
too large for the producer or the topic, an invalid record) carry ``Failure.RECORD_REJECTED``
so the sink can handle that record alone.
"""

from worker.kafka.base import (
    ConsumerClient,
    DeliveryHandler,
    ProducerClient,
    RebalanceHandler,
    Record,
    TopicPartition,
    open_clients,
)

__all__ = [
    "ConsumerClient",
    "DeliveryHandler",
    "ProducerClient",
    "RebalanceHandler",
    "Record",
    "TopicPartition",
    "open_clients",
]
