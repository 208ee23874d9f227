#!/usr/bin/env bash
# Where the CPU goes in one of the rig's scenarios against stk-relay (issue 9, "find the
# cost before you cut it"). Runs ../shared/peers/run.sh for stk-relay alone with one
# scenario, waits until the callbacks start (Redis's EVALSHA count rises), then:
#   - over the first half of the window, the CPU time of every process (utime + stime
#     from /proc/<pid>/stat, before and after): the load generator, both ingests, both
#     gateways and Redis, and how many EVALSHAs (callbacks) Redis ran meanwhile;
#   - over the second half, `perf record` (DWARF call graphs) of the four stk-relay
#     processes, folded with inferno into one flame graph per kind of process, and the
#     top self-time symbols.
# Usage (release binaries built, the rig's loadgen built, perf and inferno installed):
#
#   SCENARIO=b bash scripts/bench/profile.sh         # 10k sockets, 1,000 callbacks/s
#   SCENARIO=d SAT_RATES=8000 bash scripts/bench/profile.sh   # one saturation step
#
# Output: target/bench/profile-<scenario>-<time>/{cpu.json, gateway.svg, ingest.svg,
# gateway.top.txt, ingest.top.txt, rig.log}. WINDOW (seconds, default 8; d's steps are
# shorter: 16,000 / rate seconds) bounds the recording. Needs: perf (linux-perf),
# inferno-collapse-perf and inferno-flamegraph (cargo install inferno), redis-cli.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers}
SCENARIO=${SCENARIO:-b}
WINDOW=${WINDOW:-8}
if [ "$SCENARIO" = d ]; then
  rate=${SAT_RATES:-8000}; rate=${rate%% *}
  w=$(( 16000 / rate )); [ "$w" -lt 1 ] && w=1; [ "$w" -lt "$WINDOW" ] && WINDOW=$(echo "$w * 0.8" | bc -l)
fi
OUT=$ROOT/target/bench/profile-$SCENARIO-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
for t in perf inferno-collapse-perf inferno-flamegraph redis-cli; do
  command -v "$t" >/dev/null || { echo "profile.sh: $t is missing" >&2; exit 1; }
done

RESULTS=$OUT/rig.jsonl STK_RELAY_DIR=$ROOT REPS=1 SCENARIOS=$SCENARIO \
  bash "$PEERS_DIR/run.sh" stk-relay > "$OUT/rig.log" 2>&1 &
RIG=$!
trap 'kill $RIG 2>/dev/null || true' EXIT

