#!/bin/bash
# Input records deleted ahead of a running worker, as retention would delete them: the kcat input of common.sh,
# one worker process, and once it has labelled a tenth, it is stopped (SIGSTOP), every partition cut at two thirds of its records with
# DeleteRecords, sent by the other Kafka client than the worker's, and it resumes (SIGCONT). Once the broker says every input is
# committed: every offset of the input is either answered (a result or a dead letter, read back with kcat) or
# was deleted unread, and the worker's tagstream_inputs_deleted_unread_total equals the broker's count of the
# latter.
#   BUNDLE=DIR [CLIENT=kafka-python|confluent] [EVENTS=60000] [PROCESSES=1|2] bash bench/outsider/deleted.sh
source "$(dirname "$0")/common.sh" deleted
export TAGSTREAM_PROCESSES=${PROCESSES:-1}  # 2: a pod of 2 feeders and a model process, stopped and resumed together
TAGSTREAM_METRICS_PORT=9341 .venv/bin/tagstream-worker run > "$D/worker.log" 2>&1 &
W=$!
wait_for_out 9341 $((EVENTS / 10))
descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }
PIDS="$W $(descendants $W)"
kill -STOP $PIDS  # the worker behind, as a slow or stopped one would be, while the records are deleted
.venv/bin/python - > "$D/cuts.json" <<PY
import json
from kafka import KafkaConsumer, TopicPartition
ends = KafkaConsumer(bootstrap_servers="$B").end_offsets([TopicPartition("$T", p) for p in range(6)])
cuts = {tp.partition: end * 2 // 3 for tp, end in ends.items()}
if "$CLIENT" == "kafka-python":  # the other client than the worker's sends the deletion
    from confluent_kafka import TopicPartition as CkTP
    from confluent_kafka.admin import AdminClient
    admin = AdminClient({"bootstrap.servers": "$B"})  # kept: its futures die with it
    futures = admin.delete_records(
        [CkTP("$T", p, c) for p, c in cuts.items()], request_timeout=30, operation_timeout=30)
    for f in futures.values():
        f.result(30)
else:
    from kafka import KafkaAdminClient
    KafkaAdminClient(bootstrap_servers="$B").delete_records({TopicPartition("$T", p): c for p, c in cuts.items()})
print(json.dumps(cuts))
PY
kill -CONT $PIDS
echo "deleted below $(cat "$D/cuts.json") (partition: offset) while the worker was stopped at out $(metric 9341 tagstream_events_out_total)"
wait_committed
DELETED=$(metric 9341 tagstream_inputs_deleted_unread_total)
OUT=$(metric 9341 tagstream_events_out_total)
kill -TERM $W; wait $W; echo "worker exit $? (out $OUT, inputs_deleted_unread $DELETED)"
kcat -b "$B" -t "$T.labels" -C -e -q -f '%s\n' > "$D/out.jsonl"
kcat -b "$B" -t "$T.dlq" -C -e -q -f '%h\n' > "$D/dlq.headers"
.venv/bin/python - <<PY
import json, re
cuts = {int(p): c for p, c in json.load(open("$D/cuts.json")).items()}
answered = {(r["source"]["partition"], r["source"]["offset"]) for r in map(json.loads, open("$D/out.jsonl"))}
for h in open("$D/dlq.headers", errors="replace"):
    p, o = re.search(r"tagstream.source.partition=(\d+)", h), re.search(r"tagstream.source.offset=(\d+)", h)
    answered.add((int(p[1]), int(o[1])))
from kafka import KafkaConsumer, TopicPartition
ends = KafkaConsumer(bootstrap_servers="$B").end_offsets([TopicPartition("$T", p) for p in range(6)])
unanswered = {(tp.partition, o) for tp, end in ends.items() for o in range(end)} - answered
above_cut = sorted((p, o) for p, o in unanswered if o >= cuts[p])
print(f"inputs {sum(ends.values())}: answered {len(answered)}, unanswered {len(unanswered)}"
      f" (all below the cut: {not above_cut}); the worker counted {$DELETED} deleted unread")
print("AGREE" if not above_cut and len(unanswered) == $DELETED else f"DISAGREE {above_cut[:5]}")
PY
grep -h '"inputs_deleted_unread"' "$D/worker.log" | head -3
echo "logs: $D"
