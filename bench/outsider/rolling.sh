#!/bin/bash
# A rolling restart of a 3-broker cluster under a running worker, input from kcat at a steady rate:
# each node in turn stopped (MODE=stop: SIGTERM, a controlled shutdown; MODE=kill: SIGKILL), started
# again, and the next one only once every partition has its 3 replicas in sync again. MODE=freeze
# stops each node's JVM (SIGSTOP) for FROZEN_S (30) instead: its connections stay open and nothing
# answers, until the cluster fences it and moves its partitions; then it is resumed. MODE=majority
# kills two of the three at once for DOWN_S (60): the controller quorum and min.insync.replicas are
# lost, nothing can be written or committed; then both are started again.
#   bash bench/outsider/cluster3.sh up
#   BUNDLE=DIR [CLIENT=kafka-python|confluent] [MODE=stop|kill|freeze|majority] [EVENTS=60000] [RATE=1000] bash bench/outsider/rolling.sh
#   bash bench/outsider/cluster3.sh down
set -u
command -v kcat >/dev/null || { echo "kcat is needed (Debian: apt-get install kcat)"; exit 2; }
CLIENT=${CLIENT:-kafka-python}; MODE=${MODE:-stop}; EVENTS=${EVENTS:-60000}; RATE=${RATE:-1000}
BUNDLE=${BUNDLE:?"set BUNDLE to a bundle folder"}
B=127.0.0.1:9292,127.0.0.1:9293,127.0.0.1:9294
T=outsider-rolling-$CLIENT-$MODE-$$; G=g-$T; D=${OUT:-/tmp}/$T; mkdir -p "$D"; PORT=9344
kcat -b "$B" -L -m 5 >/dev/null 2>&1 || { echo "no cluster: bash bench/outsider/cluster3.sh up"; exit 2; }
metric() { curl -s "localhost:$PORT/metrics" | awk -v m="$1" '$1 ~ "^"m"({|$)" {s+=$2} END {printf "%d", s}'; }
in_sync() { ! kcat -b "$B" -L 2>/dev/null | grep -E "partition .*isrs:" | grep -vq "isrs: [0-9],[0-9],[0-9]"; }
count() { kcat -b "$B" -t "$1" -C -e -q -f 'x\n' 2>/dev/null | wc -l; }
readyz() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "localhost:$PORT/readyz"; }
worker_state() { kill -0 "$W" 2>/dev/null && echo running || echo GONE; }
wait_in_sync() {  # until every partition has its 3 replicas in sync, 5 checks in a row; prints the seconds
  local ok=0 i; for i in $(seq 1 120); do if in_sync; then ok=$((ok + 1)); [ $ok -ge 5 ] && break; else ok=0; fi; sleep 1; done; echo "$i"; }
.venv/bin/python - <<PY || exit 2
from kafka.admin import KafkaAdminClient, NewTopic
KafkaAdminClient(bootstrap_servers="$B".split(",")).create_topics(
    [NewTopic("$T", 6, 3), NewTopic("$T.labels", 6, 3), NewTopic("$T.dlq", 1, 3)])
PY
export B T D
# kcat's producer is idempotent here, so the input holds each event once and every duplicate
# result is the worker's own.
.venv/bin/python - "$EVENTS" "$RATE" <<'PY' > /dev/null &
import json, subprocess, sys, time
events, rate = int(sys.argv[1]), float(sys.argv[2])
import os
kcat = subprocess.Popen(["kcat", "-b", os.environ["B"], "-t", os.environ["T"], "-P", "-K\t", "-X", "acks=all",
                         "-X", "enable.idempotence=true", "-X", "message.timeout.ms=300000"],
                        stdin=subprocess.PIPE, text=True, stderr=open(os.environ["D"] + "/kcat.err", "w"))
start = time.monotonic()
for i in range(events):
    if i % 100 == 0:
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        kcat.stdin.flush()
    kcat.stdin.write(f"k{i}\t" + json.dumps({"id": f"e{i}", "text": f"news item {i} about markets, sport and the weather"}) + "\n")
kcat.stdin.close()
sys.exit(kcat.wait())
PY
FEED=$!
export TAGSTREAM_BOOTSTRAP_SERVERS=$B TAGSTREAM_INPUT_TOPICS=$T TAGSTREAM_GROUP_ID=$G TAGSTREAM_BUNDLE_PATH=$BUNDLE \
  TAGSTREAM_KAFKA_CLIENT=$CLIENT TAGSTREAM_DEVICE=cpu TAGSTREAM_METRICS_PORT=$PORT
