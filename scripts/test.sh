#!/usr/bin/env bash
# The test command (README): installs what a fresh Debian machine lacks, then runs every
# test of the project. The tests start their own redis-server processes on free ports; the
# machine's own Redis, if any, is neither needed nor touched.
#
#   scripts/test.sh            # everything
#   scripts/test.sh -p stk-relay-e2e --test trust    # arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ -d clients/js/test ]; then
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
fi
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
  # Install without starting Debian's own redis service: the machine may already run a
  # Redis on 6379, and the tests need none.
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

cargo test --workspace --locked "$@"

if [ "$#" -eq 0 ] && [ -d clients/js/test ]; then
  echo "== browser client (node --test)"
  node --test clients/js/test/
fi
