#!/bin/bash
# A pod's model process SIGKILLed again and again at random moments while it labels (no input to blame: as the OOM
# killer or a node's memory pressure would), driven from outside: the input of single.sh; KILLS pods (6) each have
# their model process killed 0.2 to 1.5 s after the pod's first result, each pod exits 1 and the next one starts, as the
# orchestrator would restart it; a last pod runs until the broker says every input is committed. Each kill lands in
# model calls, whose inputs the feeders count as deaths and run alone in the next pod: none of them may be
# dead-lettered (deaths convict only twice alone: worker/source.py), and nothing may be lost.
#   BUNDLE=DIR [CLIENT=kafka-python|confluent] [GUARANTEE=at_least_once|exactly_once] [KILLS=6] [EVENTS=60000]
#   bash bench/outsider/model_kills.sh
source "$(dirname "$0")/common.sh" model-kills
export TAGSTREAM_PROCESSES=2 TAGSTREAM_PROCESSING_GUARANTEE=${GUARANTEE:-at_least_once}
KILLS=${KILLS:-6}
SCRAPED=0
for n in $(seq 1 "$KILLS"); do
  TAGSTREAM_METRICS_PORT=9351 .venv/bin/tagstream-worker run > "$D/pod$n.log" 2>&1 &
  POD=$!
  for _ in $(seq 1 300); do  # its first result: 60 s at most
    [ "$(metric 9351 tagstream_events_out_total 2>/dev/null)" -gt 0 ] 2>/dev/null && break
    kill -0 $POD 2>/dev/null || break; sleep 0.2
  done
  if [ "$(metric 9351 tagstream_events_out_total 2>/dev/null)" = 0 ]; then
    echo "pod $n labelled nothing in 60 s: the input is done; no more kills"; kill -TERM $POD; wait $POD; break
  fi
  sleep "$(.venv/bin/python -c 'import random; print(round(random.uniform(0.2, 1.5), 2))')"
  out=$(metric 9351 tagstream_events_out_total)
  MODEL=$(grep -o '"pid": [0-9]*, "name": "[^"]*", "version": "[^"]*", "event": "model_process_ready"' "$D/pod$n.log" \
    | grep -o '"pid": [0-9]*' | grep -o '[0-9]*' | head -1)
  kill -KILL "$MODEL"
  wait $POD; rc=$?
  SCRAPED=$((SCRAPED + out))
  deaths=$(grep '"model_call_given_up"' "$D/pod$n.log" | grep '"died": true' | grep -o '"inputs": [0-9]*' \
    | grep -o '[0-9]*' | paste -sd+ | bc)
  echo "pod $n: model process SIGKILLed (out $out), pod exit $rc; inputs counted as deaths: ${deaths:-0};" \
    "relayed to the other feeder: $(grep -c '"lost_call_inputs_heard"' "$D/pod$n.log");" \
    "dead-lettered after stalls: $(grep -c '"input_dead_lettered_after_stalls"' "$D/pod$n.log")"
done
TAGSTREAM_METRICS_PORT=9351 .venv/bin/tagstream-worker run > "$D/last.log" 2>&1 &
POD=$!
wait_committed
LAST_OUT=$(metric 9351 tagstream_events_out_total)
kill -TERM $POD; wait $POD; echo "last pod exit $? (out $LAST_OUT); inputs its hints named as died in:" \
  "$(grep '"stall_counts_read"' "$D/last.log" | grep -o '"died": [0-9]*' | grep -o '[0-9]*' | paste -sd+ | bc);" \
  "dead-lettered after stalls: $(grep -c '"input_dead_lettered_after_stalls"' "$D/last.log")"
check_output "$((SCRAPED + LAST_OUT))"
echo "dead letters after stalls in all pods: $(cat "$D"/*.log | grep -c '"input_dead_lettered_after_stalls"') (0 expected:" \
  "no input here hangs or kills the model)"