.venv/bin/tagstream-worker run > "$D/worker.log" 2>&1 &
W=$!
( while kill -0 $W 2>/dev/null; do echo "$(date +%s.%N) $(metric tagstream_events_out_total)"; sleep 0.5; done ) > "$D/out.txt" 2>/dev/null &
for _ in $(seq 1 240); do [ "$(metric tagstream_events_out_total)" -ge 2000 ] 2>/dev/null && break; sleep 0.5; done
[ "$(metric tagstream_events_out_total)" -ge 2000 ] 2>/dev/null || { echo "no results within 2 min: $D"; kill $W $FEED; exit 1; }
echo "$(date +%T) worker at $(metric tagstream_events_out_total) results; rolling restart ($MODE) starts"
if [ "$MODE" = majority ]; then  # two of three killed at once for DOWN_S (60): below min.insync.replicas
  bash bench/outsider/cluster3.sh kill 1; bash bench/outsider/cluster3.sh kill 2
  echo "$(date +%T) nodes 1 and 2 killed: results so far $(metric tagstream_events_out_total)"
  for s in $(seq 1 $((${DOWN_S:-60} / 10))); do sleep 10; echo "   down $((s * 10)) s: results $(metric tagstream_events_out_total), /readyz $(readyz), in flight $(metric tagstream_in_flight_events), worker $(worker_state)"; done
  bash bench/outsider/cluster3.sh start 1 & STARTING=$!
  bash bench/outsider/cluster3.sh start 2; wait $STARTING
  took=$(wait_in_sync)
  echo "$(date +%T) nodes back, replicas in sync ${took} s later: results $(metric tagstream_events_out_total), worker $(worker_state)"
else
  for n in 1 2 3; do
    bash bench/outsider/cluster3.sh "$MODE" $n
    echo "$(date +%T) node $n down ($MODE): results so far $(metric tagstream_events_out_total), /readyz $(readyz)"
    if [ "$MODE" = freeze ]; then
      for s in $(seq 1 $((${FROZEN_S:-30} / 5))); do sleep 5; echo "   frozen $((s * 5)) s: results $(metric tagstream_events_out_total), /readyz $(readyz)"; done
      bash bench/outsider/cluster3.sh thaw $n
    else
      sleep 8
      bash bench/outsider/cluster3.sh start $n
    fi
    took=$(wait_in_sync)
    echo "$(date +%T) node $n back, replicas in sync ${took} s later: results $(metric tagstream_events_out_total), worker $(worker_state)"
  done
fi
wait $FEED; echo "$(date +%T) input done (kcat exit $?)"
INPUT=$(count "$T")
for _ in $(seq 1 240); do [ "$(metric tagstream_events_out_total)" -ge "$INPUT" ] 2>/dev/null && break; kill -0 $W 2>/dev/null || break; sleep 1; done
sleep 8  # a commit interval and a lag refresh
echo "worker: events in $(metric tagstream_events_in_total), out $(metric tagstream_events_out_total), dead letters $(metric tagstream_dead_letters_total), lag $(metric tagstream_consumer_lag), in flight $(metric tagstream_in_flight_events)"
# The longest time results stood still while the worker had input left (sampled every 0.5 s).
.venv/bin/python - "$D/out.txt" "$INPUT" <<'PY'
import sys
rows = [(float(t), int(n)) for t, n in (line.split() for line in open(sys.argv[1])) if n.isdigit()]
longest, since, last = 0.0, None, None
for t, n in rows:
    if n == 0:  # the worker starting
        continue
    if n >= int(sys.argv[2]):
        break
    if last is None or n > last:
        since, last = t, n
    longest = max(longest, t - since)
print(f"longest time without a new result before the last: {longest:.1f} s")
PY
kill -TERM $W 2>/dev/null; wait $W; echo "worker exit $?"
COMMITTED=$(.venv/bin/python - <<PY
from kafka import KafkaAdminClient
a = KafkaAdminClient(bootstrap_servers="$B".split(","))
print(sum(m.offset for tp, m in a.list_group_offsets("$G")["$G"].items() if tp.topic == "$T"))
PY
)
kcat -b "$B" -t "$T.labels" -C -e -q -f '%s\n' | .venv/bin/python -c "
import collections, json, sys
ids = collections.Counter(json.loads(line)['id'] for line in sys.stdin)
want = {f'e{i}' for i in range($EVENTS)}
print(f'the broker: input $INPUT records, group committed $COMMITTED; results {sum(ids.values())},'
      f' missing {len(want - set(ids))}, duplicates {sum(ids.values()) - len(ids)}')"
grep -h '"level": "error"' "$D/worker.log" | grep -v '"logger": "kafka' | head -3 | cut -c1-300
echo "logs: $D"
