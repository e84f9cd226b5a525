#!/bin/bash
# A rebalance held up by a SIGKILLed member, seen by the worker that stays: a worker reads a pattern; a
# second one joins and is SIGKILLed; a new matching topic right away makes the group rebalance while the
# dead member still counts (the broker waits for it up to its 45 s session). Reports how long the first
# worker held no partitions, and its coordinator errors (kafka-python: an OffsetFetch queued behind the
# held JoinGroup timed out after 30 s and took the connection down, which stretched the wait to 60 s).
#   BUNDLE=DIR [CLIENT=kafka-python|confluent] bash bench/outsider/held_join.sh
set -u
command -v kcat >/dev/null || { echo "kcat is needed (Debian: apt-get install kcat)"; exit 2; }
BUNDLE=${BUNDLE:?"set BUNDLE to a bundle folder"}
B=${BOOTSTRAP:-127.0.0.1:9092}; P=held-${CLIENT:-kafka-python}-$$; D=${OUT:-/tmp}/$P; mkdir -p "$D"; PORT=${PORT:-9351}
py() { .venv/bin/python -c "
from kafka.admin import KafkaAdminClient, NewTopic
a = KafkaAdminClient(bootstrap_servers='$B')
$1
a.close()"; }
topic() { py "a.create_topics([NewTopic('$P-$1', 3, 1), NewTopic('$P-$1.labels', 3, 1)])"
  seq 1 200 | sed "s/.*/{\"id\":\"$1-&\",\"text\":\"news item &\"}/" | kcat -b "$B" -t "$P-$1" -P; }
export TAGSTREAM_BOOTSTRAP_SERVERS=$B TAGSTREAM_INPUT_PATTERN="$P-[0-9]+" TAGSTREAM_GROUP_ID=g-$P TAGSTREAM_BUNDLE_PATH=$BUNDLE \
  TAGSTREAM_KAFKA_CLIENT=${CLIENT:-kafka-python} TAGSTREAM_DEVICE=cpu TAGSTREAM_METADATA_REFRESH_S=2
topic 0; topic 1
TAGSTREAM_METRICS_PORT=$PORT .venv/bin/tagstream-worker run > "$D/w1.log" 2>&1 & W1=$!
sleep 12
TAGSTREAM_METRICS_PORT=$((PORT + 1)) .venv/bin/tagstream-worker run > "$D/w2.log" 2>&1 & W2=$!
sleep 20
kill -KILL $W2; topic 2
sleep 75
.venv/bin/python - "$D/w1.log" <<'PY'
import json, sys
from datetime import datetime
revoked = gap = None
for line in open(sys.argv[1]):
    try:
        d = json.loads(line)
    except ValueError:
        continue
    at = datetime.fromisoformat(d.get("timestamp", "1970-01-01T00:00:00Z").replace("Z", "+00:00"))
    if d.get("event") == "partitions_revoked":
        revoked = at
    elif d.get("event") == "partitions_assigned" and revoked is not None:
        gap = (at - revoked).total_seconds()
print(f"after the kill, the worker that stayed held no partitions for {gap:.1f} s" if gap else "no rebalance seen")
PY
echo "its coordinator errors: $(grep -c 'OffsetFetchRequest' "$D/w1.log") OffsetFetch timed out," \
  "$(grep -c 'Marking the coordinator dead' "$D/w1.log") coordinator marked dead; error lines $(grep -c '"level": "error"' "$D/w1.log")"
kill -TERM $W1; wait $W1; echo "worker exit $?; logs: $D"
py "a.delete_topics([n for n in a.list_topics() if n.startswith('$P-')])"
