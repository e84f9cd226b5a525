#!/bin/bash
# The broker frozen (SIGSTOP, 25 s) just before a worker sends its first record to a topic it has not
# written to yet: 20,000 inputs, one of them hostile, a dead letter to a topic the worker's producer
# has no metadata for. kafka-python waits 15 s for that metadata; taken for a missing topic, the
# worker exited 4 (found by single.sh). Expected now: it waits for the broker, then finishes.
# DLQ_EXISTS=0 leaves the dead-letter topic to the broker's auto-creation: a confluent worker exited 4
# then (librdkafka gives a topic it has never seen 15 s, counted through the freeze) until the record
# was sent again (worker/kafka/confluent/again.py). Expected now: exit 0 with either client.
#   BUNDLE=DIR [CLIENT=kafka-python|confluent] [DLQ_EXISTS=1] [AHEAD=5000] bash bench/outsider/freeze_first_send.sh
# AHEAD: how many inputs after the freeze point the hostile one is (1,500 was too few once the worker
# grew faster: it sent the dead letter before the script froze the broker).
set -u
command -v kcat >/dev/null || { echo "kcat is needed (Debian: apt-get install kcat)"; exit 2; }
BUNDLE=${BUNDLE:?"set BUNDLE to a bundle folder"}
B=${BOOTSTRAP:-127.0.0.1:9092}; N=20000; AT=8000; T=outsider-freeze-${CLIENT:-kafka-python}-$$; D=${OUT:-/tmp}/$T; mkdir -p "$D"; PORT=9363
JVM=$(.venv/bin/tagstream-worker kafka status | awk '/pid:/ {print $2}')
[ -n "$JVM" ] || { echo "no development broker: tagstream-worker kafka up"; exit 2; }
.venv/bin/python -c "
from kafka.admin import KafkaAdminClient, NewTopic
KafkaAdminClient(bootstrap_servers='$B').create_topics([NewTopic('$T', 1, 1), NewTopic('$T.labels', 1, 1)]
  + ([NewTopic('$T.dlq', 1, 1)] if '${DLQ_EXISTS:-1}' == '1' else []))"
.venv/bin/python -c "
import json
for i in range($N):
    print('not json' if i == $AT + ${AHEAD:-5000} else json.dumps({'id': f'e{i}', 'text': f'news item {i} about markets and sport'}))" \
  | kcat -b "$B" -t "$T" -P
TAGSTREAM_BOOTSTRAP_SERVERS=$B TAGSTREAM_INPUT_TOPICS=$T TAGSTREAM_GROUP_ID=g-$T TAGSTREAM_BUNDLE_PATH=$BUNDLE TAGSTREAM_DEVICE=cpu \
  TAGSTREAM_KAFKA_CLIENT=${CLIENT:-kafka-python} TAGSTREAM_METRICS_PORT=$PORT .venv/bin/tagstream-worker run > "$D/worker.log" 2>&1 &
W=$!
metric() { curl -s --max-time 1 "localhost:$PORT/metrics" | awk -v m="$1" '$1 ~ "^"m"({|$)" {s+=$2} END {print s+0}'; }
until [ "$(metric tagstream_events_out_total)" -ge $AT ] 2>/dev/null; do kill -0 $W 2>/dev/null || break; sleep 0.05; done
kill -STOP "$JVM"; echo "broker frozen at $(metric tagstream_events_out_total) results"; sleep 25; kill -CONT "$JVM"; echo "broker resumed"
for _ in $(seq 1 60); do [ "$(metric tagstream_events_out_total)" -ge $((N - 1)) ] 2>/dev/null && break; kill -0 $W 2>/dev/null || break; sleep 1; done
echo "results $(metric tagstream_events_out_total) of $((N - 1)), dead letters $(metric tagstream_dead_letters_total) of 1;" \
  "waited for the broker: $(grep -c '"send_waits_for_the_broker"' "$D/worker.log")"
kill -TERM $W 2>/dev/null; wait $W; echo "worker exit $? (0 expected); logs: $D"
