#!/usr/bin/env bash
# Strand against its peers on one machine in one sitting: the same workload on each, the broker
# in its own process, its data on the same disk (under --data, default ./.peers-data), one
# system at a time, several rounds alternating the systems so the machine's drift hits all.
#
#     benches/peers/run.sh [--records N] [--record-bytes B] [--rounds R] [--systems "..."]
#
# Workload: one producer writes N records of B bytes (default 300,000 x 1 KiB) to one
# partition / stream, then one consumer reads all N back from the start. Each figure is
# records/s (and MB/s of values), from the first send to the last acknowledgement, and from the
# first read to the N-th record.
#
# Systems (default all that are found) and what drives each:
#   strand        strand-broker + `strand-bench --broker throughput --producers 1 --partitions 1`
#                 (native protocol; acks=leader, linger 5 ms)
#   strand-kafka  the same broker's Kafka listener + `strand-bench kafka-peer` (librdkafka,
#                 acks=1, linger 5 ms)
#   tansu         `tansu broker` with its SQLite engine + `strand-bench kafka-peer` (the same
#                 librdkafka load)
#   redis         redis-server (AOF on) + benches/peers/go (redigo, pipelined XADD, XREAD)
#   nats          nats-server -js (file storage) + benches/peers/go (nats.go, PublishAsync,
#                 ordered consumer)
#   iggy          iggy-server + `iggy-bench pinned-producer` / `pinned-consumer` (tcp, 1,000
#                 messages per batch)
#
# Durability as configured here (each acknowledges before fsync; README "Against peers" says
# more): Strand fsyncs every 1000 ms (--fsync 1000, the default); Redis appendfsync everysec;
# NATS 2.9 fsyncs its file store every 60 s (not configurable in 2.9); tansu's SQLite runs WAL
# with synchronous=NORMAL (fsync at checkpoints); Iggy by default (no enforce_fsync) writes
# every 1,024 messages or 1 MiB and leaves fsync to the OS.
#
# Binaries, each found on PATH unless named: STRAND_BIN_DIR (strand-broker, strand-bench;
# default target/release), TANSU (tansu), IGGY_BIN_DIR (iggy-server, iggy-bench), PEERS_GO
# (built here from benches/peers/go with Debian's Go, nats.go and redigo when missing:
# apt-get install golang-go golang-github-nats-io-go-nats-dev golang-github-gomodule-redigo-dev),
# redis-server, nats-server. A system whose binaries are missing is skipped with a note.
#
# Output: every RESULT line in <data>/results.tsv (round, system, direction, records/s, MB/s),
# then a Markdown table of each system's median and its ratio to Strand's (native) median.
# Every wait is bounded; brokers started here are stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

RECORDS=300000
BYTES=1024
ROUNDS=2
SYSTEMS="strand strand-kafka tansu redis nats iggy"
DATA="$PWD/.peers-data"
while [ $# -gt 0 ]; do
  case "$1" in
    --records) RECORDS="$2"; shift 2 ;;
    --record-bytes) BYTES="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --systems) SYSTEMS="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
# Iggy's bench takes batches: N must be whole batches of 1,000.
BATCH=1000
[ $((RECORDS % BATCH)) -eq 0 ] || { echo "--records must be a multiple of $BATCH" >&2; exit 2; }

STRAND_BIN_DIR="${STRAND_BIN_DIR:-target/release}"
IGGY_BIN_DIR="${IGGY_BIN_DIR:-}"
TANSU="${TANSU:-tansu}"
PEERS_GO="${PEERS_GO:-}"
# Ports of the brokers started here (loopback only).
P_STRAND=27171 P_STRAND_KAFKA=29092 P_STRAND_HTTP=27180
P_TANSU=29093 P_REDIS=26379 P_NATS=24222 P_IGGY=28090

mkdir -p "$DATA"
DATA="$(cd "$DATA" && pwd)"
RESULTS="$DATA/results.tsv"
: > "$RESULTS"
BROKER_PID=""

