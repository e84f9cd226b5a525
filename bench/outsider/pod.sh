#!/bin/bash
# A pod of 2 feeders (TAGSTREAM_PROCESSES=2), driven from outside: the input of single.sh, the busier feeder
# (the one holding partitions; the other may hold none) SIGKILLed mid-stream (the pod restarts it), the broker frozen 15 s, then SIGTERM once the broker says every input is
# committed; the same checks.
# FEEDER_SIGNAL=TERM stops that feeder instead (it drains and exits; the pod restarts it): its last
# counts reach the pod's metrics, so metrics and broker agree exactly.
#   BUNDLE=DIR [CLIENT=kafka-python|confluent] [EVENTS=60000] [FEEDER_SIGNAL=KILL|TERM] bash bench/outsider/pod.sh
source "$(dirname "$0")/common.sh" pod
export TAGSTREAM_PROCESSES=2
TAGSTREAM_METRICS_PORT=9331 .venv/bin/tagstream-worker run > "$D/pod.log" 2>&1 &
POD=$!
wait_for_out 9331 $((EVENTS / 4))
read -r FPID _ FNAME <<< "$(ps -o pid=,cputimes=,comm= --ppid $POD | awk '$3 ~ /^tagstream-fdr/' | sort -k2 -n -r | head -1)"
SIG=${FEEDER_SIGNAL:-KILL}
kill -"$SIG" "$FPID"; echo "$FNAME sent SIG$SIG (the pod's last scrape: out $(metric 9331 tagstream_events_out_total))"
until curl -s localhost:9331/metrics | grep -q '^tagstream_feeders{state="running"} 2.0'; do sleep 0.5; done
echo "the feeder is back: restarts $(metric 9331 tagstream_feeder_restarts_total)"
wait_for_out 9331 $((EVENTS / 2))
freeze_broker 9331
wait_committed
POD_OUT=$(metric 9331 tagstream_events_out_total)  # a dead feeder's counts are kept as of its last scrape
kill -TERM $POD; wait $POD; echo "pod exit $? (out $POD_OUT)"
check_output "$POD_OUT"
