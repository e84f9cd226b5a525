#!/bin/bash
# A throwaway 3-node KRaft cluster on 127.0.0.1 (brokers 9292-9294, controllers 9295-9297), for
# rolling.sh: replication factor 3, min.insync.replicas 2, no topic auto-creation (as most
# production clusters). Uses the broker jars the development broker fetched (tagstream-worker kafka up
# once). Data in ${K3:-/tmp/tagstream-k3}, wiped by `up`.
#   bash bench/outsider/cluster3.sh up|down|status
#   bash bench/outsider/cluster3.sh stop|kill|start N     # one node: SIGTERM (controlled), SIGKILL, start
#   bash bench/outsider/cluster3.sh freeze|thaw N         # one node's JVM stopped (SIGSTOP): its connections
#                                                          # stay open and nothing answers; resumed (SIGCONT)
set -u
K3=${K3:-/tmp/tagstream-k3}
CP=$(.venv/bin/python -c "from localkafka.jars import cached_jars; j = cached_jars(); print(j.classpath if j else '')")
[ -n "$CP" ] || { echo "no Kafka jars yet: run tagstream-worker kafka up once"; exit 2; }
LOG4J=$PWD/localkafka/log4j2.properties
BOOTSTRAP=127.0.0.1:9292,127.0.0.1:9293,127.0.0.1:9294
pids() { pgrep -f "$K3/n$1/server.properties"; }
start() {
  nohup java -Xms256m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J" -cp "$CP" kafka.Kafka "$K3/n$1/server.properties" >> "$K3/n$1/broker.log" 2>&1 &
  for _ in $(seq 1 60); do kcat -b "127.0.0.1:929$(($1 + 1))" -L -m 2 >/dev/null 2>&1 && return 0; sleep 1; done
  echo "node $1 did not answer within 60 s ($K3/n$1/broker.log)"; return 1
}
stop() { pkill "-$2" -f "$K3/n$1/server.properties"; while pids "$1" >/dev/null; do sleep 0.2; done; }
case ${1:-} in
up)
  for n in 1 2 3; do stop "$n" KILL; done
  rm -rf "$K3"; cluster=$(.venv/bin/python -c "from localkafka.broker import new_cluster_id; print(new_cluster_id())")
  for n in 1 2 3; do
    mkdir -p "$K3/n$n"
    cat > "$K3/n$n/server.properties" <<PROPS
process.roles=broker,controller
node.id=$n
controller.quorum.voters=1@127.0.0.1:9295,2@127.0.0.1:9296,3@127.0.0.1:9297
listeners=PLAINTEXT://127.0.0.1:929$((n + 1)),CONTROLLER://127.0.0.1:929$((n + 4))
advertised.listeners=PLAINTEXT://127.0.0.1:929$((n + 1))
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$K3/n$n/data
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=3
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
    java -cp "$CP" -Dlog4j2.configurationFile="$LOG4J" kafka.tools.StorageTool format --cluster-id "$cluster" \
      --config "$K3/n$n/server.properties" > "$K3/n$n/format.log" 2>&1 || { echo "format failed: $K3/n$n/format.log"; exit 1; }
  done
  for n in 1 2 3; do start "$n" & done; wait
  echo "3 nodes up: TAGSTREAM_BOOTSTRAP_SERVERS=$BOOTSTRAP (data: $K3)" ;;
down) for n in 1 2 3; do stop "$n" TERM; done; echo "3 nodes stopped" ;;
status) for n in 1 2 3; do echo "node $n: $(pids "$n" >/dev/null && echo running || echo stopped)"; done ;;
stop) stop "$2" TERM ;;
kill) stop "$2" KILL ;;
start) start "$2" ;;
freeze) pkill -STOP -f "$K3/n$2/server.properties" ;;
thaw) pkill -CONT -f "$K3/n$2/server.properties" ;;
*) echo "usage: $0 up|down|status|stop N|kill N|start N|freeze N|thaw N"; exit 2 ;;
esac
