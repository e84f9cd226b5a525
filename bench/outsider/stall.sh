#!/bin/bash
# A model call that never returns, driven from outside: kcat input (EVENTS keyed AG News events and 12 hostile
# records), one of them holding the stalling null bundle's [STALL] token (a test fixture: tests/worker_support.py).
# The first worker (the stalling bundle, TAGSTREAM_MODEL_STALL_S=3) must exit 1 within a second or two of
# noticing the hung call, having given its batch up; a successor (the null bundle) labels the rest. The output
# is read back with kcat (read_committed) and compared with the input; the group's offsets with the input count.
#   BUNDLE=DIR [CLIENT=kafka-python|confluent] [GUARANTEE=at_least_once|exactly_once] [PROCESSES=1] [EVENTS=60000]
#   [PILL=1] bash bench/outsider/stall.sh
# KILL_MODEL=1 (with PROCESSES > 1): the first pod never gives the call up itself (a stall limit of 300 s); once its
# /healthz shows the model call hung for 1 s, the model process is SIGKILLed, as the OOM killer or a crash would.
# KILL_MODEL=every: every pod's model process is killed so, successors' too: with two model streams (a CPU) a death
# counts both streams' calls, and an innocent input counted so must not be counted again when the pill kills the
# process while it runs alone (worker/call_gate.py).
# KILL_MODEL=stop: the model process is frozen (SIGSTOP) half a second into the hung call, before it can time the
# call itself, so the supervisor kills it once it has been silent for the limit (3 s). Either way the feeders must
# count the call's inputs all the same.
# KUBELET=1 (with KILL_MODEL=stop): the first pod's stall limit is 60 s, and a stand-in for the kubelet probes its
# /healthz every 10 s and SIGKILLs the whole pod after three failures in a row, as a liveness probe would: a pod killed
# whole counts nothing, so the pod must stay live until its supervisor has killed the silent model process itself.
# KILL_WORKER=1 (one process): the first worker never gives the call up itself (300 s); once its /healthz shows the
# call hung for 1 s, the worker is SIGKILLed, as the OOM killer or a liveness probe would. KILL_WORKER=every: every
# worker with the stalling bundle is killed so, successors too. The next worker must count the call's inputs from
# its journal (TAGSTREAM_STATE_DIR, here in the run's folder; worker/call_journal.py). Static membership, so that
# a successor gets the partitions at once, not after the killed member's session times out.
# KILL_POD=1|every (with PROCESSES > 1): as KILL_WORKER, for a pod: once its /healthz shows the model call hung for
# 1 s, every process of the pod is SIGKILLed (the feeders and the supervisor first, so that none counts the call), as
# a container's OOM kill (cgroup v2: every process in it) or a liveness probe's SIGKILL ends it. The next pod's
# supervisor must count the call's inputs from the journal the model process wrote (worker/call_journal.py).
# PILL=1: every worker hangs on that input, as on an input that hangs the device. Successors are started
# (stalling bundle) until one does not exit 1, at most 4; at-least-once, the second runs the inputs of the
# given-up call alone and the third dead-letters the one that hung again (stalled_twice).
# BUNDLE gives the null bundles their tokenizer.
prepare_input() {  # the [STALL] record a third of the way into the valid ones
  local at=$(( $(wc -l < "$IN/valid.tsv") / 3 ))
  { head -n $at "$IN/valid.tsv"; printf 'stall\t{"id": "stall", "text": "a news item that hangs the model [STALL]"}\n'
    tail -n +$((at + 1)) "$IN/valid.tsv"; } > "$IN/with_stall.tsv" && mv "$IN/with_stall.tsv" "$IN/valid.tsv"
}
source "$(dirname "$0")/common.sh" stall
export TAGSTREAM_PROCESSES=${PROCESSES:-1} TAGSTREAM_PROCESSING_GUARANTEE=${GUARANTEE:-at_least_once}
PYTHONPATH=tests .venv/bin/python -c "
from pathlib import Path
from worker_support import make_null_bundle
for name, stalling in (('stalling', True), ('null', False)):
    make_null_bundle(Path('$D') / name, tokenizer_from=Path('$BUNDLE'), stalling=stalling)" 2>/dev/null || exit 2
