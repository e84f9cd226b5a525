# Shared by frozen_exit.sh and stop_as_broker_stops.sh (sourced, not run): one worker on a small topic of its
# own, 2,000 events from kcat, waited for until every result is out; then the scripts take the broker away.
# Run from the repository root with the development broker up (tagstream-worker kafka up).
#   $1: the topic's prefix; PORT: the worker's metrics port; the worker's extra settings exported beforehand
set -u
command -v kcat >/dev/null || { echo "kcat is needed (Debian: apt-get install kcat)"; exit 2; }
BUNDLE=${BUNDLE:?"set BUNDLE to a bundle folder, e.g. from tagstream-train train ... --preset tiny"}
[ -f "$BUNDLE/manifest.json" ] || { echo "BUNDLE=$BUNDLE has no manifest.json: pass the bundle folder (…/bundle)"; exit 2; }
CLIENT=${CLIENT:-kafka-python}; B=${BOOTSTRAP:-127.0.0.1:9092}; P=$1-$CLIENT-$$; D=${OUT:-/tmp}/$P; mkdir -p "$D"
JVM=$(.venv/bin/tagstream-worker kafka status | awk '/pid:/ {print $2}')
[ -n "$JVM" ] || { echo "no development broker: .venv/bin/tagstream-worker kafka up"; exit 2; }
py() { .venv/bin/python -c "
from kafka.admin import KafkaAdminClient, NewTopic
a = KafkaAdminClient(bootstrap_servers='$B')
$1
a.close()"; }
py "a.create_topics([NewTopic('$P', 3, 1), NewTopic('$P.labels', 3, 1), NewTopic('$P.dlq', 1, 1)])"
seq 1 2000 | sed "s/.*/k&\t{\"id\":\"&\",\"text\":\"market news item &\"}/" | kcat -b "$B" -t "$P" -P -K$'\t'
TAGSTREAM_BOOTSTRAP_SERVERS=$B TAGSTREAM_INPUT_TOPICS=$P TAGSTREAM_GROUP_ID=g-$P TAGSTREAM_BUNDLE_PATH=$BUNDLE \
  TAGSTREAM_DEVICE=cpu TAGSTREAM_KAFKA_CLIENT=$CLIENT TAGSTREAM_METRICS_PORT=$PORT \
  .venv/bin/tagstream-worker run > "$D/worker.log" 2>&1 & W=$!
out() { curl -s "localhost:$PORT/metrics" | awk '$1 ~ /^tagstream_events_out_total/ {s+=$2} END {printf "%d", s}'; }
for _ in $(seq 600); do
  kill -0 $W 2>/dev/null || { echo "the worker exited before its results: $D/worker.log"; tail -5 "$D/worker.log"; exit 1; }
  [ "$(out)" -ge 2000 ] 2>/dev/null && break; sleep 0.5
done
sleep 2  # the last commit

show_events() {  # $1: the log events to show (a regex of names), with the fields that say what a stop waited on
  grep -hE "\"event\": \"($1)\"" "$D/worker.log" | .venv/bin/python -c "
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    print(' ', d['event'], {k: v for k, v in d.items() if k in ('seconds', 'budget_s', 'down_s', 'broker_unreachable', 'error')})"
}
