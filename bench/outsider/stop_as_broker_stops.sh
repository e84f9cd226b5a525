#!/bin/bash
# A worker stopped (SIGTERM) just after its broker stopped, as when a node is drained with the broker and the
# worker on it: how long the stop takes, and what it waited on. 2,000 events from kcat, all labeled and
# committed, static membership (Kubernetes' default), then `tagstream-worker kafka down` (connections
# refused), AFTER seconds (0.5), SIGTERM. Before the fix the static member's removal waited 15 s for an admin
# client to bootstrap from the stopped broker; the development broker is started again at the end.
#   BUNDLE=DIR [CLIENT=kafka-python|confluent] [AFTER=0.5] bash bench/outsider/stop_as_broker_stops.sh
PORT=${PORT:-9397}
export TAGSTREAM_GROUP_INSTANCE_ID=stop-away-${CLIENT:-kafka-python}-$$-0  # static membership, as in Kubernetes
source bench/outsider/small_worker.sh stop-away
.venv/bin/tagstream-worker kafka down > /dev/null 2>&1; echo "broker stopped at $(date +%T)"
sleep "${AFTER:-0.5}"; F=$(date +%s.%N); kill -TERM $W; wait $W; CODE=$?
awk -v now="$(date +%s.%N)" -v f="$F" -v c="$CODE" 'BEGIN { printf "worker exit %s, %.1f s after SIGTERM\n", c, now - f }'
show_events "drained|consumer_closed|producer_closed|consumer_close_failed|consumer_close_unanswered|leave_group_failed"
.venv/bin/tagstream-worker kafka up > /dev/null 2>&1 && echo "development broker started again (a fresh one: its topics went with it)"
echo "log: $D/worker.log"
