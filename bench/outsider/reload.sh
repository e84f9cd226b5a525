#!/bin/bash
# Model updates under a live stream, done the ways operators do them, and one done badly. The worker serves
# a symlink (as a Kubernetes volume's ..data does) to a copy of BUNDLE, reloading every 0.5 s, while it works
# through the input of single.sh:
#   1. NEW_BUNDLE copied over the served folder in place, one file a second, the model first and the
#      manifest last: for 6 s the folder mixes two bundles (what `cp` or `kubectl cp` of one file at a time
#      leaves while it runs);
#   2. a tampered NEW_BUNDLE (a byte added to model.ts) copied over it in place: refused, NEW keeps serving;
#   3. the symlink switched at once (ln -s, then mv -T) to a fresh copy of BUNDLE: served again.
# Then, once the broker says every input is committed: every result read back with kcat, and per partition
# the versions that answered must come in that order (BUNDLE, NEW, BUNDLE), none after it is replaced.
#   BUNDLE=DIR NEW_BUNDLE=DIR [CLIENT=kafka-python|confluent] [EVENTS=400000] [TAGSTREAM_PROCESSES=1]
#   bash bench/outsider/reload.sh      (the two bundles: the same labels, two trainings, e.g. --seed 1 and 2)
EVENTS=${EVENTS:-400000}
NEW_BUNDLE=${NEW_BUNDLE:?"set NEW_BUNDLE to a second bundle with the same labels"}
source "$(dirname "$0")/common.sh" reload
V1=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['version'])" "$BUNDLE/manifest.json")
V2=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['version'])" "$NEW_BUNDLE/manifest.json")
[ "$V1" != "$V2" ] || { echo "BUNDLE and NEW_BUNDLE have the same version ($V1): train a second one"; exit 2; }
S=$D/served; mkdir -p "$S"; cp -a "$BUNDLE" "$S/a"; ln -s a "$S/current"
export TAGSTREAM_BUNDLE_PATH=$S/current TAGSTREAM_RELOAD_INTERVAL_S=0.5 TAGSTREAM_PROCESSES=${TAGSTREAM_PROCESSES:-1}
TAGSTREAM_METRICS_PORT=9351 .venv/bin/tagstream-worker run > "$D/worker.log" 2>&1 &
WORKER=$!
reloads() {  # $1: swapped or refused
  curl -s localhost:9351/metrics | grep -F "tagstream_bundle_reloads_total{result=\"$1\"}" | awk '{printf "%d", $2}'
}
serving() { curl -s localhost:9351/metrics | grep '^tagstream_model_info' | grep -o 'version="[^"]*"' | paste -sd' '; }
until_swapped() {  # $1: swaps to wait for
  local i; for i in $(seq 1 120); do [ "$(reloads swapped)" -ge "$1" ] 2>/dev/null && return 0; sleep 0.5; done
  echo "no swap after 60 s"; return 1
}
wait_for_out 9351 $((EVENTS / 10))
echo "1. in place, a file a second (out $(metric 9351 tagstream_events_out_total), serving $(serving))"
for f in model.ts $(ls "$NEW_BUNDLE" | grep -vx -e model.ts -e manifest.json) manifest.json; do
  cp "$NEW_BUNDLE/$f" "$S/a/$f"; sleep 1
done
until_swapped 1; echo "   swapped: serving $(serving), refused so far $(reloads refused) (out $(metric 9351 tagstream_events_out_total))"
echo "2. a tampered copy in place"
REFUSED=$(reloads refused); TAMPERED=$D/tampered; cp -a "$NEW_BUNDLE" "$TAMPERED"; printf x >> "$TAMPERED/model.ts"
cp "$TAMPERED"/* "$S/a/"
for _ in $(seq 1 20); do [ "$(reloads refused)" -gt "$REFUSED" ] && break; sleep 0.5; done
echo "   refused $(reloads refused) (was $REFUSED), serving $(serving)"
echo "3. the symlink switched to a fresh copy of BUNDLE"
cp -a "$BUNDLE" "$S/b"; ln -s b "$S/next"; mv -T "$S/next" "$S/current"
until_swapped 2; echo "   swapped: serving $(serving) (out $(metric 9351 tagstream_events_out_total))"
[ "$(metric 9351 tagstream_events_out_total)" -lt "$EVENTS" ] || echo "NOTE: the stream ended before step 3: use a larger EVENTS"
wait_committed
OUT=$(metric 9351 tagstream_events_out_total); SWAPS=$(reloads swapped); REFUSALS=$(reloads refused)
kill -TERM $WORKER; wait $WORKER; echo "worker exit $? (out $OUT, swapped $SWAPS, refused $REFUSALS)"
check_output "$OUT"
.venv/bin/python - "$D/out.jsonl" "$V1" "$V2" <<'PY'
import json, sys, collections
path, v1, v2 = sys.argv[1:]
name = {v1: "BUNDLE", v2: "NEW"}
by_partition = collections.defaultdict(list)
for line in open(path):
    r = json.loads(line)
    by_partition[r["source"]["partition"]].append((r["source"]["offset"], name.get(r["model_version"], "OTHER")))
counts = collections.Counter(n for rows in by_partition.values() for _, n in rows)
out_of_order = 0
for partition, rows in sorted(by_partition.items()):
    names = [n for _, n in sorted(rows)]
    runs = [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]]
    ok = runs in (["BUNDLE"], ["BUNDLE", "NEW"], ["BUNDLE", "NEW", "BUNDLE"], ["NEW"], ["NEW", "BUNDLE"])
    out_of_order += not ok
    print(f"partition {partition}: versions in offset order {' -> '.join(runs)}{'' if ok else '  OUT OF ORDER'}")
print(f"results by bundle {dict(counts)}; partitions out of order: {out_of_order}")
PY
grep -h '"bundle_refused"' "$D/worker.log" | grep -o '"error": "[^"]\{0,160\}' | sort | uniq -c