evalsha() {
  redis-cli -p 6393 info commandstats 2>/dev/null | tr -d '\r' |
    sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p' | head -1 || true
}
sched_wait() { # ns the threads of a pid spent runnable but waiting for a CPU; and how
  # many times they were switched out (schedstat: run ns, wait ns, timeslices)
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ w += $2; n += $3 } END { print w + 0, n + 0 }'
}
cpu_ticks() { # utime + stime of a pid, in clock ticks
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# Wait (bounded) for the rig to have started every process.
deadline=$((SECONDS + 120))
until [ "$(ps -eo comm= | grep -c '^stk-relay-')" -ge 4 ] && ps -eo comm= | grep -qx loadgen; do
  [ $SECONDS -lt $deadline ] || { echo "profile.sh: the rig did not start; see $OUT/rig.log" >&2; exit 1; }
  sleep 0.2
done
declare -A PIDS
# By process name (comm, 15 characters), so that wrappers such as `timeout` are not taken.
by_comm() { ps -eo pid=,comm=,args= | awk -v c="$1" -v a="$2" '$2 == c && index($0, a) { print $1 }'; }
PIDS[loadgen]=$(by_comm loadgen "" | head -1)
PIDS[redis]=$(by_comm redis-server ":6393" | head -1)
i=0; for p in $(by_comm stk-relay-callb "$ROOT/target/release/"); do PIDS[ingest$i]=$p; i=$((i+1)); done
i=0; for p in $(by_comm stk-relay-gatew "$ROOT/target/release/"); do PIDS[gateway$i]=$p; i=$((i+1)); done
echo "processes: $(for k in "${!PIDS[@]}"; do echo -n "$k=${PIDS[$k]} "; done)" >&2
servers=$(for k in ingest0 ingest1 gateway0 gateway1; do echo -n "${PIDS[$k]:-},"; done); servers=${servers%,}

# The callbacks have started when the ingests work (their CPU time rises by 50 ms
# within half a second; before that, pushes and connects keep only the gateways busy).
ingest_ticks() { local t=0 k; for k in ingest0 ingest1; do t=$((t + $(cpu_ticks "${PIDS[$k]:-0}"))); done; echo $t; }
deadline=$((SECONDS + 180)); prev=$(ingest_ticks)
while :; do
  [ $SECONDS -lt $deadline ] || { echo "profile.sh: the callbacks never started" >&2; exit 1; }
  kill -0 $RIG 2>/dev/null || { echo "profile.sh: the rig ended first; see $OUT/rig.log" >&2; exit 1; }
  sleep 0.5
  cur=$(ingest_ticks)
  [ $((cur - prev)) -ge $(( $(getconf CLK_TCK) / 20 )) ] && break
  prev=$cur
done

# First half of the window: CPU time only (perf's own sampling would inflate it).
half=$(echo "$WINDOW / 2" | bc -l)
declare -A T0 W0
for k in "${!PIDS[@]}"; do T0[$k]=$(cpu_ticks "${PIDS[$k]}"); W0[$k]=$(sched_wait "${PIDS[$k]}"); done
e0=$(evalsha); t0=$(date +%s.%N)
sleep "$half"
e1=$(evalsha); t1=$(date +%s.%N)
declare -A T1 W1
for k in "${!PIDS[@]}"; do T1[$k]=$(cpu_ticks "${PIDS[$k]}"); W1[$k]=$(sched_wait "${PIDS[$k]}"); done
# Second half: the profile.
perf record -q -F 499 --call-graph dwarf,16384 -p "$servers" -o "$OUT/perf.data" -- sleep "$half" 2>"$OUT/perf.err" || true
HZ=$(getconf CLK_TCK)
{
  echo -n "{\"scenario\":\"$SCENARIO\",\"window_s\":$(echo "$t1 - $t0" | bc),\"evalsha\":$((e1 - e0)),\"cpu_ms\":{"
  sep=""
  for k in $(echo "${!PIDS[@]}" | tr ' ' '\n' | sort); do
    echo -n "$sep\"$k\":$(( (T1[$k] - T0[$k]) * 1000 / HZ ))"; sep=","
  done
  echo -n "},\"runqueue_wait_ms\":{"; sep=""
  for k in $(echo "${!PIDS[@]}" | tr ' ' '\n' | sort); do
    read -r w0 n0 <<< "${W0[$k]}"; read -r w1 n1 <<< "${W1[$k]}"
    echo -n "$sep\"$k\":$(( (w1 - w0) / 1000000 ))"; sep=","
  done
  echo -n "},\"timeslices\":{"; sep=""
  for k in $(echo "${!PIDS[@]}" | tr ' ' '\n' | sort); do
    read -r w0 n0 <<< "${W0[$k]}"; read -r w1 n1 <<< "${W1[$k]}"
    echo -n "$sep\"$k\":$(( n1 - n0 ))"; sep=","
  done
  echo "}}"
} > "$OUT/cpu.json"
cat "$OUT/cpu.json"

wait $RIG || true
trap - EXIT

for kind in gateway ingest; do
  pids=""
  for k in "${!PIDS[@]}"; do if [[ $k == $kind* ]]; then pids+="${PIDS[$k]},"; fi; done
  pids=${pids%,}
  perf script -i "$OUT/perf.data" --pid "$pids" 2>/dev/null | inferno-collapse-perf > "$OUT/$kind.folded" || true
  inferno-flamegraph --title "stk-relay $kind, scenario $SCENARIO" < "$OUT/$kind.folded" > "$OUT/$kind.svg" || true
  perf report -i "$OUT/perf.data" --pid "$pids" --no-children -g none --percent-limit 0.7 --sort dso,symbol --stdio 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -40 > "$OUT/$kind.top.txt" || true
done
grep -h '"scenario"' "$OUT/rig.jsonl" | tail -1 || true
echo "profile: $OUT"
