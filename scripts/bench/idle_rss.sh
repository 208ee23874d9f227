#!/usr/bin/env bash
# Idle memory per WebSocket on ONE gateway: for each N, a fresh Redis, one ingest and one
# gateway (release binaries), then N browsers from the neutral rig's load generator, each
# with its own pending payment and subscription, connected and idle. Prints one JSON line
# per N: the gateway's VmRSS before any client and with N clients, and the difference per
# socket in KiB, and the gateway's Redis connections at both points (scenario e: they must
# not grow with the clients). Usage:
#
#   cargo build --release --workspace --bins
#   bash scripts/bench/idle_rss.sh 5000 10000 15000
#
# Needs ../shared/peers/loadgen built (cargo build --release in that folder) and a hard
# open-file limit above 2 x N + 1000 (the process raises its soft limit itself).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=$ROOT/target/release
LG=${LOADGEN:-$ROOT/../shared/peers/loadgen/target/release/loadgen}
[ -x "$LG" ] || { echo "loadgen missing: (cd ../shared/peers/loadgen && cargo build --release)" >&2; exit 1; }
[ -x "$BIN/stk-relay-gateway" ] || { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP_LOGS:-}" ] && echo "logs in $WORK" >&2 || rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
# Established TCP connections of process $1 to port $2.
conns_to() { ss -Htnp state established "( dport = :$2 )" 2>/dev/null | grep -c "pid=$1," || true; }

for n in "$@"; do
  rp=$(free_port); ip=$(free_port); gp=$(free_port); dp=$(free_port)
  redis-server --port "$rp" --bind 127.0.0.1 --save '' --appendonly no > "$WORK/redis.log" 2>&1 & r=$!
  wait_port "$rp"
  cb=bench-callback-secret-0123456789abcdef01 sub=bench-subscribe-secret-0123456789abcd01
  env RUST_LOG=warn INGEST__SERVER__HOST=127.0.0.1 INGEST__SERVER__PORT=$ip \
    INGEST__REDIS__URL=redis://127.0.0.1:$rp INGEST__TOKENS__CALLBACK_SECRET=$cb \
    "$BIN/stk-relay-callback-ingest" > "$WORK/ingest.log" 2>&1 & i=$!
  env RUST_LOG=warn GATEWAY__SERVER__HOST=127.0.0.1 GATEWAY__SERVER__PORT=$gp \
    GATEWAY__REDIS__URL=redis://127.0.0.1:$rp GATEWAY__API__KEYS=bench-api-key-0123456789 \
    GATEWAY__TOKENS__SUBSCRIBE_SECRET=$sub GATEWAY__TOKENS__CALLBACK_SECRET=$cb \
    GATEWAY__CALLBACKS__PUBLIC_BASE_URL=http://127.0.0.1:$ip \
    GATEWAY__DARAJA__BASE_URL=http://127.0.0.1:$dp GATEWAY__DARAJA__CONSUMER_KEY=bench \
    GATEWAY__DARAJA__CONSUMER_SECRET=bench GATEWAY__DARAJA__PASSKEY=bench-passkey \
    GATEWAY__WS__MAX_CONNECTIONS=$((n + 1000)) GATEWAY__WS__MAX_CONNECTIONS_PER_IP=0 \
    ${GATEWAY_WRAPPER:-} "$BIN/stk-relay-gateway" > "$WORK/gateway.log" 2>&1 & g=$!
  wait_port "$ip"; for _ in $(seq 300); do wait_port "$gp" && break; done
  sleep 1
  before=$(rss_kb "$g"); rconn_before=$(conns_to "$g" "$rp")
  rm -f "$WORK/ready" "$WORK/release"
  if [ "$n" -gt 0 ]; then
    "$LG" --adapter stkrelay --gateway "http://127.0.0.1:$gp" --api-key bench-api-key-0123456789 \
      --daraja-listen "127.0.0.1:$dp" --match-substr PAYMENT_COMPLETED \
      --clients "$n" --callbacks 0 --ramp-secs 10 --hold-secs 120 \
      --ready-file "$WORK/ready" --release-file "$WORK/release" --label "idle$n" > "$WORK/lg.json" 2>"$WORK/lg.err" & l=$!
    for _ in $(seq 300); do [ -f "$WORK/ready" ] && break; sleep 0.5; done
    sleep 3
  else
    echo 0 > "$WORK/ready"
  fi
  with=$(rss_kb "$g"); rconn_with=$(conns_to "$g" "$rp")
  connected=$(cat "$WORK/ready" 2>/dev/null || echo 0)
  touch "$WORK/release"; [ "$n" -gt 0 ] && { wait "$l" || true; }
  python3 -c 'import json,sys; n,c,b,w,rb,rw=map(int,sys.argv[1:7]); print(json.dumps({"clients":n,"connected":c,"rss_before_kb":b,"rss_with_kb":w,"kib_per_socket":round((w-b)/max(c,1),2),"redis_conns_before":rb,"redis_conns_with":rw}))' \
    "$n" "$connected" "$before" "$with" "$rconn_before" "$rconn_with"
  kill "$g" "$i" "$r" 2>/dev/null || true; wait "$g" "$i" "$r" 2>/dev/null || true
done
