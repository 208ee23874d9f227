#!/usr/bin/env bash
# Push throughput of ONE gateway (issue 9, "push"): POST /v1/stk/push against a Daraja
# that answers at once. Starts, on free loopback ports, a fresh Redis, the Daraja
# simulator (response delay 0), one callback-ingest and one gateway (release binaries),
# then drives the push route with wrk for SECONDS over CONNECTIONS keep-alive connections
# (2 wrk threads). Prints one JSON line: requests/s, latency p50/p90/p99 (ms), non-2xx
# count, socket errors, and the CPU seconds each process used during the run (utime +
# stime from /proc/<pid>/stat, before/after; wrk's from its rusage) plus how busy the
# whole machine was: the split shows what limits the rate. Usage:
#
#   cargo build --release --workspace --bins
#   bash scripts/bench/push.sh [SECONDS=15] [CONNECTIONS=64]
#
# Needs redis-server, wrk (apt-get install wrk), curl and python3. Exit status 1 when any
# response was not 2xx (wrk counts statuses >= 400; the push route answers no 1xx/3xx),
# nothing was sent, or Redis holds fewer recorded pushes than wrk got answers.
# KEEP_LOGS=1 keeps the services' logs. BENCH_LOG sets RUST_LOG of the services (default
# "warn", see below). Further GATEWAY__* variables in the caller's environment reach the
# gateway (e.g. GATEWAY__REDIS__POOL_SIZE=8).
#
# What is set for the benchmark, and why:
# - Phones are 2547NNNNN333: the simulator's "manual" outcome (tests/src/sim.rs MANUAL),
#   pending until POST /sim/complete, so it sends no callbacks and the run measures the
#   push alone (no ingest or pub/sub work). N cycles per request, offset per wrk thread.
# - No Idempotency-Key: the plain push (PING, ZADD reconcile:due, EVALSHA payment.lua:
#   three Redis round trips, the script running HGET, HKEYS, HMGET, HSET and EXPIRE inside
#   Redis; plus the Daraja POST; the OAuth token is cached, fetched once by the warm-up).
# - The gateway has no push rate limit. Its only push cap is payments.pending_queue_max
#   (pushes in flight + queued writes, default 10000; 503 beyond it): raised to 1000000,
#   although CONNECTIONS in flight never reach it. reconcile.after_secs stays 60: a run
#   shorter than that sends no STK Push Query (and at most 30/min after it).
# - RUST_LOG=warn: at info the gateway logs two lines per push ("sending STK push",
#   "payment pending") and the simulator its requests; BENCH_LOG=info measures with them.
# - The simulator keeps its default 2 workers; the gateway 1 worker per core (default).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=$ROOT/target/release
SECS=${1:-15}
CONNS=${2:-64}
for b in stk-relay-gateway stk-relay-callback-ingest daraja-sim; do
  [ -x "$BIN/$b" ] || { echo "build first: cargo build --release --workspace --bins ($b missing)" >&2; exit 1; }
