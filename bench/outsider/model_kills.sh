#!/bin/bash
# A pod's model process SIGKILLed again and again at random moments while it labels (no input to blame: as the OOM
# killer or a node's memory pressure would), driven from outside: the input of single.sh; KILLS pods (6) each have
# their model process killed 0.2 to 1.5 s after the pod's first result, each pod exits 1 and the next one starts, as the
# orchestrator would restart it; a last pod runs until the broker says every input is committed. Each kill lands in
# model calls, whose inputs the feeders count as deaths and run alone in the next pod: none of them may be
# dead-lettered (deaths convict only twice alone: worker/source.py), and nothing may be lost.
# WHOLE=1: every process of the pod is SIGKILLed instead (the model process last), as a container's OOM kill or a
# liveness probe's SIGKILL ends it: the feeders count nothing, and the next pod's supervisor counts the calls from the
# call journal (worker/call_journal.py). No input may be dead-lettered then either.
#   BUNDLE=DIR [CLIENT=kafka-python|confluent] [GUARANTEE=at_least_once|exactly_once] [KILLS=6] [EVENTS=60000]
#   [WHOLE=1] bash bench/outsider/model_kills.sh
source "$(dirname "$0")/common.sh" model-kills
export TAGSTREAM_PROCESSES=2 TAGSTREAM_PROCESSING_GUARANTEE=${GUARANTEE:-at_least_once} TAGSTREAM_STATE_DIR=$D/state
KILLS=${KILLS:-6}; WHOLE=${WHOLE:-0}
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
  if [ "$WHOLE" = 1 ]; then
    # shellcheck disable=SC2046  # the pod's other processes, then the pod, then its model process
    kill -KILL $(pgrep -P $POD | grep -vx "$MODEL") $POD "$MODEL"; what="pod SIGKILLed whole"
  else
    kill -KILL "$MODEL"; what="model process SIGKILLed"
  fi
  wait $POD 2>/dev/null; rc=$?
  SCRAPED=$((SCRAPED + out))
  deaths=$(grep '"model_call_given_up"' "$D/pod$n.log" | grep '"died": true' | grep -o '"inputs": [0-9]*' \
    | grep -o '[0-9]*' | paste -sd+ | bc)
  echo "pod $n: $what (out $out), pod exit $rc; journal counts at its start: $(grep '"died_in_model_calls_counted"' \
    "$D/pod$n.log" | total inputs) inputs; inputs counted as deaths: ${deaths:-0};" \
    "relayed to the other feeder: $(grep -c '"lost_call_inputs_heard"' "$D/pod$n.log");" \
    "dead-lettered after stalls: $(grep -c '"input_dead_lettered_after_stalls"' "$D/pod$n.log")"
done
TAGSTREAM_METRICS_PORT=9351 .venv/bin/tagstream-worker run > "$D/last.log" 2>&1 &
POD=$!
wait_committed
LAST_OUT=$(metric 9351 tagstream_events_out_total)
kill -TERM $POD; wait $POD; echo "last pod exit $? (out $LAST_OUT); journal counts at its start:" \
  "$(grep '"died_in_model_calls_counted"' "$D/last.log" | total inputs) inputs; inputs its hints named as died in:" \
  "$(grep '"stall_counts_read"' "$D/last.log" | grep -o '"died": [0-9]*' | grep -o '[0-9]*' | paste -sd+ | bc);" \
  "dead-lettered after stalls: $(grep -c '"input_dead_lettered_after_stalls"' "$D/last.log")"
check_output "$((SCRAPED + LAST_OUT))"
echo "dead letters after stalls in all pods: $(cat "$D"/*.log | grep -c '"input_dead_lettered_after_stalls"') (0 expected:" \
  "no input here hangs or kills the model)"
