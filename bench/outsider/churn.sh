#!/bin/bash
# A long-running worker under churn, input from kcat: does anything grow that should not?
#   A pattern subscription (TAGSTREAM_INPUT_PATTERN); every CYCLE_S a new input topic is created (3
#   partitions) and EVENTS_PER_TOPIC events written to it. A topic whose inputs the group has all
#   committed is checked (every id has a result) and, DELETE_AFTER_S later (the worker's
#   TAGSTREAM_OUTPUT_TOPIC_IDLE_S, 300 s by default, and a check), deleted with its result and
#   dead-letter topics, as an operator retiring a feed would. Every third cycle a second worker of the
#   same group starts or leaves (in turn SIGTERM and SIGKILL): a rebalance every minute or so.
#   The first worker's RSS, threads, open files (summed over its processes: a pod's too), /metrics
#   series, the broker's topics of this run and the tagstream files in /dev/shm are sampled every cycle; at the end: missing and duplicate results over every topic, and whether
#   any deleted topic came back while the worker ran (the dev broker creates topics on request).
#   BUNDLE=DIR [CLIENT=kafka-python|confluent] [DURATION_S=900] [CYCLE_S=15] [TAGSTREAM_OUTPUT_TOPIC_IDLE_S=300]
#     bash bench/outsider/churn.sh
set -u
command -v kcat >/dev/null || { echo "kcat is needed (Debian: apt-get install kcat)"; exit 2; }
CLIENT=${CLIENT:-kafka-python}
BUNDLE=${BUNDLE:?"set BUNDLE to a bundle folder, e.g. from tagstream-train train ... --preset tiny"}
DURATION_S=${DURATION_S:-900}
CYCLE_S=${CYCLE_S:-15}
EVENTS_PER_TOPIC=${EVENTS_PER_TOPIC:-3000}
IDLE_S=${TAGSTREAM_OUTPUT_TOPIC_IDLE_S:-300}
DELETE_AFTER_S=${DELETE_AFTER_S:-$(( ${IDLE_S%.*} + 35 ))}
B=${BOOTSTRAP:-127.0.0.1:9092}
P=churn-$CLIENT-$$; G=g-$P; D=${OUT:-/tmp}/$P; mkdir -p "$D"; PORT=${PORT:-9343}; PORT2=$((PORT + 1))
.venv/bin/tagstream-worker kafka status | grep -q "pid:" || { echo "no development broker: tagstream-worker kafka up"; exit 2; }