done
command -v wrk > /dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
command -v redis-server > /dev/null || { echo "redis-server missing" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2> /dev/null || true; done
  if [ -n "${KEEP_LOGS:-}" ]; then echo "logs in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null && return 0; sleep 0.1; done; return 1; }
# utime + stime of a process, in clock ticks (fields 14 and 15; comm may hold spaces).
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
# Busy and total ticks of the whole machine (/proc/stat "cpu": idle and iowait are idle).
machine() { awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print t-$5-$6, t}' /proc/stat; }

LOG=${BENCH_LOG:-warn}
API_KEY=bench-api-key-0123456789
CB=bench-callback-secret-0123456789abcdef01
SUB=bench-subscribe-secret-0123456789abcd01
PASSKEY=bench-passkey-0123456789abcdef
SHORTCODE=174379
rp=$(free_port); ip=$(free_port); gp=$(free_port); dp=$(free_port)

redis-server --port "$rp" --bind 127.0.0.1 --save '' --appendonly no > "$WORK/redis.log" 2>&1 &
r=$!; PIDS+=("$r")
wait_port "$rp" || { echo "redis did not start" >&2; cat "$WORK/redis.log" >&2; exit 1; }

env RUST_LOG="$LOG" DARAJA_SIM_BIND=127.0.0.1:$dp \
  DARAJA_SIM_CONSUMER_KEY=bench-key DARAJA_SIM_CONSUMER_SECRET=bench-secret \
  DARAJA_SIM_PASSKEY=$PASSKEY DARAJA_SIM_SHORTCODE=$SHORTCODE \
  DARAJA_SIM_RESPONSE_DELAY_MS=0 \
  "$BIN/daraja-sim" > "$WORK/sim.out" 2> "$WORK/sim.log" &
d=$!; PIDS+=("$d")

env RUST_LOG="$LOG" INGEST__SERVER__HOST=127.0.0.1 INGEST__SERVER__PORT=$ip \
  INGEST__REDIS__URL=redis://127.0.0.1:$rp INGEST__TOKENS__CALLBACK_SECRET=$CB \
  "$BIN/stk-relay-callback-ingest" > "$WORK/ingest.log" 2>&1 &
i=$!; PIDS+=("$i")

env RUST_LOG="$LOG" GATEWAY__SERVER__HOST=127.0.0.1 GATEWAY__SERVER__PORT=$gp \
  GATEWAY__REDIS__URL=redis://127.0.0.1:$rp GATEWAY__API__KEYS=$API_KEY \
  GATEWAY__TOKENS__SUBSCRIBE_SECRET=$SUB GATEWAY__TOKENS__CALLBACK_SECRET=$CB \
  GATEWAY__CALLBACKS__PUBLIC_BASE_URL=http://127.0.0.1:$ip \
  GATEWAY__DARAJA__BASE_URL=http://127.0.0.1:$dp GATEWAY__DARAJA__CONSUMER_KEY=bench-key \
  GATEWAY__DARAJA__CONSUMER_SECRET=bench-secret GATEWAY__DARAJA__PASSKEY=$PASSKEY \
  GATEWAY__DARAJA__SHORTCODE=$SHORTCODE \
  GATEWAY__PAYMENTS__PENDING_QUEUE_MAX=1000000 \
  "$BIN/stk-relay-gateway" > "$WORK/gateway.log" 2>&1 &
g=$!; PIDS+=("$g")

wait_port "$dp" || { echo "daraja-sim did not start" >&2; cat "$WORK/sim.log" >&2; exit 1; }
wait_port "$ip" || { echo "ingest did not start" >&2; cat "$WORK/ingest.log" >&2; exit 1; }
for _ in $(seq 300); do wait_port "$gp" && break; done
wait_port "$gp" || { echo "gateway did not start" >&2; cat "$WORK/gateway.log" >&2; exit 1; }

# Warm-up: one push end to end (fetches the OAuth token); it must answer 200 PENDING.
code=$(curl -s -o "$WORK/warm.json" -w '%{http_code}' -X POST "http://127.0.0.1:$gp/v1/stk/push" \
  -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' \
  -d '{"phone":"254700000333","amount":1,"account_reference":"bench"}')
if [ "$code" != 200 ] || ! grep -q '"PENDING"' "$WORK/warm.json"; then
  echo "warm-up push failed: HTTP $code $(cat "$WORK/warm.json")" >&2
  tail -20 "$WORK/gateway.log" >&2
  exit 1
fi

cat > "$WORK/push.lua" << EOF
-- Each wrk thread cycles its own range of phones 2547NNNNN333 and reports in done().
local threads = {}
local nthreads = 0
function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
  table.insert(threads, thread)
end
function init(args)
  n = tid * 50000
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer $API_KEY"
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  n = (n + 1) % 100000
  local body = string.format('{"phone":"2547%05d333","amount":1,"account_reference":"bench"}', n)
  return wrk.format(nil, "/v1/stk/push", nil, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"non_2xx":%d,"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
EOF

tck=$(getconf CLK_TCK)
# Calls per Redis command: "name calls" lines.
rcmds() { redis-cli -p "$rp" INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),.*/\1 \2/p'; }
rcmds > "$WORK/cmds0"
g0=$(ticks "$g"); d0=$(ticks "$d"); r0=$(ticks "$r"); i0=$(ticks "$i"); read -r mb0 mt0 < <(machine)
# wrk runs under python so that its own CPU time (rusage of the child) is known.
python3 - "$WORK/wrk.cpu" wrk --latency -t2 -c"$CONNS" -d"${SECS}s" --timeout 10s \
  -s "$WORK/push.lua" "http://127.0.0.1:$gp" > "$WORK/wrk.out" << 'PY'
import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
u = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{u.ru_utime + u.ru_stime:.2f}\n")
sys.exit(rc)
PY
g1=$(ticks "$g"); d1=$(ticks "$d"); r1=$(ticks "$r"); i1=$(ticks "$i"); read -r mb1 mt1 < <(machine)
rcmds > "$WORK/cmds1"
sleep 0.5 # responses cut off by wrk's end may still be writing their records
# Every accepted push scheduled its reconciliation: the ZSET holds the recorded pushes
# (minus the warm-up one).
recorded=$(($(redis-cli -p "$rp" ZCARD 'stk:reconcile:{q}:due') - 1))

python3 - "$WORK/wrk.out" "$(cat "$WORK/wrk.cpu")" "$tck" "$SECS" "$CONNS" "$(nproc)" \
  "$((g1 - g0))" "$((d1 - d0))" "$((r1 - r0))" "$((i1 - i0))" "$((mb1 - mb0))" "$((mt1 - mt0))" "$recorded" "$WORK/cmds0" "$WORK/cmds1" << 'PY'
import json, sys
out, wrk_cpu, tck, secs, conns, ncpu, g, d, r, i, mb, mt, recorded, c0, c1 = sys.argv[1:]
def calls(path):
    return {k: int(v) for k, v in (l.split() for l in open(path))}
c0, c1 = calls(c0), calls(c1)
tck = int(tck)
line = next(l for l in open(out) if l.startswith("WRKJSON "))
w = json.loads(line[len("WRKJSON "):])
wall = w["duration_us"] / 1e6
cpu = {
    "gateway": int(g) / tck,
    "daraja_sim": int(d) / tck,
    "redis": int(r) / tck,
    "wrk": float(wrk_cpu),
    "ingest": int(i) / tck,
}
print(json.dumps({
    "scenario": "push",
    "seconds": int(secs),
    "connections": int(conns),
    "requests": w["requests"],
    "requests_per_s": round(w["requests"] / wall, 1),
    "p50_ms": round(w["p50_us"] / 1000, 2),
    "p90_ms": round(w["p90_us"] / 1000, 2),
    "p99_ms": round(w["p99_us"] / 1000, 2),
    "max_ms": round(w["max_us"] / 1000, 2),
    "non_2xx": w["non_2xx"],
    "recorded_pushes": int(recorded),
    # Redis commands per push during the run, by name. The commands a script runs
    # (payment.lua under EVALSHA) are counted too: the gateway's round trips are the
    # top-level ones (ping, zadd, evalsha).
    "redis_calls_per_push": {
        k: round((c1[k] - c0.get(k, 0)) / max(w["requests"], 1), 2)
        for k in sorted(c1) if (c1[k] - c0.get(k, 0)) / max(w["requests"], 1) >= 0.01
    },
    "socket_errors": w["socket_errors"],
    "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
    # CPU seconds per wall second: 1.0 is one whole core.
    "cpu_cores": {k: round(v / wall, 2) for k, v in cpu.items()},
    "machine": {"cores": int(ncpu), "busy_cores": round(int(mb) / max(int(mt), 1) * int(ncpu), 2)},
    "gateway_cpu_us_per_push": round(cpu["gateway"] / max(w["requests"], 1) * 1e6, 1),
}))
PY

non2xx=$(sed -n 's/^WRKJSON .*"non_2xx":\([0-9]*\).*/\1/p' "$WORK/wrk.out")
reqs=$(sed -n 's/^WRKJSON {"requests":\([0-9]*\).*/\1/p' "$WORK/wrk.out")
if [ "${non2xx:-1}" != 0 ] || [ "${reqs:-0}" = 0 ] || [ "$recorded" -lt "$reqs" ]; then
  echo "FAIL: $non2xx responses were not 2xx (of $reqs), $recorded pushes recorded; wrk said:" >&2
  cat "$WORK/wrk.out" >&2
  echo "--- gateway log (last 20 lines)" >&2
  tail -20 "$WORK/gateway.log" >&2
  exit 1
fi