export TAGSTREAM_STATE_DIR=$D/state
KILL_POD=${KILL_POD:-0}; [ "$KILL_POD" != 0 ] && KILL_WORKER=$KILL_POD  # the same steps; kill_when_hung kills the pod whole
[ "${KILL_WORKER:-0}" != 0 ] && export TAGSTREAM_GROUP_INSTANCE_ID=w-$$
FIRST_STALL_S=3; [ "${KILL_MODEL:-0}" = 1 ] || [ "${KILL_MODEL:-0}" = every ] || [ "${KILL_WORKER:-0}" != 0 ] && FIRST_STALL_S=300
LATER_STALL_S=3; [ "${KILL_WORKER:-0}" = every ] || [ "${KILL_MODEL:-0}" = every ] && LATER_STALL_S=300
KILL_AT_S=1; [ "${KILL_MODEL:-0}" = stop ] && KILL_AT_S=0.5
[ "${KUBELET:-0}" = 1 ] && FIRST_STALL_S=60
kubelet() {  # $1: a metrics port, $2: the pod's pid: SIGKILL it whole after 3 failed /healthz probes 10 s apart
  local failed=0 code
  while kill -0 "$2" 2>/dev/null; do
    code=$(curl -s -o /dev/null -w "%{http_code}" --max-time 3 "localhost:$1/healthz")
    if [ "$code" = 200 ]; then failed=0; else failed=$((failed + 1)); fi
    if [ $failed -ge 3 ]; then
      pkill -KILL -P "$2"; kill -KILL "$2"; echo "kubelet: 3 failed liveness probes in a row: the pod SIGKILLed whole"; return
    fi
    sleep 10
  done
  echo "kubelet: the pod exited by itself before 3 failed liveness probes"
}
hung_for() {  # $1: a metrics port, $2: the worker's pid; waits until /healthz shows a model call running KILL_AT_S
  # (a pod: its model process's), or the worker is gone
  .venv/bin/python - "$1" "$KILL_AT_S" "$2" <<'PY'
import json, os, sys, time, urllib.error, urllib.request
call_s = 0
for _ in range(3000):
    try:
        os.kill(int(sys.argv[3]), 0)
    except ProcessLookupError:
        break
    try:
        with urllib.request.urlopen(f"http://localhost:{sys.argv[1]}/healthz", timeout=2) as response:
            body = response.read()
    except urllib.error.HTTPError as failing:
        body = failing.read()
    except OSError:
        body = b"{}"
    health = json.loads(body or b"{}")
    call_s = health.get("model_process", {}).get("model_call_s", health.get("model_call_s", 0))
    if call_s >= float(sys.argv[2]):
        break
    time.sleep(0.1)
print(call_s)
PY
}
kill_when_hung() {  # $1: a metrics port, $2: the worker's pid (one process; a pod's: its model process is killed)
  local call_s victim=$2 what=worker; call_s=$(hung_for "$1" "$2")
  if [ "$KILL_POD" != 0 ]; then  # the model process last: its feeders must not live to count the call
    local model; model=$(grep '"model_process_ready"' "$3" | grep -o '"pid": [0-9]*' | grep -o '[0-9]*' | tail -1)
    victim="$(pgrep -P "$2" | grep -vx "$model" | tr '\n' ' ')$2 $model"; what="pod (every process)"
  elif [ "$TAGSTREAM_PROCESSES" != 1 ]; then
    victim=$(grep '"model_process_ready"' "$3" | grep -o '"pid": [0-9]*' | grep -o '[0-9]*' | tail -1); what="model process"
  fi
  # shellcheck disable=SC2086  # victim: several pids for a pod killed whole
  kill -0 "$2" 2>/dev/null && kill -KILL $victim && echo "$what $victim SIGKILLed, its model call hung for ${call_s} s"
}
TAGSTREAM_BUNDLE_PATH=$D/stalling TAGSTREAM_MODEL_STALL_S=$FIRST_STALL_S TAGSTREAM_METRICS_PORT=9341 \
  .venv/bin/tagstream-worker run > "$D/first.log" 2>&1 &
FIRST=$!
if [ "${KILL_MODEL:-0}" != 0 ]; then
  call_s=$(hung_for 9341 $FIRST)
  MODEL_PID=$(grep '"model_process_ready"' "$D/first.log" | grep -o '"pid": [0-9]*' | grep -o '[0-9]*' | head -1)
  if [ "$KILL_MODEL" = stop ]; then
    kill -STOP "$MODEL_PID" && echo "model process $MODEL_PID frozen (SIGSTOP), its call hung for ${call_s} s"
    [ "${KUBELET:-0}" = 1 ] && kubelet 9341 $FIRST
  else
    kill -KILL "$MODEL_PID" && echo "model process $MODEL_PID SIGKILLed, its call hung for ${call_s} s"
  fi
