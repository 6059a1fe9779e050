#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine (headless Chromium and
# chromedriver for the status-page test; iproute2 and libfaketime for the chaos test, which
# runs nodes in network namespaces and skews a node's clock), from the system's packages,
# then runs `cargo test --workspace`. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")"
missing=()
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  missing+=(chromium chromium-driver)
fi
# The chaos test needs root (it says so and skips otherwise), so only root needs its tools.
if [ "$(id -u)" = 0 ]; then
  command -v ip >/dev/null || missing+=(iproute2)
  compgen -G '/usr/lib/*/faketime/libfaketimeMT.so.1' >/dev/null || missing+=(libfaketime)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing ${missing[*]} for the page and chaos tests" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  else
    echo "test.sh: ${missing[*]} missing and cannot be installed here (need root and apt-get)" >&2
    exit 1
  fi
fi
export STATUSMESH_REQUIRE_BROWSER=1
exec cargo test --workspace "$@"
