#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine (headless Chromium and
# chromedriver for the status-page test, from the system's packages), then runs
# `cargo test --workspace`. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing chromium and chromium-driver for the page test" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null
  else
    echo "test.sh: chromium and chromedriver are missing and cannot be installed here (need root and apt-get)" >&2
    exit 1
  fi
fi
export STATUSMESH_REQUIRE_BROWSER=1
exec cargo test --workspace "$@"
