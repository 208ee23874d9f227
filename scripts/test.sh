#!/usr/bin/env bash
# The test command (README): installs what a fresh Debian machine lacks (redis-server,
# redis-cli, nginx, openssl, promtool, Node.js and npm, Debian's chromium, the browser tests' npm
# packages), then runs every test of the project. The tests start their own redis-server processes on free ports; the
# machine's own Redis, if any, is neither needed nor touched. Browser tests drive
# /usr/bin/chromium (override with CHROMIUM=<path>) through playwright-core.
#
#   scripts/test.sh            # everything
#   scripts/test.sh -p stk-relay-e2e --test trust    # arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# The Redis Cluster tests form and reshard their cluster with redis-cli --cluster.
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
# nginx lives in /usr/sbin, which is not on every user's PATH; the tests run /usr/sbin/nginx
# (or STK_E2E_NGINX) themselves, as an unprivileged-friendly process on free ports.
if [ -z "${STK_E2E_NGINX:-}" ] && [ ! -x /usr/sbin/nginx ] && ! command -v nginx >/dev/null 2>&1; then
  missing+=(nginx)
fi
# The TLS topology test makes its certificates with the openssl CLI; the Sentinel tests
# run `redis-server --sentinel`, so no redis-sentinel package is needed.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# promtool (Debian's prometheus package) checks the alert rules and runs their unit tests.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then missing+=(chromium); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "missing ${missing[*]}; run as root or install them (apt-get install ${missing[*]})" >&2
      exit 1
    }
    sudo="sudo"
  fi
  # Install without starting Debian's own services (policy-rc.d answers "denied" for every
  # service, so neither redis nor nginx is started): the machine may already run a Redis
  # on 6379 or a web server on 80, and the tests need none.
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    policy_added=1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if [ "$policy_added" = 1 ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
fi

# The browser tests' one dependency (playwright-core, pinned in package-lock.json). It
# never downloads a browser of its own: the tests use Debian's chromium.
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "== npm ci (tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

cargo test --workspace --locked --no-fail-fast "$@"

if [ "$#" -eq 0 ]; then
  # The micro-benchmarks (shared/benches/), each run once and untimed (criterion's test
  # mode): they build, and their steps still give the replies they measure. `--workspace`
  # keeps the features of the build above, so nothing but the bench is compiled again (with
  # `-p stk-relay-shared` actix-web loses `ws` and shared is rebuilt); `--bench` runs only
  # the bench, where `--benches` would run shared's unit tests a second time.
  echo "== micro-benchmarks, test mode"
  cargo test --workspace --bench hot_path --locked
fi

if [ "$#" -eq 0 ] && [ -d clients/js/test ]; then
  echo "== browser client (node --test)"
  node --test clients/js/test/
fi

if [ "$#" -eq 0 ]; then
  echo "== alert rules (promtool)"
  promtool check rules deploy/prometheus/alerts.yaml
  promtool test rules deploy/prometheus/alerts_test.yaml
fi
