#!/bin/bash
# A broker frozen for good, seen from a worker: it must exit 4 once TAGSTREAM_BROKER_OUTAGE_S has passed,
# and not wait out its drain on requests the frozen broker will never answer. 2,000 events from kcat, all
# labeled and committed, then the broker's JVM stopped (SIGSTOP) until the worker exits. Reports the seconds
# from the freeze to /readyz's first 503 and to the exit, and what the exit waited on (consumer_closed,
# producer_closed); the outage is dated from the broker's last answer (broker_unreachable's down_s). Before the
# fixes: kafka-python's producer close waited 15 s for a metadata request, each client's consumer 5 s for
# its LeaveGroup and heartbeat, and with static membership the member's removal 15 s for an admin client
# that never connected.
#   BUNDLE=DIR [CLIENT=kafka-python|confluent] [STATIC=1] [OUTAGE_S=15] bash bench/outsider/frozen_exit.sh
PORT=${PORT:-9395}
[ -n "${STATIC:-}" ] && export TAGSTREAM_GROUP_INSTANCE_ID=frozen-exit-${CLIENT:-kafka-python}-$$-0  # leave_group_on_stop (default)
export TAGSTREAM_BROKER_OUTAGE_S=${OUTAGE_S:-15}
source bench/outsider/small_worker.sh frozen-exit
kill -STOP "$JVM"; F=$(date +%s.%N); echo "broker frozen at $(date +%T)"
since() { awk -v now="$(date +%s.%N)" -v f="$F" 'BEGIN { printf "%.1f", now - f }'; }
UNREADY=""  # /readyz sampled every 0.25 s: when it first answers 503
while kill -0 $W 2>/dev/null && [ "$(since | cut -d. -f1)" -lt 120 ]; do
  [ -z "$UNREADY" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' -m 0.2 "localhost:$PORT/readyz")" = 503 ] && UNREADY=$(since)
  sleep 0.25
done
echo "/readyz 503 from ${UNREADY:-never} s into the freeze"
if kill -0 $W 2>/dev/null; then
  echo "the worker still ran 120 s into the freeze"; kill -CONT "$JVM"; kill -TERM $W; wait $W; echo "exit after SIGTERM: $?"
else
  wait $W; CODE=$?; E=$(since); kill -CONT "$JVM"; echo "worker exit $CODE, $E s into the freeze"
fi
show_events "broker_unreachable|consumer_closed|producer_closed|consumer_close_failed|consumer_close_unanswered|leave_group_failed"
py "a.delete_topics(['$P', '$P.labels', '$P.dlq'])"
echo "log: $D/worker.log"
