#!/usr/bin/env bash
# Runs stk-relay locally in the foreground: its own redis-server, the Daraja simulator,
# one callback-ingest node and one gateway node, with development secrets. Ctrl-C stops
# everything. Ports can be changed with the variables below.
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_PORT="${REDIS_PORT:-6390}"
SIM_PORT="${SIM_PORT:-9000}"
INGEST_PORT="${INGEST_PORT:-8081}"
GATEWAY_PORT="${GATEWAY_PORT:-8080}"
# Fresh secrets for every run: the example values of deploy/ are refused at start.
rand_secret() { head -c 36 /dev/urandom | base64 | tr -d '/+=\n'; }
API_KEY="${API_KEY:-dev-$(rand_secret)}"
CALLBACK_SECRET="$(rand_secret)"
SUBSCRIBE_SECRET="$(rand_secret)"

command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)"; exit 1; }
cargo build --release -p stk-relay-gateway -p stk-relay-callback-ingest -p stk-relay-daraja-sim

workdir="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$workdir"
}
trap cleanup EXIT INT TERM

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$workdir" >"$workdir/redis.log" 2>&1 &
pids+=($!)
target/release/daraja-sim --bind "127.0.0.1:$SIM_PORT" &
pids+=($!)

export INGEST__SERVER__HOST=127.0.0.1 INGEST__SERVER__PORT="$INGEST_PORT"
export INGEST__REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
export INGEST__TOKENS__CALLBACK_SECRET="$CALLBACK_SECRET"
target/release/stk-relay-callback-ingest &
pids+=($!)

export GATEWAY__SERVER__HOST=127.0.0.1 GATEWAY__SERVER__PORT="$GATEWAY_PORT"
export GATEWAY__REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
export GATEWAY__API__KEYS="$API_KEY"
export GATEWAY__TOKENS__SUBSCRIBE_SECRET="$SUBSCRIBE_SECRET"
export GATEWAY__TOKENS__CALLBACK_SECRET="$INGEST__TOKENS__CALLBACK_SECRET"
export GATEWAY__CALLBACKS__PUBLIC_BASE_URL="http://127.0.0.1:$INGEST_PORT"
export GATEWAY__DARAJA__BASE_URL="http://127.0.0.1:$SIM_PORT"
export GATEWAY__DARAJA__CONSUMER_KEY="sim-consumer-key"
export GATEWAY__DARAJA__CONSUMER_SECRET="sim-consumer-secret"
export GATEWAY__DARAJA__PASSKEY="bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919"
export GATEWAY__DARAJA__SHORTCODE="174379"
target/release/stk-relay-gateway &
pids+=($!)

cat <<MSG

stk-relay is starting: gateway http://127.0.0.1:$GATEWAY_PORT, ingest http://127.0.0.1:$INGEST_PORT,
Daraja simulator http://127.0.0.1:$SIM_PORT, redis 127.0.0.1:$REDIS_PORT.

Try a payment (the simulator answers success after a short delay):
  curl -s -X POST http://127.0.0.1:$GATEWAY_PORT/v1/stk/push \\
    -H 'Authorization: Bearer $API_KEY' -H 'Content-Type: application/json' \\
    -d '{"phone":"0712345001","amount":10,"account_reference":"ORDER1"}'
then open the WebSocket it names:
  ws://127.0.0.1:$GATEWAY_PORT/v1/payments/<checkout_request_id>/ws?token=<token>

MSG
wait -n
