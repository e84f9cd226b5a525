#!/bin/bash
# An operator changing the input topic under a running worker, input from kcat:
#   1. partitions added (3 -> 6) and one record written to each new one: how long until they are labelled;
#   2. the topic deleted: it must stay deleted (no worker may create it again); created again by us (3
#      partitions) and 2,000 new records written: all labelled, and events_in = events_out = every record.
#   BUNDLE=DIR [CLIENT=kafka-python|confluent] bash bench/outsider/topic_changes.sh
set -u
command -v kcat >/dev/null || { echo "kcat is needed (Debian: apt-get install kcat)"; exit 2; }
CLIENT=${CLIENT:-kafka-python}
BUNDLE=${BUNDLE:?"set BUNDLE to a bundle folder"}
B=${BOOTSTRAP:-127.0.0.1:9092}
T=outsider-topics-$CLIENT-$$; G=g-$T; D=${OUT:-/tmp}/$T; mkdir -p "$D"; PORT=9342
admin() { .venv/bin/python -c "
from kafka.admin import KafkaAdminClient, NewPartitions, NewTopic
a = KafkaAdminClient(bootstrap_servers='$B')
$1
a.close()"; }
events() { .venv/bin/python -c "
import json
for i in range($1, $2): print(f'k{i}\t' + json.dumps({'id': f'e{i}', 'text': f'news item {i} about markets, sport and the weather'}))"; }
metric() { curl -s "localhost:$PORT/metrics" | awk -v m="$1" '$1 ~ "^"m"({|$)" {s+=$2} END {printf "%d", s}'; }
wait_out() { local i; for i in $(seq 1 "$2"); do [ "$(metric tagstream_events_out_total)" -ge "$1" ] 2>/dev/null && return 0; sleep 1; done; return 1; }

admin "a.create_topics([NewTopic('$T', 3, 1), NewTopic('$T.labels', 3, 1), NewTopic('$T.dlq', 1, 1)])" || exit 2
events 0 3000 | kcat -b "$B" -t "$T" -P -K$'\t'
export TAGSTREAM_BOOTSTRAP_SERVERS=$B TAGSTREAM_INPUT_TOPICS=$T TAGSTREAM_GROUP_ID=$G TAGSTREAM_BUNDLE_PATH=$BUNDLE \
  TAGSTREAM_KAFKA_CLIENT=$CLIENT TAGSTREAM_DEVICE=cpu TAGSTREAM_METRICS_PORT=$PORT
.venv/bin/tagstream-worker run > "$D/worker.log" 2>&1 &
W=$!
wait_out 3000 120 || { echo "the worker did not label the first 3000"; kill $W; exit 1; }

admin "a.create_partitions({'$T': NewPartitions(6)})"
added=$(date +%s)
for p in 3 4 5; do echo "{\"id\":\"new-p$p\",\"text\":\"on an added partition\"}" | kcat -b "$B" -t "$T" -P -p $p; done
wait_out 3003 400
echo "1. partitions added: their records labelled $(( $(date +%s) - added )) s later (events out $(metric tagstream_events_out_total))"

sleep 3  # a commit interval
admin "a.delete_topics(['$T'])"
back=no
for _ in $(seq 1 10); do sleep 1; admin "import sys; sys.exit(0 if '$T' in a.list_topics() else 1)" && back=yes; done
admin "a.create_topics([NewTopic('$T', 3, 1)])" 2> "$D/create.err" && created=ok || created="failed: $(tail -1 "$D/create.err")"
echo "2. topic deleted: created again by something else within 10 s: $back; our own create: $created"
events 3000 5000 | kcat -b "$B" -t "$T" -P -K$'\t'
wait_out 5003 120
sleep 6  # a last lag refresh and scrape
echo "   after 2,000 records on the new topic: events in $(metric tagstream_events_in_total), out $(metric tagstream_events_out_total)," \
  "dead letters $(metric tagstream_dead_letters_total), deleted unread $(metric tagstream_inputs_deleted_unread_total), lag $(metric tagstream_consumer_lag)"
kill -TERM $W; wait $W; echo "worker exit $?"
kcat -b "$B" -t "$T.labels" -C -e -q -f '%s\n' | .venv/bin/python -c "
import collections, json, sys
ids = collections.Counter(json.loads(line)['id'] for line in sys.stdin)
want = {f'e{i}' for i in range(5000)} | {f'new-p{p}' for p in (3, 4, 5)}
print(f'results {sum(ids.values())}, missing {len(want - set(ids))}, duplicates {sum(ids.values()) - len(ids)}')"
grep -h '"input_offsets_started_over"' "$D/worker.log" | head -3 | cut -c1-200
echo "logs: $D"
