#!/bin/bash
# A pod of 2 feeders killed whole (every process SIGKILLed at once, as the kubelet or the OOM killer
# ends a container) KILLS times in a row on the development broker, each restart on the same /dev/shm
# and /tmp (as Kubernetes keeps both across a container's restarts); then one pod that stops cleanly.
# Each pod (a group of its own) labels the same EVENTS inputs before it is killed, so its slots hold
# real batches. Prints what each start found and what is left in /dev/shm (files, and the memory
# they hold) and /tmp after each pod: one pod's worth at most, and nothing after the clean stop, if
# each start reclaimed what the pod before it left (worker/procs/shm_claim.py).
#   BUNDLE=DIR [KILLS=5] [EVENTS=3000] bash bench/outsider/pod_killed_whole.sh
set -u
BUNDLE=${BUNDLE:?"set BUNDLE to a bundle folder"}; KILLS=${KILLS:-5}; EVENTS=${EVENTS:-3000}; PORT=${PORT:-9321}
D=$(mktemp -d)
T=outsider-killed-whole-$$
.venv/bin/python - <<PY || exit 1
from kafka.admin import KafkaAdminClient, NewTopic
KafkaAdminClient(bootstrap_servers="127.0.0.1:9092").create_topics([NewTopic("$T", 4, 1)])
PY
for i in $(seq 1 "$EVENTS"); do echo "{\"id\":\"$i\",\"text\":\"stocks rally as markets open higher on earnings, trade and rates, number $i\"}"; done \
  | kcat -b 127.0.0.1:9092 -t "$T" -P
export TAGSTREAM_BOOTSTRAP_SERVERS=127.0.0.1:9092 TAGSTREAM_INPUT_TOPICS=$T \
  TAGSTREAM_BUNDLE_PATH=$BUNDLE TAGSTREAM_PROCESSES=2 TAGSTREAM_METRICS_PORT=$PORT TAGSTREAM_DEVICE=cpu \
  TAGSTREAM_LOG_FORMAT=json
leftovers() {
  local kb; kb=$(du -ck /dev/shm/tagstream-* 2>/dev/null | tail -1 | cut -f1)
  echo "/dev/shm: $(ls /dev/shm | grep -c '^tagstream-') tagstream files holding ${kb:-0} KiB; /tmp: $(ls /tmp | grep -c '^tagstream-') tagstream- folders"
}
echo "before: $(leftovers)"
for i in $(seq 1 $((KILLS + 1))); do
  TAGSTREAM_GROUP_ID=g-$T-$i .venv/bin/tagstream-worker run > "$D/pod$i.log" 2>&1 &
  SUP=$!
  until [ "$(curl -s "localhost:$PORT/metrics" | awk '$1 ~ /^tagstream_events_out_total/ {s+=$2} END {printf "%d", s}')" -ge "$EVENTS" ] 2>/dev/null; do
    kill -0 $SUP 2>/dev/null || { echo "pod $i exited: $(tail -3 "$D/pod$i.log")"; exit 1; }; sleep 0.5
  done
  RECLAIMED=$(grep -h '"shared_memory_reclaimed"' "$D/pod$i.log" | .venv/bin/python -c \
    "import json,sys; e=[json.loads(l) for l in sys.stdin]; print(f\"reclaimed {e[0]['pods']} pod(s), {e[0]['segments']} segments\" if e else 'reclaimed nothing')")
  if [ "$i" -le "$KILLS" ]; then
    kill -KILL $SUP $(pgrep -P $SUP); wait $SUP 2>/dev/null
    echo "pod $i: labelled $EVENTS, $RECLAIMED; killed whole -> $(leftovers)"
  else
    kill -TERM $SUP; wait $SUP; echo "pod $i: labelled $EVENTS, $RECLAIMED; SIGTERM, exit $? -> $(leftovers)"
  fi
done
echo "logs: $D"
