#!/bin/bash
# One worker process, driven from outside: kcat input (EVENTS keyed AG News events in snappy batches and 12
# hostile records, one of 200 KB), the worker SIGKILLed mid-stream and a successor started, the broker frozen
# 15 s, then SIGTERM once the broker says every input is committed. The output is read back with kcat and
# compared with the input; the workers' metrics with the broker's record count.
#   BUNDLE=DIR [CLIENT=kafka-python|confluent] [EVENTS=60000] bash bench/outsider/single.sh
source "$(dirname "$0")/common.sh" single
export TAGSTREAM_PROCESSES=1
TAGSTREAM_METRICS_PORT=9331 .venv/bin/tagstream-worker run > "$D/first.log" 2>&1 &
FIRST=$!
wait_for_out 9331 $((EVENTS / 4))
FIRST_OUT=$(metric 9331 tagstream_events_out_total)
kill -KILL $FIRST; wait $FIRST 2>/dev/null; echo "first worker SIGKILLed; its last scrape: out $FIRST_OUT"
TAGSTREAM_METRICS_PORT=9332 .venv/bin/tagstream-worker run > "$D/second.log" 2>&1 &
SECOND=$!
wait_for_out 9332 $((EVENTS / 6))
freeze_broker 9332
wait_committed
SECOND_OUT=$(metric 9332 tagstream_events_out_total)
kill -TERM $SECOND; wait $SECOND; echo "second worker exit $? (out $SECOND_OUT)"
check_output $((FIRST_OUT + SECOND_OUT))