bin() { # bin NAME DIR: the path of NAME in DIR, or on PATH
  if [ -n "$2" ] && [ -x "$2/$1" ]; then echo "$2/$1"; else command -v "$1" || true; fi
}
stop_broker() {
  if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  BROKER_PID=""
}
trap stop_broker EXIT
wait_port() { # wait_port PORT: until something listens there (30 s at most)
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$BROKER_PID" 2>/dev/null || { echo "the broker exited; its log: $LOG" >&2; tail -n 20 "$LOG" >&2; return 1; }
    sleep 0.1
  done
  echo "nothing listens on port $1 after 30 s; log: $LOG" >&2
  return 1
}
start() { # start LOG CMD...: runs CMD as the broker, in the background
  LOG="$1"; shift
  "$@" >"$LOG" 2>&1 &
  BROKER_PID=$!
}
record() { # record ROUND: reads RESULT lines on stdin into the results file, echoing them
  while read -r tag system what rate mbs _; do
    [ "$tag" = RESULT ] || continue
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$system" "$what" "$rate" "$mbs" >> "$RESULTS"
    printf '  %-13s %-8s %10s records/s %8s MB/s\n' "$system" "$what" "$rate" "$mbs"
  done
}

SB="$(bin strand-bench "$STRAND_BIN_DIR")"
SBROKER="$(bin strand-broker "$STRAND_BIN_DIR")"
IGGY_SERVER="$(bin iggy-server "$IGGY_BIN_DIR")"
IGGY_BENCH="$(bin iggy-bench "$IGGY_BIN_DIR")"
TANSU_BIN="$(command -v "$TANSU" || true)"
if [ -z "$PEERS_GO" ]; then
  PEERS_GO="$DATA/peers-go"
  if [ ! -x "$PEERS_GO" ] && command -v go >/dev/null; then
    GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= GOCACHE="$DATA/go-cache" \
      go build -o "$PEERS_GO" benches/peers/go/main.go || rm -f "$PEERS_GO"
  fi
fi

available() {
  case "$1" in
    strand|strand-kafka) [ -n "$SB" ] && [ -n "$SBROKER" ] ;;
    tansu) [ -n "$SB" ] && [ -n "$TANSU_BIN" ] ;;
    redis) [ -x "$PEERS_GO" ] && command -v redis-server >/dev/null ;;
    nats) [ -x "$PEERS_GO" ] && command -v nats-server >/dev/null ;;
    iggy) [ -n "$IGGY_SERVER" ] && [ -n "$IGGY_BENCH" ] ;;
    *) return 1 ;;
  esac
}

