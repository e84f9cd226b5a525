#!/bin/bash
# Two exactly-once workers of one group as two containers on the host's network would run: the same host
# name, the same TAGSTREAM_STATE_DIR path, but each on a filesystem of its own (a private tmpfs mounted over
# the state folder in a mount namespace of its own: `unshare --mount`), no static membership. Each is
# restarted when it exits (a restart policy). If the two took the same transactional id, each start would
# fence the other: exits with producer_fenced, over and over. The input of single.sh from kcat; results read
# back read_committed (kcat's default) once the broker says every input is committed.
#   BUNDLE=DIR [CLIENT=kafka-python|confluent] [EVENTS=20000] [TAGSTREAM_PROCESSES=1] bash bench/outsider/shared_host.sh
# Needs root, or unprivileged user namespaces (then run as any user: `unshare --user --map-root-user`).
EVENTS=${EVENTS:-20000}
source "$(dirname "$0")/common.sh" shared-host
export TAGSTREAM_PROCESSES=${TAGSTREAM_PROCESSES:-1} TAGSTREAM_PROCESSING_GUARANTEE=exactly_once TAGSTREAM_GROUP_INSTANCE_ID= \
  TAGSTREAM_STATE_DIR=/tmp/tagstream-shared-host
mkdir -p "$TAGSTREAM_STATE_DIR"
if [ "$(id -u)" = 0 ]; then NS=(unshare --mount --propagation private); else NS=(unshare --user --map-root-user --mount); fi
"${NS[@]}" true || { echo "cannot make a mount namespace (${NS[*]}): run as root"; exit 2; }

container() {  # $1: its name, $2: its metrics port. Its own tmpfs over the state folder; restarted on exit.
  "${NS[@]}" bash -c '
    mount -t tmpfs tmpfs "$TAGSTREAM_STATE_DIR" || exit 2
    n=0
    until [ -e "$0/stop" ]; do
      n=$((n + 1))
      TAGSTREAM_METRICS_PORT=$1 .venv/bin/tagstream-worker run >> "$0/$2.log" 2>&1 & echo $! > "$0/$2.pid"; wait $!
      echo "$2 start $n exit $?" >> "$0/exits"; sleep 1
    done' "$D" "$2" "$1" &
}
container a 9341
container b 9342
wait_committed
OUT=$(( $(metric 9341 tagstream_events_out_total) + $(metric 9342 tagstream_events_out_total) ))
touch "$D/stop"; kill -TERM "$(cat "$D/a.pid")" "$(cat "$D/b.pid")"; wait
echo "worker exits (a restart policy started them again):"; cat "$D/exits"
for name in a b; do
  echo "$name: transactional ids $(grep -o '"transactional_id": "[^"]*"' "$D/$name.log" | sort | uniq -c | tr -s ' ' | paste -sd ';')," \
    "producer_fenced $(grep -c producer_fenced "$D/$name.log")"
done
check_output "$OUT"