py() { .venv/bin/python -c "
from kafka.admin import KafkaAdminClient, NewTopic
a = KafkaAdminClient(bootstrap_servers='$B')
$1
a.close()"; }
events() { .venv/bin/python -c "
import json
for i in range($EVENTS_PER_TOPIC): print(f'k{i % 31}\t' + json.dumps({'id': f'$1-e{i}', 'text': f'news item {i} of topic $1 about markets, sport and the weather'}))"; }
metric() { curl -s --max-time 5 "localhost:$1/metrics" | awk -v m="$2" '$1 ~ "^"m"({|$)" {s+=$2} END {printf "%d", s}'; }
series() { curl -s --max-time 5 "localhost:$PORT/metrics" | grep -vc '^#'; }
proc() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null; }
# Summed over the worker's processes: itself and its children (a pod's model process, feeders and
# multiprocessing's resource tracker, with TAGSTREAM_PROCESSES > 1).
tree() { echo "$1" $(pgrep -P "$1"); }
tree_sum() { local t=0 p v; for p in $(tree "$1"); do v=$(proc "$p" "$2"); t=$((t + ${v:-0})); done; echo $t; }
tree_fds() { local t=0 p; for p in $(tree "$1"); do t=$((t + $(ls "/proc/$p/fd" 2>/dev/null | wc -l))); done; echo $t; }
# Every input of topic $1 answered? The group's committed offsets against the end offsets.
committed_all() { py "
import sys
from kafka import KafkaConsumer, TopicPartition
c = KafkaConsumer(bootstrap_servers='$B')
tps = [TopicPartition('$1', p) for p in c.partitions_for_topic('$1') or ()]
ends = c.end_offsets(tps); c.close()
done = a.list_group_offsets('$G')['$G']
sys.exit(0 if tps and all(done.get(tp) and done[tp].offset >= ends[tp] for tp in tps) else 1)"; }
# Missing and duplicate results of topic $1 (read back with kcat).
account() { kcat -b "$B" -t "$1.labels" -C -e -q -f '%s\n' | .venv/bin/python -c "
import collections, json, sys
ids = collections.Counter(json.loads(line)['id'] for line in sys.stdin)
want = {f'$1-e{i}' for i in range($EVENTS_PER_TOPIC)}
print(len(want - set(ids)), sum(ids.values()) - len(ids))"; }

export TAGSTREAM_BOOTSTRAP_SERVERS=$B TAGSTREAM_INPUT_PATTERN="$P-[0-9]+" TAGSTREAM_GROUP_ID=$G \
  TAGSTREAM_BUNDLE_PATH=$BUNDLE TAGSTREAM_KAFKA_CLIENT=$CLIENT TAGSTREAM_DEVICE=cpu TAGSTREAM_METADATA_REFRESH_S=5 \
  TAGSTREAM_OUTPUT_TOPIC_IDLE_S=$IDLE_S
new_topic() { py "a.create_topics([NewTopic('$P-$1', 3, 1), NewTopic('$P-$1.labels', 3, 1), NewTopic('$P-$1.dlq', 1, 1)])" \
  && events "$P-$1" | kcat -b "$B" -t "$P-$1" -P -K$'\t'; }
new_topic 0
TAGSTREAM_METRICS_PORT=$PORT .venv/bin/tagstream-worker run > "$D/worker.log" 2>&1 &
W=$!
W2=; second=0; kills=0
missing=0; dups=0; checked=0; oldest=0; next=1; deleted=(); declare -A done_at
echo "| s | topics made | checked & deleted | 2nd worker | RSS MB | threads | fds | /metrics series | broker topics of this run | /dev/shm files | events out |"
echo "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt "$DURATION_S" ]; do
  sleep "$CYCLE_S"
  kill -0 $W 2>/dev/null || { echo "the worker exited: $(tail -3 "$D/worker.log")"; break; }
  new_topic $next; next=$((next + 1))
  # Check and delete every topic the group finished DELETE_AFTER_S ago, oldest first.
  for ((t = oldest; t < next - 1; t++)); do
    [ -n "${done_at[$t]:-}" ] && continue
    committed_all "$P-$t" && done_at[$t]=$(date +%s) || break
  done
  while [ -n "${done_at[$oldest]:-}" ] && [ $(( $(date +%s) - done_at[$oldest] )) -ge "$DELETE_AFTER_S" ]; do
    read -r m d < <(account "$P-$oldest")
    missing=$((missing + m)); dups=$((dups + d)); checked=$((checked + 1))
    py "a.delete_topics(['$P-$oldest', '$P-$oldest.labels', '$P-$oldest.dlq'])"
    deleted+=("$P-$oldest"); oldest=$((oldest + 1))
  done
  if [ $((next % 3)) -eq 0 ]; then
    if [ -z "$W2" ]; then
      TAGSTREAM_METRICS_PORT=$PORT2 .venv/bin/tagstream-worker run >> "$D/worker2.log" 2>&1 & W2=$!; second="joined"
    else
      if [ $((kills % 2)) -eq 0 ]; then kill -TERM $W2; second="left (TERM)"; else kill -KILL $W2; second="killed"; fi
      wait $W2 2>/dev/null; W2=; kills=$((kills + 1))
    fi
  else second=-; fi
  ours=$(kcat -b "$B" -L -J 2>/dev/null | .venv/bin/python -c "import json,sys; print(sum(t['topic'].startswith('$P-') for t in json.load(sys.stdin)['topics']))")
  echo "| $(( $(date +%s) - start )) | $next | $checked | $second | $(( $(tree_sum $W VmRSS) / 1024 )) | $(tree_sum $W Threads) |" \
    "$(tree_fds $W) | $(series) | $ours | $(ls /dev/shm | grep -c '^tagstream-') | $(metric $PORT tagstream_events_out_total) |"
done
[ -n "$W2" ] && { kill -TERM $W2; wait $W2 2>/dev/null; }
# Let the last topics finish, then check them too.
for _ in $(seq 1 60); do committed_all "$P-$((next - 1))" && break; sleep 2; done
while [ $oldest -lt $next ] && committed_all "$P-$oldest"; do
  read -r m d < <(account "$P-$oldest"); missing=$((missing + m)); dups=$((dups + d)); checked=$((checked + 1)); oldest=$((oldest + 1))
done
sleep 15  # three metadata refreshes of the worker, still running, after the last deletion
back=$(kcat -b "$B" -L -J 2>/dev/null | .venv/bin/python -c "
import json, sys
gone = set(sys.argv[1:]); names = {t['topic'] for t in json.load(sys.stdin)['topics']}
print(sorted(n for n in names if n in gone or n.rsplit('.', 1)[0] in gone))" "${deleted[@]}")
kill -TERM $W; wait $W; rc=$?
echo
echo "topics: $next made, $checked checked ($((checked * EVENTS_PER_TOPIC)) events): missing $missing, duplicates $dups"
echo "${#deleted[@]} deleted ${DELETE_AFTER_S} s after the group finished them; of their topics, these exist again: $back"
echo "worker exit $rc; fatal lines: $(grep -c '"level": "error"' "$D/worker.log")"
echo "logs: $D"
py "a.delete_topics([n for n in a.list_topics() if n.startswith('$P-')])" 2>/dev/null
