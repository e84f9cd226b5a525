# Shared by single.sh and pod.sh (sourced, not run): settings, input, metrics, and the final check.
# Run from the repository root with the development broker up (tagstream-worker kafka up).
set -u
command -v kcat >/dev/null || { echo "kcat is needed (Debian: apt-get install kcat)"; exit 2; }
CLIENT=${CLIENT:-kafka-python}
BUNDLE=${BUNDLE:?"set BUNDLE to a bundle folder, e.g. from tagstream-train train ... --preset tiny"}
[ -f "$BUNDLE/manifest.json" ] || { echo "$BUNDLE is not a bundle (no manifest.json): tagstream-train writes it to <--out>/bundle"; exit 2; }
DATASETS=${DATASETS:-../shared/datasets}
EVENTS=${EVENTS:-60000}
B=${BOOTSTRAP:-127.0.0.1:9092}
T=outsider-$1-$CLIENT-$$; G=g-$T; D=${OUT:-/tmp}/$T; IN=$D/in; mkdir -p "$IN"
JVM=$(.venv/bin/tagstream-worker kafka status | awk '/pid:/ {print $2}')
[ -n "$JVM" ] || { echo "no development broker: tagstream-worker kafka up"; exit 2; }
.venv/bin/python bench/outsider/make_input.py "$EVENTS" "$DATASETS" "$IN" || exit 2
if declare -F prepare_input >/dev/null; then prepare_input || exit 2; fi  # a script's own change to the input
.venv/bin/python - <<PY
from kafka.admin import KafkaAdminClient, NewTopic
KafkaAdminClient(bootstrap_servers="$B").create_topics([NewTopic("$T", 6, 1), NewTopic("$T.labels", 6, 1), NewTopic("$T.dlq", 1, 1)])
PY
# The input, from kcat only: hostile records before and after the valid ones, snappy-compressed batches.
head -6 "$IN/hostile.tsv" | kcat -b "$B" -t "$T" -P -K$'\t' -z snappy
kcat -b "$B" -t "$T" -P -K$'\t' -z snappy -X batch.num.messages=10000 < "$IN/valid.tsv"
tail -n +7 "$IN/hostile.tsv" | kcat -b "$B" -t "$T" -P -K$'\t' -X message.max.bytes=2000000
TOTAL=$(( $(wc -l < "$IN/valid.tsv") + $(wc -l < "$IN/hostile.tsv") ))
export TAGSTREAM_BOOTSTRAP_SERVERS=$B TAGSTREAM_INPUT_TOPICS=$T TAGSTREAM_GROUP_ID=$G TAGSTREAM_BUNDLE_PATH=$BUNDLE \
  TAGSTREAM_KAFKA_CLIENT=$CLIENT TAGSTREAM_DEVICE=cpu TAGSTREAM_MAX_PAYLOAD_BYTES=100000

total() {  # $1: a field of the JSON log lines on stdin: its sum (0 for none)
  grep -o "\"$1\": [0-9]*" | grep -o '[0-9]*$' | awk '{s += $1} END {print s + 0}'
}
metric() { curl -s "localhost:$1/metrics" | awk -v m="$2" '$1 ~ "^"m"({|$)" {s+=$2} END {printf "%d", s}'; }
wait_for_out() {  # $1: a worker's metrics port, $2: results it must reach; gives up after WAIT_S (600)
  local until=$((SECONDS + ${WAIT_S:-600}))
  until [ "$(metric "$1" tagstream_events_out_total)" -ge "$2" ] 2>/dev/null; do
    [ $SECONDS -lt $until ] || { echo "no $2 results on port $1 within ${WAIT_S:-600} s: see the logs in $D"; exit 1; }
    sleep 0.2
  done
}
committed() { .venv/bin/python - <<PY
from kafka import KafkaAdminClient
a = KafkaAdminClient(bootstrap_servers="$B")
print(sum(m.offset for tp, m in a.list_group_offsets("$G")["$G"].items() if tp.topic == "$T"))
a.close()
PY
}
freeze_broker() {  # the broker's JVM stopped for 15 s: connections stay open, nothing answers
  kill -STOP "$JVM"; echo "broker frozen at $(date -u +%T.%N | cut -c1-12) (out $(metric "$1" tagstream_events_out_total)); /readyz each second:"
  for _ in $(seq 1 15); do printf "%s " "$(curl -s -o /dev/null -w "%{http_code}" --max-time 2 "localhost:$1/readyz")"; sleep 1; done; echo
  kill -CONT "$JVM"; echo "broker resumed at $(date -u +%T.%N | cut -c1-12)"
}
wait_committed() {  # the broker's own word that every input was handled
  local c=0 i
  for i in $(seq 1 90); do c=$(committed 2>/dev/null); [ "$c" = "$TOTAL" ] && break; sleep 2; done
  echo "the group's committed offsets cover $c of $TOTAL inputs (waited $((i * 2)) s)"
  sleep 6  # a last scrape after the final metric updates
}
check_output() {  # $1: the events_out the workers reported, summed
  kcat -b "$B" -t "$T.labels" -C -e -q -f '%s\n' > "$D/out.jsonl"
  kcat -b "$B" -t "$T.dlq" -C -e -q -f '%h\n' > "$D/dlq.headers"
  .venv/bin/python - <<PY
import json, collections
ids = [json.loads(line)["id"] for line in open("$D/out.jsonl")]
seen = collections.Counter(ids); want = {f"e{i}" for i in range($EVENTS)}
print(f"output records {len(ids)}, distinct {len(seen)}, missing {len(want - set(seen))},"
      f" duplicates {len(ids) - len(seen)}, unexpected {len(set(seen) - want)}")
reasons = collections.Counter(h.split("tagstream.reason=")[1].split(",")[0]
                              for h in open("$D/dlq.headers", errors="replace") if "tagstream.reason=" in h)
print("dead letters", sum(reasons.values()), dict(reasons))
print(f"the broker holds {len(ids)} results; the workers' metrics say {$1}; delivered after the last scrape of a"
      f" SIGKILLed process: {len(ids) - $1}")
PY
  # CHECK_SCORES=N: the first N results set against the bundle run offline (labels, tags, windows, top score)
  if [ -n "${CHECK_SCORES:-}" ]; then .venv/bin/python -W ignore bench/outsider/check_scores.py "$D" "$BUNDLE" "$CHECK_SCORES"; fi
  echo "logs: $D"
}