elif [ "${KILL_WORKER:-0}" != 0 ]; then
  kill_when_hung 9341 $FIRST "$D/first.log"
fi
wait $FIRST; echo "first worker exit $? (1 expected: model_stalled, or the model process lost)"
.venv/bin/python - "$D/first.log" <<'PY'
import json, sys
from datetime import datetime
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def at(e):
    return datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
# One process: its fatal line; a pod: the model process's model_stalled (it exits at once, the feeders follow).
noticed = next((e for e in lines if e["event"] in ("fatal", "model_stalled", "model_process_lost")), lines[-1])
given = [e for e in lines if e["event"] == "model_call_given_up"]
# A pod: inputs of the call whose partition a rebalance had moved to another feeder, counted there.
heard = sum(e.get("counted", 0) for e in lines if e["event"] == "stalled_inputs_heard")
print(f"  stall noticed -> last log line: {(at(lines[-1]) - at(noticed)).total_seconds():.2f} s;"
      f" given up: {sum(e['inputs'] for e in given)} inputs ({sum(e['inputs'] for e in given if e.get('died'))} as"
      f" deaths in the call); counted by the feeder that owns them now: {heard}")
PY
if [ "${PILL:-0}" = 1 ]; then
  for n in 2 3 4; do  # each successor hangs on the input too, unless it no longer runs it
    TAGSTREAM_BUNDLE_PATH=$D/stalling TAGSTREAM_MODEL_STALL_S=$LATER_STALL_S TAGSTREAM_METRICS_PORT=9342 \
      .venv/bin/tagstream-worker run > "$D/second.log" 2>&1 &
    SECOND=$!
    WATCH=
    if [ "${KILL_WORKER:-0}" = every ] || [ "${KILL_MODEL:-0}" = every ]; then
      kill_when_hung 9342 $SECOND "$D/second.log" 2>/dev/null & WATCH=$!
    fi
    for i in $(seq 1 60); do kill -0 $SECOND 2>/dev/null || break; [ "$(committed 2>/dev/null)" = "$TOTAL" ] && break; sleep 1; done
    if ! kill -0 $SECOND 2>/dev/null; then
      wait $SECOND; echo "worker $n exit $? ($(grep -o '"event": "died_in_model_calls_counted"' "$D/second.log" | wc -l) journal count(s) at start: $(grep '"died_in_model_calls_counted"' "$D/second.log" | total inputs) inputs; $(grep '"model_call_given_up"' "$D/second.log" | total inputs) inputs given up ($(grep '"model_call_given_up"' "$D/second.log" | grep '"died": true' | total inputs) as deaths); $(grep '"stalled_inputs_heard"' "$D/second.log" | total counted) counted by the feeder that owns them now; $(grep -c input_dead_lettered_after_stalls "$D/second.log") dead-lettered after stalls as it drained)"
      cp "$D/second.log" "$D/worker$n.log"; continue
    fi
    echo "worker $n runs on: $(grep -c input_dead_lettered_after_stalls "$D/second.log") input(s) dead-lettered after stalls"; break
  done
else
  TAGSTREAM_BUNDLE_PATH=$D/null TAGSTREAM_METRICS_PORT=9342 .venv/bin/tagstream-worker run > "$D/second.log" 2>&1 &
  SECOND=$!
fi
wait_committed
SECOND_OUT=$(metric 9342 tagstream_events_out_total)
kill -TERM $SECOND; wait $SECOND; RC=$?; [ -n "${WATCH:-}" ] && wait $WATCH 2>/dev/null
echo "second worker exit $RC (out $SECOND_OUT)"
kcat -b "$B" -t "$T.labels" -C -e -q -X isolation.level=read_committed -f '%s\n' > "$D/out.jsonl"
.venv/bin/python - <<PY
import json, collections
ids = [json.loads(line)["id"] for line in open("$D/out.jsonl")]
seen = collections.Counter(ids); want = {f"e{i}" for i in range($EVENTS)} | {"stall"}
print(f"committed output records {len(ids)}, distinct {len(seen)}, missing {len(want - set(seen))},"
      f" duplicates {len(ids) - len(seen)}, unexpected {len(set(seen) - want)}")
PY
kcat -b "$B" -t "$T.dlq" -C -e -q -f '%k %h\n' | grep -o '^stall .*tagstream.reason=[a-z_]*' | sed 's/ .*tagstream.reason=/ dead-lettered: /' 
echo "logs: $D"