run_one() { # run_one SYSTEM ROUND
  local system="$1" round="$2" dir="$DATA/$1"
  rm -rf "$dir"; mkdir -p "$dir"
  case "$system" in
    strand|strand-kafka)
      start "$dir.log" "$SBROKER" --data-dir "$dir" --listen "127.0.0.1:$P_STRAND" \
        --kafka-listen "127.0.0.1:$P_STRAND_KAFKA" --http-listen "127.0.0.1:$P_STRAND_HTTP" \
        --fsync 1000
      wait_port "$P_STRAND"; wait_port "$P_STRAND_KAFKA"
      if [ "$system" = strand ]; then
        "$SB" --broker "127.0.0.1:$P_STRAND" throughput --records "$RECORDS" \
          --record-bytes "$BYTES" --partitions 1 --producers 1 --acks leader 2>/dev/null |
          awk '/^(produce|consume): /{ sub(":", "", $1); print "RESULT strand", $1, $(NF-5), $(NF-3) }' |
          record "$round"
      else
        "$SB" kafka-peer --bootstrap "127.0.0.1:$P_STRAND_KAFKA" --label strand-kafka \
          --records "$RECORDS" --record-bytes "$BYTES" | record "$round"
      fi ;;
    tansu)
      # Its SQLite file is named relative to its working folder.
      start "$dir.log" env -C "$dir" "$TANSU_BIN" broker --storage-engine "sqlite://tansu.db" \
        --listener-url "tcp://127.0.0.1:$P_TANSU" \
        --advertised-listener-url "tcp://127.0.0.1:$P_TANSU"
      wait_port "$P_TANSU"
      "$SB" kafka-peer --bootstrap "127.0.0.1:$P_TANSU" --label tansu \
        --records "$RECORDS" --record-bytes "$BYTES" | record "$round" ;;
    redis)
      start "$dir.log" redis-server --bind 127.0.0.1 --port "$P_REDIS" --dir "$dir" \
        --appendonly yes --appendfsync everysec --save '' --protected-mode yes
      wait_port "$P_REDIS"
      "$PEERS_GO" redis -addr "127.0.0.1:$P_REDIS" -records "$RECORDS" -bytes "$BYTES" |
        record "$round" ;;
    nats)
      start "$dir.log" nats-server -js -a 127.0.0.1 -p "$P_NATS" -sd "$dir"
      wait_port "$P_NATS"
      "$PEERS_GO" nats -url "nats://127.0.0.1:$P_NATS" -records "$RECORDS" -bytes "$BYTES" |
        record "$round" ;;
    iggy)
      IGGY_SYSTEM_PATH="$dir" IGGY_TCP_ADDRESS="127.0.0.1:$P_IGGY" IGGY_HTTP_ENABLED=false \
        IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy \
        IGGY_QUIC_ENABLED=false IGGY_WEBSOCKET_ENABLED=false \
        start "$dir.log" "$IGGY_SERVER"
      wait_port "$P_IGGY"
      local batches=$((RECORDS / BATCH))
      for kind in pinned-producer pinned-consumer; do
        "$IGGY_BENCH" -m "$BYTES" -P "$BATCH" -b "$batches" "$kind" --streams 1 \
          $([ "$kind" = pinned-producer ] && echo --producers 1 || echo --consumers 1) \
          tcp --server-address "127.0.0.1:$P_IGGY" > "$dir.$kind.out" 2>&1 ||
          { echo "iggy-bench $kind failed: $dir.$kind.out" >&2; tail -n 20 "$dir.$kind.out" >&2; }
        # The summary line: "... Total throughput: X MB/s, Y messages/s ..."
        grep -i 'total throughput' "$dir.$kind.out" | tail -n 1 |
          sed -E 's/.*[Tt]otal [Tt]hroughput: ([0-9.]+) MB\/s, ([0-9.]+) messages\/s.*/\2 \1/' |
          awk -v w="$([ "$kind" = pinned-producer ] && echo produce || echo consume)" \
            'NF == 2 { printf "RESULT iggy %s %.0f %.1f\n", w, $1, $2 }' | record "$round"
      done ;;
  esac
  stop_broker
  rm -rf "$dir"
}

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg);" \
  "$RECORDS records of $BYTES B, $ROUNDS rounds; data in $DATA"
for system in $SYSTEMS; do
  available "$system" || echo "skipped $system: its binaries are not found (see --help)"
done
for round in $(seq "$ROUNDS"); do
  for system in $SYSTEMS; do
    available "$system" || continue
    echo "round $round: $system"
    run_one "$system" "$round" || echo "  $system failed in round $round"
  done
done

# The table: each system's median over the rounds, and its ratio to Strand's native median.
echo
awk -F'\t' -v order="$SYSTEMS" '
  { v[$2 " " $3] = v[$2 " " $3] " " $5; r[$2 " " $3] = r[$2 " " $3] " " $4; seen[$2] = 1 }
  function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    print "| system | produce MB/s (runs) | / Strand | consume MB/s (runs) | / Strand |"
    print "| --- | --- | --- | --- | --- |"
    sp = median(v["strand produce"]); sc = median(v["strand consume"])
    n = split(order, list, " ")
    for (i = 1; i <= n; i++) {
      s = list[i]
      if (!(s in seen)) continue
      p = median(v[s " produce"]); c = median(v[s " consume"])
      printf "| %s | %.1f (%s) | %s | %.1f (%s) | %s |\n", s, p, substr(v[s " produce"], 2),
        (sp > 0 ? sprintf("%.2f", p / sp) : "-"), c, substr(v[s " consume"], 2),
        (sc > 0 ? sprintf("%.2f", c / sc) : "-")
    }
  }' "$RESULTS"
