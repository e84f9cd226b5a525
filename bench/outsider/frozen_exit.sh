#!/bin/bash
# A broker frozen for good, seen from a worker: it must exit 4 once TAGSTREAM_BROKER_OUTAGE_S has passed,
# and not wait out its drain on requests the frozen broker will never answer. 2,000 events from kcat, all
# labeled and committed, then the broker's JVM stopped (SIGSTOP) until the worker exits. Reports the seconds
# from the freeze to /readyz's first 503 and to the exit, and what the exit waited on (consumer_closed,
# producer_closed); the outage is dated from the broker's last answer (broker_unreachable's down_s). Before the
# fixes: kafka-python's producer close waited 15 s for a metadata request, each client's consumer 5 s for
# its LeaveGroup and heartbeat, and with static membership the member's removal 15 s for an admin client
# that never connected.
#   BUNDLE=DIR [CLIENT=kafka-python|confluent] [STATIC=1] [OUTAGE_S=15] bash bench/outsider/frozen_exit.sh
set -u
command -v kcat >/dev/null || { echo "kcat is needed (Debian: apt-get install kcat)"; exit 2; }
BUNDLE=${BUNDLE:?"set BUNDLE to a bundle folder, e.g. from tagstream-train train ... --preset tiny"}
[ -f "$BUNDLE/manifest.json" ] || { echo "BUNDLE=$BUNDLE has no manifest.json: pass the bundle folder (…/bundle)"; exit 2; }
CLIENT=${CLIENT:-kafka-python}; B=${BOOTSTRAP:-127.0.0.1:9092}; P=frozen-exit-$CLIENT-$$; D=${OUT:-/tmp}/$P
PORT=${PORT:-9395}; mkdir -p "$D"
JVM=$(.venv/bin/tagstream-worker kafka status | awk '/pid:/ {print $2}')
[ -n "$JVM" ] || { echo "no development broker: .venv/bin/tagstream-worker kafka up"; exit 2; }
py() { .venv/bin/python -c "
from kafka.admin import KafkaAdminClient, NewTopic
a = KafkaAdminClient(bootstrap_servers='$B')
$1
a.close()"; }
py "a.create_topics([NewTopic('$P', 3, 1), NewTopic('$P.labels', 3, 1), NewTopic('$P.dlq', 1, 1)])"
seq 1 2000 | sed "s/.*/k&\t{\"id\":\"&\",\"text\":\"market news item &\"}/" | kcat -b "$B" -t "$P" -P -K$'\t'
[ -n "${STATIC:-}" ] && export TAGSTREAM_GROUP_INSTANCE_ID=$P-0  # with leave_group_on_stop (default)
TAGSTREAM_BOOTSTRAP_SERVERS=$B TAGSTREAM_INPUT_TOPICS=$P TAGSTREAM_GROUP_ID=g-$P TAGSTREAM_BUNDLE_PATH=$BUNDLE \
  TAGSTREAM_DEVICE=cpu TAGSTREAM_KAFKA_CLIENT=$CLIENT TAGSTREAM_BROKER_OUTAGE_S=${OUTAGE_S:-15} \
  TAGSTREAM_METRICS_PORT=$PORT \
  .venv/bin/tagstream-worker run > "$D/worker.log" 2>&1 & W=$!
out() { curl -s "localhost:$PORT/metrics" | awk '$1 ~ /^tagstream_events_out_total/ {s+=$2} END {printf "%d", s}'; }
for _ in $(seq 600); do
  kill -0 $W 2>/dev/null || { echo "the worker exited before its results: $D/worker.log"; tail -5 "$D/worker.log"; exit 1; }
  [ "$(out)" -ge 2000 ] 2>/dev/null && break; sleep 0.5
done
sleep 2  # the last commit
kill -STOP "$JVM"; F=$(date +%s.%N); echo "broker frozen at $(date +%T)"
since() { awk -v now="$(date +%s.%N)" -v f="$F" 'BEGIN { printf "%.1f", now - f }'; }
UNREADY=""  # /readyz sampled every 0.25 s: when it first answers 503
while kill -0 $W 2>/dev/null && [ "$(since | cut -d. -f1)" -lt 120 ]; do
  [ -z "$UNREADY" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' -m 0.2 "localhost:$PORT/readyz")" = 503 ] && UNREADY=$(since)
  sleep 0.25
done
echo "/readyz 503 from ${UNREADY:-never} s into the freeze"
if kill -0 $W 2>/dev/null; then
  echo "the worker still ran 120 s into the freeze"; kill -CONT "$JVM"; kill -TERM $W; wait $W; echo "exit after SIGTERM: $?"
else
  wait $W; CODE=$?; E=$(since); kill -CONT "$JVM"; echo "worker exit $CODE, $E s into the freeze"
fi
grep -hE '"event": "(broker_unreachable|consumer_closed|producer_closed|consumer_close_failed|leave_group_failed)"' "$D/worker.log" \
  | .venv/bin/python -c "
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    print(' ', d['event'], {k: v for k, v in d.items() if k in ('seconds', 'down_s', 'broker_unreachable', 'error')})"
py "a.delete_topics(['$P', '$P.labels', '$P.dlq'])"
echo "log: $D/worker.log"
