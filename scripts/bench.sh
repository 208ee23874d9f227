#!/usr/bin/env bash
# The benchmark command (README). Builds the release binaries and the neutral rig's load
# generator, then, in one sitting on this machine:
#   - the rig's scenarios (../shared/peers/run.sh: a, b, c, d) against stk-relay and each
#     peer named (default: socketio-redis, and sockudo when it is installed), side by side;
#   - scenario c on ONE gateway at 5,000 and 15,000 idle sockets, and scenario e (the
#     gateway's Redis connections with 0 and with N clients): scripts/bench/idle_rss.sh;
#   - the push scenario when scripts/bench/push.sh exists.
# Results go to target/bench/<run>/ (raw JSON lines and the rig's logs), and the section
# between the bench markers in BENCHMARKS.md is replaced by this run's tables, with the
# machine (nproc, CPU model, kernel) and the commit.
#
#   bash scripts/bench.sh                       # stk-relay + socketio-redis (+ sockudo)
#   REPS=1 SCENARIOS="b c" bash scripts/bench.sh socketio-redis
#
# REPS (default 3) and SCENARIOS (default "c a b d") go to the rig. The figures on a
# 2-core machine move by about 30 % from run to run: compare within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers}
RUN=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/target/bench/$RUN
mkdir -p "$OUT"

peers=("$@")
if [ ${#peers[@]} -eq 0 ]; then
  peers=(socketio-redis)
  if [ -x "$PEERS_DIR/sockudo/.bin/bin/sockudo" ] || [ -x "${PEERS_WORK:-$HOME/.cache/stk-relay-peers}/sockudo/.bin/bin/sockudo" ]; then
    peers+=(sockudo)
  fi
fi

echo "== building (release, whole workspace; the rig's loadgen)"
cargo build --release --workspace --bins --locked
(cd "$PEERS_DIR/loadgen" && cargo build --release) || {
  echo "cannot build the rig's loadgen in $PEERS_DIR/loadgen" >&2; exit 1; }

echo "== the rig: stk-relay ${peers[*]}"
RESULTS=$OUT/rig.jsonl STK_RELAY_DIR=$ROOT REPS=${REPS:-3} SCENARIOS=${SCENARIOS:-c a b d} \
  bash "$PEERS_DIR/run.sh" stk-relay "${peers[@]}" | tee "$OUT/rig.log"

echo "== idle memory and Redis connections on one gateway (scenarios c, e)"
LOADGEN=$PEERS_DIR/loadgen/target/release/loadgen \
  bash scripts/bench/idle_rss.sh 0 5000 15000 | tee "$OUT/idle.jsonl"

if ! command -v wrk >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing wrk (push scenario)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
if [ -x scripts/bench/push.sh ]; then
  echo "== push"
  bash scripts/bench/push.sh | tee "$OUT/push.jsonl"
fi

echo "== writing BENCHMARKS.md"
python3 "$PEERS_DIR/summarize.py" "$OUT/rig.jsonl" > "$OUT/rig.md" || true
python3 - "$OUT" "$RUN" <<'PY'
import json, os, platform, subprocess, sys
out, run = sys.argv[1:3]
def sh(*a):
    try:
        return subprocess.run(a, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "?"
cpu = "?"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
lines = [
    "<!-- bench:start -->",
    f"## Latest run: `scripts/bench.sh`, {run}",
    "",
    f"Machine: {sh('nproc')} CPUs ({cpu}), kernel {platform.release()}; commit "
    f"`{sh('git', 'rev-parse', '--short', 'HEAD')}`. Everything on one host over loopback.",
    "",
    "### The neutral rig, side by side",
    "",
    open(os.path.join(out, "rig.md")).read().strip() if os.path.exists(os.path.join(out, "rig.md")) else "(no rig summary)",
    "",
    "### One gateway: idle memory per socket (c) and Redis connections (e)",
    "",
    "| clients | connected | RSS before | RSS with clients | KiB per socket | Redis connections (0 clients → N) |",
    "|---|---|---|---|---|---|",
]
for l in open(os.path.join(out, "idle.jsonl")):
    l = l.strip()
    if not l.startswith("{"):
        continue
    d = json.loads(l)
    lines.append(f"| {d['clients']} | {d['connected']} | {d['rss_before_kb']} KiB | {d['rss_with_kb']} KiB | "
                 f"{d['kib_per_socket'] if d['connected'] else '-'} | {d['redis_conns_before']} → {d['redis_conns_with']} |")
push = os.path.join(out, "push.jsonl")
if os.path.exists(push):
    lines += ["", "### Push (`POST /v1/stk/push`, a Daraja that answers at once)", "", "```"]
    lines += [l.strip() for l in open(push) if l.strip().startswith("{")]
    lines += ["```"]
lines += ["", f"Raw results: `target/bench/{run}/`.", "<!-- bench:end -->"]
section = "\n".join(lines) + "\n"
path = "BENCHMARKS.md"
text = open(path).read()
a, b = text.find("<!-- bench:start -->"), text.find("<!-- bench:end -->")
if a >= 0 and b > a:
    text = text[:a] + section + text[b + len("<!-- bench:end -->\n"):]
else:
    marker = "\n## "
    i = text.find(marker)
    text = (text[:i] + "\n" + section + text[i:]) if i >= 0 else text + "\n" + section
open(path, "w").write(text)
print(section)
PY
