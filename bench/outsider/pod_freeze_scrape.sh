#!/bin/bash
# A pod of 2 feeders on the development broker; its model process frozen (SIGSTOP), then one feeder
# too: how long the pod's /metrics, /healthz and /readyz take to answer (each process is asked at once,
# so about FETCH_TIMEOUT_S, 2 s, however many hang).
#   BUNDLE=DIR bash bench/outsider/pod_freeze_scrape.sh
set -u
command -v kcat >/dev/null || { echo "kcat is needed (Debian: apt-get install kcat)"; exit 2; }
BUNDLE=${BUNDLE:?"set BUNDLE to a bundle folder"}; PORT=${PORT:-9311}; D=$(mktemp -d)
T=outsider-scrape-$$
kcat -b 127.0.0.1:9092 -L >/dev/null || exit 1
.venv/bin/python - <<PY
from kafka.admin import KafkaAdminClient, NewTopic
a = KafkaAdminClient(bootstrap_servers="127.0.0.1:9092")
a.create_topics([NewTopic("$T", 4, 1), NewTopic("$T-out", 4, 1)])
PY
for i in $(seq 1 2000); do echo "{\"id\":\"$i\",\"text\":\"stocks rally as markets open higher number $i\"}"; done | kcat -b 127.0.0.1:9092 -t $T -P
TAGSTREAM_BOOTSTRAP_SERVERS=127.0.0.1:9092 TAGSTREAM_INPUT_TOPICS=$T TAGSTREAM_OUTPUT_TOPIC=$T-out \
TAGSTREAM_GROUP_ID=g-$T TAGSTREAM_BUNDLE_PATH=$BUNDLE TAGSTREAM_PROCESSES=2 TAGSTREAM_METRICS_PORT=$PORT \
TAGSTREAM_DEVICE=cpu .venv/bin/tagstream-worker run > "$D/pod.log" 2>&1 &
SUP=$!
for i in $(seq 1 120); do curl -sf localhost:$PORT/readyz >/dev/null && break; sleep 0.5; done
sleep 2
MODEL=$(pgrep -P $SUP -x tagstream-model); F1=$(pgrep -P $SUP -x tagstream-fdr1)
echo "pids: supervisor $SUP model $MODEL feeder-1 $F1"
t() { curl -s -o "$D/body" -w "%{http_code} %{time_total}" --max-time 60 "localhost:$PORT$1" | { read -r code secs; printf "%-9s %s %5.2f s  %s\n" "$1" "$code" "$secs" "$2"; }; }
for p in /metrics /healthz /readyz; do t $p "all running"; done
kill -STOP $MODEL
for p in /metrics /healthz /readyz; do t $p "model frozen"; done
kill -STOP $F1
for p in /metrics /healthz /readyz; do t $p "model + feeder-1 frozen"; done
echo "logs: $D"
kill -CONT $MODEL $F1
kill -TERM $SUP; wait $SUP; echo "pod exit $?"
